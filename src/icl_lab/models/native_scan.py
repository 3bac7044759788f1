"""Mamba's selective scan as a native CPU kernel (selective_scan.cpp), built on first use.

The kernel is built with the C++ compiler torch.compile uses ($CXX, default g++), in about a
second, into $ICL_LAB_CACHE/kernels/ (default ~/.cache/icl-lab), keyed by its source, the flags and
this CPU; later processes load the built library. It is exposed as the custom operator
icl_lab::selective_scan with its own backward, so it also runs inside a compiled training step.
On this 2-core CPU, one thread, Mamba's quick ICLL shapes (batch 32 x 128 steps x 128 channels x
16 states), forward and backward take about 18 ms against 30 ms for the compiled chunk step
(benchmarks/arch_throughput.py times whole training steps).

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
from pathlib import Path

import torch
from torch import Tensor

from icl_lab.errors import IclLabError
from icl_lab.files import atomic_write, cache_root
from icl_lab.training.compiled import compiler_missing

SOURCE = Path(__file__).with_name("selective_scan.cpp")
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-std=c++17"]
BLOCK = 16  # channels per block in the kernel (its W)


def _cpu_signature() -> bytes:
    """What -march=native depends on: the CPU's feature flags where Linux lists them."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()} {flags}".encode()


@torch.compiler.assume_constant_result  # decided once, before tracing: never traced itself
def available() -> bool:
    """Whether the kernel is built and loaded (building it now if needed); warns once if it cannot be."""
    return _library() is not None


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([compiler, *COMPILE_FLAGS]).encode() + _cpu_signature()
    )
    path = cache_root() / "kernels" / f"selective_scan-{key.hexdigest()[:16]}.so"
    try:
        if not path.exists():
            if missing := compiler_missing("cpu"):
                raise OSError(missing)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: _build(compiler, tmp))
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError, IclLabError) as e:  # no compiler, a read-only cache...
        reason = (getattr(e, "stderr", None) or str(e)).strip()[:300]
        warnings.warn(
            f"Mamba's native scan kernel is unavailable ({reason}); using torch's scan", stacklevel=2
        )
        return None
    for name in ("scan_forward", "scan_backward"):
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


def usable(*tensors: Tensor) -> bool:
    """Whether the kernel can take these tensors: float32 on the CPU, and it is available."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


def _pointer(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _sizes(dt: Tensor, A: Tensor) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(n) for n in (*dt.shape, A.shape[1])]


@torch.library.custom_op("icl_lab::selective_scan", mutates_args=())
def selective_scan(dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor) -> Tensor:
    """y (B, T, C) from dt, u (B, T, C), A (C, N), Bs, Cs (B, T, N), as recurrence.selective_scan."""
    dt, u, Bs, Cs = (x.contiguous() for x in (dt, u, Bs, Cs))
    y = torch.empty_like(u)
    scratch = u.new_empty(A.numel() // A.shape[0] * BLOCK)  # one block's state (N, W)
    args = [dt, A.t().contiguous(), u, Bs, Cs, y, scratch]
    _library().scan_forward(*map(_pointer, args), *_sizes(dt, A))
    return y


@selective_scan.register_fake
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
    args = [dt, A.t().contiguous(), u, Bs, Cs, gy, gdt, gAt, gu, gBs, gCs, scratch]
    _library().scan_backward(*map(_pointer, args), *_sizes(dt, A))
    return gdt, gAt.t().contiguous(), gu, gBs, gCs


@selective_scan_backward.register_fake
def _(
    dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (dt, A, u, Bs, Cs))


def _save_inputs(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: torch.autograd.function.FunctionCtx, gy: Tensor) -> tuple[Tensor, ...]:
    return selective_scan_backward(*ctx.saved_tensors, gy)


selective_scan.register_autograd(_backward, setup_context=_save_inputs)
