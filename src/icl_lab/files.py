"""Atomic file writes (write to a temporary name, fsync, rename: a reader never sees half a file)
and the cache directory."""

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from icl_lab.errors import RunStoreError, StorageError

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_root() -> Path:
    """Where icl-lab caches what it can rebuild (data, built kernels): $ICL_LAB_CACHE, default
    ~/.cache/icl-lab."""
    return Path(os.environ.get("ICL_LAB_CACHE", Path.home() / ".cache" / "icl-lab"))


def storage_error(action: str, path: Path, error: OSError) -> StorageError:
    """One line naming what could not be done to which file, and why (disk full, read-only...)."""
    # a short write (numpy's tofile) comes without an errno: say what it most likely was
    why = error.strerror or (f"{error} (is the disk full?)" if error.errno is None else str(error))
    return StorageError(f"cannot {action} {path}: {why}")


def read_text(path: Path) -> str:
    """A text file's contents; RunStoreError naming it if its bytes are not UTF-8 text (a damaged file)."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise RunStoreError(f"{path} is damaged (not UTF-8 text)") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), then make the result appear at `path` in one step. The temporary name
    is unique, so processes writing the same file at once (e.g. a shared data cache) never clash.
    The file gets the usual mode (0666 less the umask, whatever the writer chose); a failure
    (full or read-only disk) leaves the old file in place, removes the temporary one and raises
    StorageError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_UMASK)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as e:
        with contextlib.suppress(OSError):  # a read-only disk refuses even to unlink what is not there
            tmp.unlink(missing_ok=True)
        raise storage_error("write", path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def make_dir(path: Path) -> None:
    """Create a directory and its parents if missing; StorageError if the disk refuses."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir's "File exists" for a file in the way reads as if all were well
        raise StorageError(f"cannot create the directory {path}: a file of that name is in the way") from None
    except OSError as e:
        raise storage_error("create the directory", path, e) from None


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a safetensors file atomically, creating its directory; StorageError if the
    disk refuses (safetensors reports a failed write, e.g. a full disk, as its own error)."""
    make_dir(path.parent)

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its message ends "(os error N)" when the system refused
            found = re.search(r"\(os error (\d+)\)", str(e))
            code = int(found.group(1)) if found else None
            raise (OSError(code, os.strerror(code)) if code else OSError(str(e))) from None

    atomic_write(path, write)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
