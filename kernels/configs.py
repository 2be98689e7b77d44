"""Block, warp and stage choices for every kernel: the one place to change them.

On a GPU the forward and key-mass kernels are autotuned over the candidate lists below,
pruned by ``prune_*`` for the head dim and sequence lengths at hand; the tuning key is
the head dims, the input dtype and the kernel's flags, never the sequence lengths, so a
new resolution neither recompiles nor re-tunes. With autotuning off (``autotune=False``
here, ``sinkattn.settings``' field of the same name, SINKATTN_AUTOTUNE=0) the first
surviving candidate runs untuned. Under the Triton interpreter one small config is used.
Benchmarks log the chosen configs (``chosen_configs``).

Nothing here reads the environment or picks a table at import: the launchers
(``sinkattn.launch``) pass the settings of each call in.
"""

import functools

import triton

from .attention import attention_forward_kernel
from .key_mass import key_mass_kernel


def _cfg(bm, bn, warps, stages, **flags):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, **flags}, num_warps=warps, num_stages=stages)


# Ordered by what the H200 measured (kernels/NOTES.md): with SINKATTN_AUTOTUNE=0 the first
# config that survives pruning runs.
FORWARD_CONFIGS = [
    _cfg(128, 64, 8, 4), _cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3),
    _cfg(128, 64, 4, 3), _cfg(128, 32, 4, 4), _cfg(128, 128, 8, 2), _cfg(64, 128, 4, 3),
    _cfg(32, 32, 4, 2),  # the last resort of float32 at head dim 256
]
# PAIRED: two query tiles per iteration (kernels/key_mass.py); best at head dim 64 (SD3),
# the one-tile loop at 128 (Flux) and for SDXL (probe4, in git: benchmarks/probes/README.md).
KEY_MASS_CONFIGS = [
    _cfg(32, 64, 4, 3, PAIRED=True), _cfg(128, 64, 4, 3, PAIRED=False), _cfg(32, 128, 4, 3, PAIRED=False),
    _cfg(32, 128, 4, 4, PAIRED=True), _cfg(32, 128, 4, 4, PAIRED=False), _cfg(64, 128, 4, 3, PAIRED=False),
    _cfg(64, 64, 4, 3, PAIRED=False), _cfg(64, 128, 8, 3, PAIRED=False),
]
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}
# The flagged-tile pass (the correction route's fallback, kernels/attention.py) computes only
# the query tiles that hold a flagged row, usually a handful, in tiles of the correction
# kernel's rows (correction_block_m; its tile slots index those tiles). H200, SD3 shape
# (probe8, in git: benchmarks/probes/README.md; before the key split): BM 64 at 16 programs per SM was the
# best or near it whether 2 rows, 1% or 10% of the rows, or one whole head were flagged;
# BM 16 won only for a couple of rows (67 against 78 us, both a lone program's walk over all
# keys) and lost 3x when many were. With at most settings.flagged_max_split_tiles (64) tiles
# flagged in all, each one's keys are cut into up to settings.flagged_key_splits (16) ranges
# computed by separate programs. (BLOCK_N, num_warps, num_stages), the first that fits runs:
FLAGGED_TILES = [(64, 4, 3), (64, 4, 2), (32, 4, 2)]


def correction_block_m(interpret: bool) -> int:
    """Query rows per program of the correction kernel, whose tiles the flagged pass reuses."""
    return 32 if interpret else 64


def _query_rows(config):
    """Query rows a config holds per iteration (two tiles when PAIRED)."""
    return config.kwargs["BLOCK_M"] * (2 if config.kwargs.get("PAIRED") else 1)


def _keep(configs, fits):
    kept = [c for c in configs if fits(_query_rows(c), c.kwargs["BLOCK_N"], c.num_stages)]
    # Nothing fits: the config with the smallest tiles.
    return kept or [min(configs, key=lambda c: _query_rows(c) * c.kwargs["BLOCK_N"] * c.num_stages)]


@functools.lru_cache(maxsize=None)
def _shared_memory(device_index: int) -> int:
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def shared_memory_of(tensor) -> int:
    return _shared_memory(tensor.device.index or 0)


def _forward_fits(n_q, n_k, dim, dim_v, size, limit):
    def fits(bm, bn, stages):
        smem = (stages * bn * (dim + dim_v) + bm * (dim + bn)) * size
        return (bm <= max(64, triton.next_power_of_2(n_q)) and bn <= max(32, triton.next_power_of_2(n_k))
                and (dim < 256 or bm * bn <= 64 * 64) and smem <= limit)
    return fits


def prune_forward(configs, named_args, **kwargs):
    """Drop tiles far larger than the sequence, 128 x 128 tiles for head dims >= 256 (the
    accumulator and K/V tiles then spill registers), and configs that would not fit in
    shared memory (float32 at D 128). The estimate, `stages` K/V tiles plus a Q and a P
    tile, is above what Triton 3.6 allocates (BM 128, BN 64, 4 stages, float32, D 128/64:
    estimate 288 KiB, allocated 240 KiB, H200 limit 227 KiB)."""
    dim, dim_v = (kwargs.get(n, named_args.get(n)) for n in ("BLOCK_D", "BLOCK_DV"))
    q = named_args["Q"]
    return _keep(configs, _forward_fits(named_args["N_Q"], named_args["N_K"], dim, dim_v,
                                        q.element_size(), shared_memory_of(q)))


@functools.lru_cache(maxsize=None)
def _flagged_config(q_bucket, k_bucket, dim, dim_v, size, limit, block_m):
    candidates = [_cfg(block_m, bn, warps, stages) for bn, warps, stages in FLAGGED_TILES]
    config = _keep(candidates, _forward_fits(q_bucket, k_bucket, dim, dim_v, size, limit))[0]
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def flagged_config(n_q: int, n_k: int, block_d: int, block_dv: int, element_size: int, shared_memory: int,
                   interpret: bool) -> dict:
    """The flagged-tile pass runs the first of FLAGGED_TILES that fits, untuned: tuning it
    would time calls that, with no row flagged, do nothing."""
    if interpret:
        return {**INTERPRETER_CONFIG, "BLOCK_M": correction_block_m(True)}
    # Only the powers of two of short lengths matter to the pruning.
    return _flagged_config(min(triton.next_power_of_2(n_q), 256), min(triton.next_power_of_2(n_k), 256),
                           block_d, block_dv, element_size, shared_memory, correction_block_m(False))


def prune_key_mass(configs, named_args, **kwargs):
    """Drop key tiles far larger than the keys, large tiles for head dims >= 256, and configs
    whose Q tiles (one per stage, two when PAIRED) and K tile would not fit in shared memory."""
    n_k = named_args["N_K"]
    dim = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    size, limit = named_args["Q"].element_size(), shared_memory_of(named_args["Q"])

    def fits(bm, bn, stages):
        smem = (stages * bm + bn) * dim * size
        return bn <= max(64, triton.next_power_of_2(n_k)) and (dim < 256 or bm * bn <= 64 * 64) and smem <= limit

    return _keep(configs, fits)


def _first(prune):
    def first(configs, named_args, **kwargs):
        return prune(configs, named_args, **kwargs)[:1]
    return first


INTERPRETER_CONFIGS = {
    "attention_forward": INTERPRETER_CONFIG,
    # The CPU tests run the paired loop by default (tests/test_kernels.py runs both loops).
    "key_mass": {**INTERPRETER_CONFIG, "PAIRED": True},
}
TUNING_KEYS = {
    "attention_forward": ["D", "DV", "BLOCK_D", "BLOCK_DV", "WEIGHT_ON_VALUE", "FOLD_SCALE", "DOT_PRECISION"],
    "key_mass": ["D", "BLOCK_D", "DOT_PRECISION"],
}
_KERNELS = {"attention_forward": (attention_forward_kernel, FORWARD_CONFIGS, prune_forward),
            "key_mass": (key_mass_kernel, KEY_MASS_CONFIGS, prune_key_mass)}
# The key-mass pass counts arrivals (its epilogue runs in the last program of a head): each
# timing run starts from the counts the call's forward zeroed, and leaves them so.
_TUNER_OPTIONS = {"attention_forward": {},
                  "key_mass": {"reset_to_zero": ["COUNTERS"], "restore_value": ["COUNTERS"]}}


_TUNERS: dict = {}


def tuner(name: str, autotune: bool):
    """The autotuner of a tuned kernel ("attention_forward", "key_mass"), built on first use:
    over every candidate that survives pruning, or (``autotune=False``) over the first of them
    only (no timing)."""
    built = _TUNERS.get((name, autotune))
    if built is None:
        kernel, configs, prune = _KERNELS[name]
        built = _TUNERS[(name, autotune)] = triton.autotune(
            configs, key=TUNING_KEYS[name], **_TUNER_OPTIONS[name],
            prune_configs_by={"early_config_prune": prune if autotune else _first(prune)})(kernel)
    return built


def chosen_configs() -> dict:
    """Every config the autotuned kernels picked, by kernel and tuning key."""
    out = {}
    for (name, _), built in _TUNERS.items():
        for key, best in getattr(built, "cache", {}).items():
            out.setdefault(name, {})[str(key)] = {**best.kwargs, "num_warps": best.num_warps,
                                                  "num_stages": best.num_stages}
    return out
