"""When the trainer compiles its step with torch.compile, and what compiling needs.

A compiled step is the same computation as the eager one, as one compiled function
(`Trainer._whole_step`): the member losses (forward and clamps), their gradients by torch.func.grad,
per-member clipping, and the optimiser's update through torch.optim's own functional kernels
(`optim.functional_update`) on its own state. Eager, autograd and the optimiser's step() are
separate calls, and step() would split a compiled graph in three; as one graph the step saves their
per-call overhead (Singh's compiled step 3.71 -> 2.98 ms in two runs of benchmarks/peers/singh.py,
2026-12-03; 1.12x and 1.39x in same-process A/Bs). Results agree with eager
training within rounding (tests/test_compiled.py), and a compiled run resumes bit-identically.
The step compiles as one graph or not at all (fullgraph): a break inside torch.func.grad would leave
every later compiled step of the process eager, so a run whose step breaks trains eager, saying why
(`graph_break_reason`).

`auto` compiles when a run is long enough to repay the compile time. Compiling saves time per
member per step (an ensemble step saves about as much per member as a single run), so the rule
counts member-steps; the break-even is measured by benchmarks/compile_breakeven.py.

Apart from the whole step, a model's hot loop may have a compiled kernel of its own. Mamba has
native C++ kernels on the CPU for its selective scan and its convolution (models/native_mamba.py,
built in about a second; they run inside a compiled step too), and where they do not apply (a GPU,
an ensemble) one compiled chunk step of its scan (compiled in about 20 s, it repays itself in far
fewer steps than the whole step does). The trainer allows kernels
(`compiled_kernels`) unless `compile` is off; `auto` from KERNEL_MEMBER_STEPS. Outside a trainer
(analyses, reports) models run eager.
"""

import contextvars
import importlib.util
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

AUTO_MEMBER_STEPS = 20_000
"""member-steps from which `auto` compiles, on any device (the break-even was measured on a CPU)"""


def compiler_missing(device: str) -> str | None:
    """Why torch.compile cannot build code for `device` here (None when it can): the CPU needs a
    C++ compiler, a GPU needs Triton."""
    if torch.device(device).type == "cuda":
        return None if importlib.util.find_spec("triton") else "torch.compile on a GPU needs triton"
    compiler = os.environ.get("CXX", "g++")
    return (
        None
        if shutil.which(compiler)
        else f"torch.compile on the CPU needs a C++ compiler ({compiler} not found)"
    )


def should_compile(
    setting: Literal["auto", "on", "off"], member_steps: int, device: str, from_steps: int = AUTO_MEMBER_STEPS
) -> bool:
    """Whether a run of `member_steps` (steps x members) on `device` compiles its training step
    (from_steps: KERNEL_MEMBER_STEPS asks the same of compiled kernels); `on` without a compiler is
    refused when the config is validated."""
    if setting != "auto":
        return setting == "on"
    return compiler_missing(device) is None and member_steps >= from_steps


CPU_INDUCTOR_OPTIONS: dict[str, object] = {"realize_reads_threshold": 1}
"""TorchInductor settings of a compiled step on the CPU. realize_reads_threshold=1 computes once, into
memory, an elementwise buffer that several kernels use as soon as it reads more than one input
buffer, where the default recomputes it inside each user unless it reads more than four (in Singh's
step, presumably the transposed q/k/v gradients that its Adam update gathers element by element).
Against Inductor's defaults (benchmarks/inductor_knobs.py, runs of 2026-12-04; each results file
keeps its config's latest): Singh's step 1.04-1.14x, an 8-member Singh ensemble's 1.22x, results
changed at rounding level; the induction, Reddy, function-class and GD steps 0.94-1.02x (the 0.94 a
function-class run whose file a rerun at 0.98x replaced), Reddy's and the function-class steps
(Adam and SGD, single and packed) bit-identical. cpp_wrapper (C++ in place of Python wrapper code
around the kernels) measured 0.97-1.05x on top of this and is not used."""


def compile_settings(device: torch.device, cuda_graphs: bool) -> dict[str, object]:
    """torch.compile's mode or options for a training step (it takes one or the other): CUDA graphs
    by reduce-overhead, CPU_INDUCTOR_OPTIONS on the CPU, Inductor's defaults on a GPU (unmeasured)."""
    if cuda_graphs:
        return {"mode": "reduce-overhead"}
    return {"options": dict(CPU_INDUCTOR_OPTIONS)} if device.type == "cpu" else {}


def graph_break_reason(error: Exception) -> str:
    """One line from dynamo's graph-break error: what it could not trace, and the last line of
    code it was tracing (the user's, where the break is in a user's component)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    what = next(
        (line.removeprefix("Explanation: ") for line in lines if line.startswith("Explanation: ")), ""
    )
    reason = what or (lines[0] if lines else type(error).__name__)
    frames = [(i, m) for i, line in enumerate(lines) if (m := re.match(r'File "(.*)", line (\d+)', line))]
    if frames and frames[-1][0] + 1 < len(lines):
        i, frame = frames[-1]
        reason += f", at {frame[1]}:{frame[2]}: {lines[i + 1]}"
    return reason


KERNEL_MEMBER_STEPS = 1_000
"""member-steps from which `auto` allows compiled kernels (see the module docstring)"""
KERNEL_ELEMENTS = 2**16
"""elements a kernel's call must hold for its compiled form to be used (smaller ones stay eager)"""

_kernels = contextvars.ContextVar("icl_lab_compiled_kernels", default=False)


@contextmanager
def compiled_kernels(allowed: bool) -> Iterator[None]:
    """Inside, models use the compiled kernels of their hot loops when `allowed`."""
    token = _kernels.set(allowed)
    try:
        yield
    finally:
        _kernels.reset(token)


def kernels_allowed() -> bool:
    """Whether the trainer allows compiled kernels here (native ones run inside a compiled step too).
    Inside a compiled region always: a run compiles its step only where it allows kernels, and
    reading the context variable would break the step's graph."""
    return torch.compiler.is_compiling() or _kernels.get()


def kernel_compiles(elements: int) -> bool:
    """Whether a kernel call of `elements` runs compiled: allowed here (the trainer checked the
    compiler), large enough, and not inside a compiled region (the whole step's compile traces the
    eager form)."""
    return not torch.compiler.is_compiling() and kernels_allowed() and elements >= KERNEL_ELEMENTS


class _QuietProfilerNote(logging.Filter):
    """Drops dynamo's note that the optimiser's profiler label is not traced (it is harmless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Profiler record function")


# a sweep's worker process trains run after run: each config (shapes, clamps, settings) is one more
# compiled entry of the same step function, and past dynamo's default of 8 it would run eager
torch._dynamo.config.recompile_limit = 64
logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_QuietProfilerNote())
# clamps cache pure functions of their settings (head lists, masks); traced through, they give the same
warnings.filterwarnings(
    "ignore", message=r"Dynamo detected a call to a `functools.lru_cache`-wrapped function at 'base.py"
)
