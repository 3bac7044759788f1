"""Mamba's hot loops as native CPU kernels (native_mamba.cpp), built on first use: the selective
scan, and the causal depthwise convolution with its SiLU.

The kernels are built with the C++ compiler torch.compile uses ($CXX, default g++), in about a
second, into $ICL_LAB_CACHE/kernels/ (default ~/.cache/icl-lab), keyed by their source, the flags
and this CPU; later processes load the built library. Each is a torch.library custom operator with
its own backward, called through an autograd.Function (`_differentiable`) so that torch.func.grad
differentiates it too; it runs inside a compiled training step, but not under vmap. Models use
them where the trainer allows compiled kernels (`allowed`); without a compiler they warn once and
use their torch code. On this 2-core CPU, one thread, at Mamba's quick ICLL shapes (batch 32 x 128
steps x 128 channels x 16 states), the scan's forward and backward take about 18 ms against 30 ms
for its compiled chunk step (benchmarks/arch_throughput.py times whole training steps).

`-ffast-math` lets the compiler vectorise expf; the library is linked without it, because linking
a shared library with it (GCC 12) would turn on flush-to-zero for the whole process.
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from icl_lab.errors import IclLabError
from icl_lab.files import atomic_write, cache_root
from icl_lab.training.compiled import compiler_missing, kernels_allowed

SOURCE = Path(__file__).with_name("native_mamba.cpp")
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-std=c++17"]
BLOCK = 16  # channels per block of the scan kernel (its W)


def allowed(*tensors: Tensor) -> bool:
    """Whether to run these tensors through a native kernel: the trainer allows compiled kernels,
    they are float32 on the CPU, and the kernels are available."""
    return (
        kernels_allowed()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and available()
    )


@torch.compiler.assume_constant_result  # decided once, before tracing: never traced itself
def available() -> bool:
    """Whether the kernels are built and loaded (building them now if needed); warns once if not."""
    return _library() is not None


def _cpu_signature() -> bytes:
    """What -march=native depends on: the CPU's feature flags where Linux lists them."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()} {flags}".encode()


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([compiler, *COMPILE_FLAGS]).encode() + _cpu_signature()
    )
    path = cache_root() / "kernels" / f"native_mamba-{key.hexdigest()[:16]}.so"
    try:
        if not path.exists():
            if missing := compiler_missing("cpu"):
                raise OSError(missing)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: _build(compiler, tmp))
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError, IclLabError) as e:  # no compiler, a read-only cache...
        reason = (getattr(e, "stderr", None) or str(e)).strip()[:300]
        warnings.warn(f"Mamba's native kernels are unavailable ({reason}); using torch's code", stacklevel=2)
        return None
    for name in ("scan_forward", "scan_backward", "conv_silu_forward", "conv_silu_backward"):
        getattr(library, name).restype = None
    return library


def _build(compiler: str, target: Path) -> None:
    """Compile with -ffast-math, then link without it (see the module docstring)."""
    obj = target.with_suffix(".o")
    try:
        for command in (
            [compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)],
            [compiler, "-shared", str(obj), "-o", str(target), "-lm"],
        ):
            subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError:
        target.unlink(missing_ok=True)
        raise
    finally:
        obj.unlink(missing_ok=True)


def _call(kernel: str, tensors: list[Tensor], *sizes: int) -> None:
    """The library's `kernel` on these tensors' data and these sizes."""
    pointers = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    getattr(_library(), kernel)(*pointers, *map(ctypes.c_int64, sizes))


@torch.library.custom_op("icl_lab::selective_scan", mutates_args=())
def selective_scan_op(dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor) -> Tensor:
    """y (B, T, C) from dt, u (B, T, C), A (C, N), Bs, Cs (B, T, N), as recurrence.selective_scan."""
    dt, u, Bs, Cs = (x.contiguous() for x in (dt, u, Bs, Cs))
    y = torch.empty_like(u)
    state = u.new_empty(A.shape[1] * BLOCK)  # one block's (N, W)
    _call("scan_forward", [dt, A.t().contiguous(), u, Bs, Cs, y, state], *dt.shape, A.shape[1])
    return y


@selective_scan_op.register_fake
def _(dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor) -> Tensor:
    return u.new_empty(u.shape)


@torch.library.custom_op("icl_lab::selective_scan_backward", mutates_args=())
def selective_scan_backward(
    dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients (dt, A, u, Bs, Cs) of sum(gy * selective_scan(dt, A, u, Bs, Cs))."""
    dt, u, Bs, Cs, gy = (x.contiguous() for x in (dt, u, Bs, Cs, gy))
    T, N = dt.shape[1], A.shape[1]
    gdt, gu = torch.empty_like(dt), torch.empty_like(u)
    gAt, gBs, gCs = A.new_zeros(N, A.shape[0]), torch.zeros_like(Bs), torch.zeros_like(Cs)
    scratch = u.new_empty((4 * T + 2) * N * BLOCK)
    tensors = [dt, A.t().contiguous(), u, Bs, Cs, gy, gdt, gAt, gu, gBs, gCs, scratch]
    _call("scan_backward", tensors, *dt.shape, N)
    return gdt, gAt.t().contiguous(), gu, gBs, gCs


@selective_scan_backward.register_fake
def _(
    dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (dt, A, u, Bs, Cs))


def _rows(x: Tensor) -> Tensor:
    """x (B, T, C) as the conv kernels read it: channels contiguous, rows evenly spaced."""
    return x if x.stride(2) == 1 and x.stride(0) == x.shape[1] * x.stride(1) else x.contiguous()


@torch.library.custom_op("icl_lab::causal_conv_silu", mutates_args=())
def causal_conv_silu_op(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """silu(causal depthwise convolution): x (B, T, C), weight (C, K), bias (C) -> (B, T, C), with
    y[:, t] reading x[:, t - K + 1 ... t] (zeros before the start)."""
    x = _rows(x)
    y = x.new_empty(x.shape)
    _call("conv_silu_forward", [x, weight.t().contiguous(), bias, y], x.stride(1), *x.shape, weight.shape[1])
    return y


@causal_conv_silu_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("icl_lab::causal_conv_silu_backward", mutates_args=())
def causal_conv_silu_backward(
    x: Tensor, weight: Tensor, bias: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients (x, weight, bias) of sum(gy * causal_conv_silu(x, weight, bias))."""
    x, gy = _rows(x), gy.contiguous()
    gx, gwT, gbias = x.new_empty(x.shape), weight.new_zeros(weight.shape[::-1]), torch.zeros_like(bias)
    tensors = [x, weight.t().contiguous(), bias, gy, gx, gwT, gbias, torch.empty_like(gx)]
    _call("conv_silu_backward", tensors, x.stride(1), *x.shape, weight.shape[1])
    return gx, gwT.t().contiguous(), gbias


@causal_conv_silu_backward.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, gy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _save_inputs(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward_by(op: Callable[..., tuple[Tensor, ...]]) -> Callable[..., tuple[Tensor, ...]]:
    """An autograd backward that calls `op` on the saved inputs and the output's gradient (detached:
    the kernels have no second derivative, and under torch.func.grad they would ask for one)."""
    return lambda ctx, grad: op(*(t.detach() for t in (*ctx.saved_tensors, grad)))


selective_scan_op.register_autograd(_backward_by(selective_scan_backward), setup_context=_save_inputs)
causal_conv_silu_op.register_autograd(_backward_by(causal_conv_silu_backward), setup_context=_save_inputs)


def _differentiable(
    op: Callable[..., Tensor], backward: Callable[..., tuple[Tensor, ...]]
) -> Callable[..., Tensor]:
    """`op` with its backward as an autograd.Function, which torch.func.grad can differentiate too
    (a custom operator's own autograd cannot be, and the compiled training step takes its gradients
    with torch.func.grad)."""
    function = type(
        "NativeKernel",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(lambda *inputs: op(*inputs)),
            "setup_context": staticmethod(_save_inputs),
            "backward": staticmethod(_backward_by(backward)),
        },
    )
    return function.apply


# called as torch.ops overloads: dynamo traces those inside the Function, not the op objects
ops = torch.ops.icl_lab
selective_scan = _differentiable(ops.selective_scan.default, ops.selective_scan_backward.default)
"""y (B, T, C) from dt, u (B, T, C), A (C, N), Bs, Cs (B, T, N), as recurrence.selective_scan."""
causal_conv_silu = _differentiable(ops.causal_conv_silu.default, ops.causal_conv_silu_backward.default)
"""silu(causal depthwise convolution): x (B, T, C), weight (C, K), bias (C) -> (B, T, C)."""
