"""The worker side of a peer benchmark: run a training step N times on request, report seconds per step.

Standard library only, so the authors' drivers can import it under their own (JAX) interpreter.
Protocol, one JSON object per line on the worker's original stdout: after setup and one first step
{"setup_s", "first_step_s", "versions"} and whatever the worker's `measure` adds; then, for each
line "N" read from stdin, {"s_per_step"} for N more steps. Everything else the worker or its
libraries print goes to stderr.
"""

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO


def protocol_channel() -> TextIO:
    """The original stdout for protocol lines; file descriptor 1 and sys.stdout then point at stderr."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def serve(
    channel: TextIO,
    step: Callable[[], None],
    sync: Callable[[], None],
    setup_s: float,
    versions: dict,
    measure: Callable[[], dict] | None = None,
) -> None:
    """Time one first step (compilation included), add what `measure` reports after it, then answer
    "N" requests until stdin closes."""

    def reply(record: dict) -> None:
        channel.write(json.dumps(record) + "\n")
        channel.flush()

    start = time.perf_counter()
    step()
    sync()
    first = {"setup_s": setup_s, "first_step_s": time.perf_counter() - start, "versions": versions}
    reply({**first, **(measure() if measure else {})})
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        reply({"s_per_step": (time.perf_counter() - start) / n})
