"""User-facing errors: each carries one line that names the problem; the CLI exits with code 2.

A short list, one class per kind of fault a user can act on; `cli.main` maps every one to one line
on stderr and exit code 2 (`--debug` shows the traceback instead).
"""

import sysconfig
from pathlib import Path

# where icl-lab, Python's library and installed packages live: code outside them is a user's own
_LIBRARY_DIRS = tuple(
    {str(Path(sysconfig.get_path(key)).resolve()) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {str(Path(__file__).resolve().parent)}
)


def user_frame(error: BaseException) -> str | None:
    """Where a user's own code (a component a config imports, a script) raised `error`: its
    deepest frame outside icl-lab, Python's library and installed packages, as 'name (file:line)';
    None if the error did not pass through such code."""
    found, tb = None, error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        path = Path(code.co_filename)
        # compiled extensions name their sources relative to their build (pyarrow/error.pxi): no file
        if path.is_file() and not str(path.resolve()).startswith(_LIBRARY_DIRS):
            found = f"{code.co_qualname} ({code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    return found


class IclLabError(Exception):
    """An error the user can fix (bad config, missing file, corrupt checkpoint)."""


class ConfigError(IclLabError):
    """A configuration that cannot be run (bad field, impossible combination, absent device)."""


class CheckpointError(IclLabError):
    """A checkpoint that is missing, truncated, corrupt, from another run or of another shape."""


class RunStoreError(IclLabError):
    """A run or sweep directory that is missing, malformed, in use, or whose history is incomplete."""


class StorageError(IclLabError):
    """A file that cannot be written or read: a full or read-only disk, missing permissions."""


class WorkerLostError(IclLabError):
    """A worker process killed from outside, by the system for lack of memory most often."""


class DivergenceError(IclLabError):
    """Training produced a non-finite loss; the last parameters that are all finite are checkpointed."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM received: a run in progress stops, marked interrupted and resumable.

    A BaseException, as KeyboardInterrupt is: the signal handler raises it wherever the process is,
    and a library's `except Exception` there (torch guards some lazy imports so) must not swallow it.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.run_path: object = None  # the model run that stopped: continue with `icl-lab resume` of it
        self.continue_with: str | None = None  # or this command (an SAE run, a sweep, a reproduction)


class ComponentError(IclLabError):
    """A task or metric (a user's, typically) that returns what icl-lab cannot use."""


class ExportError(IclLabError):
    """A model or SAE that the target library's format cannot express, or that library missing."""
