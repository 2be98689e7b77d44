"""Block, warp and stage choices for every kernel: the one place to change them.

On a GPU the forward and key-mass kernels are autotuned over the candidate lists below,
pruned by ``prune_*`` for the head dim and sequence lengths at hand; the tuning key is
the head dims, the input dtype and the kernel's flags, never the sequence lengths, so a
new resolution neither recompiles nor re-tunes. Set SINKATTN_AUTOTUNE=0 to use the first
surviving candidate without tuning. Under TRITON_INTERPRET=1 one small config is used.
Benchmarks log the chosen configs (``chosen_configs``).
"""

import os

import triton

from .attention import attention_forward_kernel
from .correction import correction_kernel
from .key_mass import key_mass_kernel


def interpreting() -> bool:
    """True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _autotune_enabled() -> bool:
    return os.environ.get("SINKATTN_AUTOTUNE", "1") not in ("", "0")


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


FORWARD_CONFIGS = [
    _cfg(128, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 32, 4, 4),
    _cfg(64, 64, 4, 3), _cfg(128, 64, 4, 4), _cfg(128, 128, 8, 2), _cfg(64, 128, 4, 3),
]
KEY_MASS_CONFIGS = [
    _cfg(64, 128, 8, 3), _cfg(64, 128, 4, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3),
    _cfg(128, 64, 4, 3), _cfg(32, 128, 4, 4), _cfg(64, 128, 8, 4),
]
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}
CORRECTION_BLOCK_M = 32 if interpreting() else 64


def _keep(configs, fits):
    kept = [c for c in configs if fits(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"])]
    return kept or configs[:1]


def prune_forward(configs, named_args, **kwargs):
    """Drop tiles far larger than the sequence, and 128 x 128 tiles for head dims >= 256
    (the accumulator and K/V tiles then spill registers)."""
    n_q, n_k, dim = named_args["N_Q"], named_args["N_K"], kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = _keep(configs, lambda bm, bn: bm <= max(64, triton.next_power_of_2(n_q))
                 and bn <= max(32, triton.next_power_of_2(n_k)) and (dim < 256 or bm * bn <= 64 * 64))
    return kept if _autotune_enabled() else kept[:1]


def prune_key_mass(configs, named_args, **kwargs):
    n_k = named_args["N_K"]
    dim = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = _keep(configs, lambda bm, bn: bn <= max(64, triton.next_power_of_2(n_k)) and (dim < 256 or bm * bn <= 64 * 64))
    return kept if _autotune_enabled() else kept[:1]


def _fixed(kernel, config):
    def launch(grid, *args, **kwargs):
        return kernel[grid](*args, **kwargs, **config)
    return launch


def _tuned_launch(tuner):
    def launch(grid, *args, **kwargs):
        return tuner[grid](*args, **kwargs)
    return launch


_TUNING_KEY = ["D", "DV", "BLOCK_D", "BLOCK_DV", "WEIGHT_ON_VALUE", "DOT_PRECISION"]
if interpreting():
    forward = _fixed(attention_forward_kernel, INTERPRETER_CONFIG)
    key_mass = _fixed(key_mass_kernel, INTERPRETER_CONFIG)
    correction = _fixed(correction_kernel, {"BLOCK_M": CORRECTION_BLOCK_M})
    _tuned = {}
else:
    _forward_tuned = triton.autotune(FORWARD_CONFIGS, key=_TUNING_KEY,
                                     prune_configs_by={"early_config_prune": prune_forward})(attention_forward_kernel)
    _key_mass_tuned = triton.autotune(KEY_MASS_CONFIGS, key=["D", "BLOCK_D", "DOT_PRECISION"],
                                      prune_configs_by={"early_config_prune": prune_key_mass})(key_mass_kernel)
    forward = _tuned_launch(_forward_tuned)
    key_mass = _tuned_launch(_key_mass_tuned)
    correction = _fixed(correction_kernel, {"BLOCK_M": CORRECTION_BLOCK_M, "num_warps": 4})
    _tuned = {"attention_forward": _forward_tuned, "key_mass": _key_mass_tuned}


def chosen_configs() -> dict:
    """Every config the autotuned kernels picked, by kernel and tuning key."""
    out = {}
    for name, tuner in _tuned.items():
        for key, best in getattr(tuner, "cache", {}).items():
            out.setdefault(name, {})[str(key)] = {**best.kwargs, "num_warps": best.num_warps,
                                                  "num_stages": best.num_stages}
    return out
