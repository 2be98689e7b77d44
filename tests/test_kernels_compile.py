"""Every kernel variant the launchers use compiles for an H100/H200 (sm_90), on any machine:
the Triton kernels and the Gluon forward for Hopper (kernels/attention_hopper.py).

The interpreter runs the kernels' Python, not Triton's compiler: a construct the compiler
refuses (a Python ``or`` on tensors, a scalar type clash between branches, a constexpr used
as a value) passes every interpreter test and fails at the first GPU call. Compiling for
sm_90 needs no GPU (Triton ships ptxas), so this module runs where the GPU tests cannot.
On a CUDA machine the kernel tests compile the same variants by running them: skipped there.

The compiling runs in a child process: the interpreter tests import the kernels as
interpreted functions (Triton decides at import), and a compile needs them as JIT functions.
"""

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile every variant by running it"),
]

FLOATS = {"qk_scale", "eta", "inv_count", "removal", "max_amplification"}


def _compile(kernel, pointers, constexprs, num_warps=4, num_stages=3):
    """Compile ``kernel`` (a JITFunction, or a heuristics/autotune wrapper around one) for
    sm_90: ``pointers`` name -> element type ("fp32", "bf16", "i32", "i64"), None for an
    absent optional pointer; the other runtime arguments are int32 or float32 scalars."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    signature, constants = {}, {}
    for param in kernel.params:
        name = param.name
        if name in constexprs or param.is_constexpr:
            signature[name] = "constexpr"
            if name in constexprs:
                constants[name] = constexprs[name]
            elif param.default is not inspect.Parameter.empty:
                constants[name] = param.default
        elif name in pointers:
            if pointers[name] is None:
                signature[name] = "constexpr"
                constants[name] = None
            else:
                signature[name] = "*" + pointers[name]
        else:
            signature[name] = "fp32" if name in FLOATS else "i32"
    source = ASTSource(kernel, signature, constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _compile_hopper_forward(counters, out):
    """The Gluon forward (kernels/attention_hopper.py) for sm_90 as launch._hopper_attention
    launches it at head dim 128: TMA descriptors over a diffusers-layout tensor, the
    register caps, with or without counters, ``out`` the output's element type."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from sinkattn import launch
    from sinkattn.kernels import attention_hopper as hopper

    dim = 128
    q = torch.empty(2, 100, 3 * dim, dtype=torch.bfloat16).view(2, 100, 3, dim).transpose(1, 2)
    config = hopper.CONFIGS[dim]
    descs = {"q_desc": launch._tma_descriptor(q, hopper.BLOCK_M),
             "k_desc": launch._tma_descriptor(q, config["BLOCK_N"]),
             "v_desc": launch._tma_descriptor(q, config["BLOCK_N"])}
    constexprs = dict(BLOCK_M=hopper.BLOCK_M, D=dim, PINGPONG=True, HAS_COUNTERS=counters,
                      CONSUMER_REGS=hopper.CONSUMER_REGS, PRODUCER_REGS=hopper.PRODUCER_REGS, **config)
    if not counters:
        constexprs["COUNTERS"] = None
    pointers = {"O": "*" + out, "LSE": "*fp32", "COUNTERS": "*i32", "qk_scale": "fp32"}
    signature = {param.name: "constexpr" if param.name in constexprs else mangle_type(descs[param.name])
                 if param.name in descs else pointers.get(param.name, "i32")
                 for param in hopper.hopper_attention_kernel.params}
    compiled = triton.compile(GluonASTSource(hopper.hopper_attention_kernel, signature, constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": hopper.MAXNREG})
    # two consumer warpgroups and the producer's (one warp, padded to a warpgroup)
    assert compiled.metadata.num_warps == 12, compiled.metadata.num_warps
    return compiled


# The Gluon forward's variants: (counters, output element type): the plain call's and the
# correction route's (float32 output, counters zeroed).
HOPPER_VARIANTS = {"hopper-forward-bf16": (False, "bf16"), "hopper-forward-counters-fp32": (True, "fp32")}


def _dims(d=64, dv=64):
    return dict(D=d, DV=dv, BLOCK_D=d, BLOCK_DV=dv)


def _forward_variants():
    base = dict(Q="bf16", K="bf16", V="bf16", O="fp32", LSE="fp32", SINKS=None, ROW_PEAK=None, COUNTERS=None)
    flags = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_T=16, WEIGHT_ON_VALUE=False, FOLD_SCALE=True, DOT_PRECISION="tf32",
                 HAS_SINKS=False, HAS_ROW_PEAK=False, HAS_COUNTERS=False, **_dims())
    yield "forward-plain", base, flags
    yield "forward-counters", {**base, "COUNTERS": "i32"}, {**flags, "HAS_COUNTERS": True}
    yield "forward-masked-value", {**base, "SINKS": "i64", "O": "bf16"}, {**flags, "HAS_SINKS": True,
                                                                          "WEIGHT_ON_VALUE": True}
    yield "forward-row-peak", {**base, "ROW_PEAK": "fp32"}, {**flags, "HAS_ROW_PEAK": True}


def _key_mass_variants():
    base = dict(Q="bf16", K="bf16", LSE="fp32", MASS="fp32", PARTIAL="fp32", COUNTERS="i32", RANK=None, SINKS=None)
    flags = dict(D=64, BLOCK_D=64, BLOCK_M=32, BLOCK_N=64, PAIRED=True, DOT_PRECISION="tf32", MANY_SHARES=False,
                 SHARED=False, HAS_SELECTION=False, RANK_IS_MASS=True, LARGEST=True)
    yield "key-mass-paired", base, flags
    yield "key-mass-shares", base, {**flags, "PAIRED": False, "MANY_SHARES": True}
    yield "key-mass-top1-head", {**base, "SINKS": "i64"}, {**flags, "HAS_SELECTION": True}
    yield "key-mass-top1-shared-shares", {**base, "SINKS": "i64"}, {**flags, "HAS_SELECTION": True, "SHARED": True,
                                                                    "MANY_SHARES": True}
    yield "key-mass-random-head", {**base, "SINKS": "i64", "RANK": "fp32"}, {**flags, "HAS_SELECTION": True,
                                                                             "RANK_IS_MASS": False,
                                                                             "LARGEST": False}
    yield "key-mass-random-shared", {**base, "SINKS": "i64", "RANK": "fp32"}, {**flags, "HAS_SELECTION": True,
                                                                               "RANK_IS_MASS": False, "SHARED": True}


def _short_variants():
    mass = dict(Q="bf16", K="bf16", V="bf16", OUT=None, PARTIAL="fp32")
    mass_flags = dict(BLOCK_M=64, BLOCK_N=128, DOT_PRECISION="tf32", HAS_OUT=False, **_dims())
    yield "short-mass", mass, mass_flags
    yield "short-mass-out", {**mass, "OUT": "bf16"}, {**mass_flags, "HAS_OUT": True}
    attend = dict(Q="bf16", K="bf16", V="bf16", OUT="bf16", PARTIAL="fp32", MASS=None, RANK=None, SINKS=None)
    attend_flags = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_T=16, WEIGHT_ON_VALUE=False, FOLD_SCALE=True,
                        DOT_PRECISION="tf32", SELECT=False, HAS_SINKS=False, RANK_IS_MASS=True, LARGEST=True, **_dims())
    yield "short-plain", attend, attend_flags
    yield "short-sinks-value", {**attend, "SINKS": "i64"}, {**attend_flags, "HAS_SINKS": True, "WEIGHT_ON_VALUE": True}
    yield "short-top1", {**attend, "MASS": "fp32", "SINKS": "i64"}, {**attend_flags, "SELECT": True}
    yield "short-random", {**attend, "MASS": "fp32", "SINKS": "i64", "RANK": "fp32"}, {
        **attend_flags, "SELECT": True, "RANK_IS_MASS": False, "LARGEST": False}


# The largest key tile the short-key path admits (launch.fits_one_tile), per operand type and
# head dims, with the block sizes launch.short_config picks: every such launch must fit the
# H200's shared memory (float32 at D 128, DV 64, 65 keys did not before the budget per type).
ONE_TILE_BOUNDARY = [(dtype, dim, dim_v) for dtype in ("bf16", "fp32")
                     for dim, dim_v in ((64, 64), (128, 64), (128, 128), (256, 256))]


def _one_tile_boundary_variants():
    from sinkattn import launch
    from sinkattn.settings import Settings

    settings = Settings(interpret=False)
    for dtype, dim, dim_v in ONE_TILE_BOUNDARY:
        size = 4 if dtype == "fp32" else 2
        admitted = [n for n in (16, 32, 64, 128, 256) if launch._fits_one_tile(n, dim, dim_v, size, 256)]
        if not admitted:
            continue
        config = launch.short_config(admitted[-1], dim, dim_v, settings)
        blocks = dict(BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], **_dims(dim, dim_v),
                      DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
        name = f"boundary-{dtype}-d{dim}-dv{dim_v}"
        yield "short-mass-" + name, dict(Q=dtype, K=dtype, V=dtype, OUT=dtype, PARTIAL="fp32"), {**blocks, "HAS_OUT": True}
        yield "short-top1-" + name, dict(Q=dtype, K=dtype, V=dtype, OUT=dtype, PARTIAL="fp32", MASS="fp32", RANK=None,
                                   SINKS="i64"), {
            **blocks, "BLOCK_T": 16, "WEIGHT_ON_VALUE": False, "FOLD_SCALE": True, "SELECT": True,
            "HAS_SINKS": False, "RANK_IS_MASS": True, "LARGEST": True}


def _fallback_variants():
    yield "correction", dict(Q="bf16", K="bf16", V="bf16", O32="fp32", LSE="fp32", SINKS="i64", OUT="bf16",
                             TILE_LIST="i32", SLOT_COUNT="i32"), dict(BLOCK_M=64, SCORE_PATH=True, **_dims())
    yield "flagged-tiles", dict(Q="bf16", K="bf16", V="bf16", OUT="bf16", SINKS="i64", TILE_LIST="i32",
                                COUNTERS="i32", PART_O="fp32", PART_LSE="fp32"), dict(
        BLOCK_M=64, BLOCK_N=64, BLOCK_T=16, WEIGHT_ON_VALUE=False, FOLD_SCALE=True, DOT_PRECISION="tf32", **_dims())


def _query_stats_variants():
    for dtype, dim in (("bf16", 64), ("fp16", 128), ("fp32", 40)):
        yield f"query-stats-{dtype}-d{dim}", dict(Q=dtype, K=dtype, ROWS="i64", PART="fp32"), dict(
            D=dim, BLOCK_D=max(16, 1 << (dim - 1).bit_length()), BLOCK_M=16, BLOCK_N=64,
            DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    yield "query-stats-merge-rows", dict(PART="fp32", ROW_OUT="fp32", MEAN_OUT=None), dict(
        BLOCK_S=16, BLOCK_C=64, BLOCK_R=64)
    yield "query-stats-merge-means", dict(PART="fp32", ROW_OUT=None, MEAN_OUT="fp32"), dict(
        BLOCK_S=16, BLOCK_C=64, BLOCK_R=64)
    yield "trace-mass-stats", dict(MASS="fp32", HEAD_MEAN="fp32", SINKS=None, OUT="fp32"), dict(
        FIXED=7, N_TOP=5, BLOCK_T=8, N_SEL=0, BLOCK_S=2, QUERY_MEAN=False, BLOCK_H=32, BLOCK_N=1024)
    yield "trace-mass-stats-selected", dict(MASS="fp32", HEAD_MEAN="fp32", SINKS="i64", OUT="fp32"), dict(
        FIXED=7, N_TOP=5, BLOCK_T=8, N_SEL=2, BLOCK_S=2, QUERY_MEAN=True, BLOCK_H=32, BLOCK_N=1024)


def _variants():
    from sinkattn.kernels.attention import attention_forward_kernel, flagged_tiles_kernel
    from sinkattn.kernels.correction import correction_kernel
    from sinkattn.kernels.key_mass import key_mass_kernel
    from sinkattn.kernels.query_stats import query_stats_kernel, query_stats_merge_kernel
    from sinkattn.kernels.trace_stats import mass_stats_kernel
    from sinkattn.kernels.short_keys import short_attention_kernel, short_mass_kernel

    kernels = {"forward": attention_forward_kernel, "key-mass": key_mass_kernel, "short-mass": short_mass_kernel,
               "short": short_attention_kernel, "correction": correction_kernel, "flagged": flagged_tiles_kernel,
               "query-stats": query_stats_kernel, "query-stats-merge": query_stats_merge_kernel,
               "trace-mass-stats": mass_stats_kernel}
    for group in (_forward_variants(), _key_mass_variants(), _short_variants(), _one_tile_boundary_variants(),
                  _fallback_variants(), _query_stats_variants()):
        for name, pointers, constexprs in group:
            kernel = next(k for prefix, k in sorted(kernels.items(), key=lambda kv: -len(kv[0]))
                          if name.startswith(prefix))
            yield name, kernel, pointers, constexprs


VARIANTS = [
    "forward-plain", "forward-counters", "forward-masked-value", "forward-row-peak",
    "key-mass-paired", "key-mass-shares", "key-mass-top1-head", "key-mass-top1-shared-shares",
    "key-mass-random-head", "key-mass-random-shared",
    "short-mass", "short-mass-out", "short-plain", "short-sinks-value", "short-top1", "short-random",
    "correction", "flagged-tiles", "query-stats-bf16-d64", "query-stats-fp16-d128", "query-stats-fp32-d40",
    "query-stats-merge-rows", "query-stats-merge-means", "trace-mass-stats", "trace-mass-stats-selected",
    *(f"{kernel}-boundary-{dtype}-d{dim}-dv{dim_v}" for dtype, dim, dim_v in ONE_TILE_BOUNDARY
      for kernel in ("short-mass", "short-top1")),
    *HOPPER_VARIANTS,
]


def _main():
    """In the child: compile every variant, print {variant: "ok" or the error} as JSON."""
    results = {}
    hopper = ((name, lambda args=args: _compile_hopper_forward(*args)) for name, args in HOPPER_VARIANTS.items())
    triton_kernels = ((name, lambda args=(kernel, pointers, constexprs): _compile(*args))
                      for name, kernel, pointers, constexprs in _variants())
    for name, compile_variant in (*triton_kernels, *hopper):
        try:
            compiled = compile_variant()
            shared = compiled.metadata.shared
            # An H200 block gets at most 232448 bytes: more is an OutOfResources at launch.
            results[name] = ("no cubin" if not compiled.asm.get("cubin")
                             else f"{shared} bytes of shared memory > 232448" if shared > 232448 else "ok")
        except Exception as error:  # noqa: BLE001 - reported per variant
            results[name] = f"{type(error).__name__}: {error}"[-3000:]
    print(json.dumps(results))


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
                            "import test_kernels_compile as t; t._main()"],
                           capture_output=True, text=True, env=env, timeout=900)
    if child.returncode != 0:
        pytest.fail(f"the compiling process failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_compiles_for_sm90(variant, compiled):
    assert compiled[variant] == "ok", compiled[variant]
