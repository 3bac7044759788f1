"""Name -> class registries, so that a task, model, clamp kind or metric is added by one file.

Names are resolved when a config is validated, not when icl-lab is imported, so a component
registered later (in a notebook, a script, or a module a config lists under `imports`) is as
valid in a config as a bundled one.
"""

import hashlib
import importlib
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from icl_lab.errors import ConfigError

T = TypeVar("T")


def summary(doc: str | None) -> str:
    """A component's docstring's first sentence on one line (how `icl-lab list` describes it)."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.split(r"(?<=[\w)\]]\.)\s+(?=[A-Z])", paragraph, maxsplit=1)[0]


def _origin(obj: object) -> tuple[str, str]:
    target = getattr(obj, "fn", obj)  # a registered metric wraps its function
    return getattr(target, "__module__", ""), getattr(target, "__qualname__", repr(target))


class Registry(Generic[T]):
    """Maps names to registered objects; unknown names are config errors listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an object under `name`. Redefining it in the module that defined it
        (re-running a notebook cell, reloading a module) replaces it; another module's object of
        the same name is an error."""

        def add(obj: T) -> T:
            if name in self._items and _origin(self._items[name]) != _origin(obj):
                module, qualname = _origin(self._items[name])
                raise ValueError(f"{self.kind} {name!r} is already registered by {module}.{qualname}")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names()) or 'none'})")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that its members register themselves."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package_name}.{info.name}")


def import_user_module(spec: str) -> None:
    """Import a module of user components: a dotted module name, or a path to a .py file
    (relative to the working directory). A file's folder goes on sys.path, as a script's does, so
    that it can import its neighbours; it is imported under its own name unless another module has
    that name (then under a name made from its path). ConfigError if it cannot be found or fails to
    import."""
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        if not path.is_file():
            raise ConfigError(f"imports: file not found: {spec}")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) != str(path):
            name = f"icl_lab_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:
            del sys.modules[name]
            raise ConfigError(f"imports: {spec} failed to import: {type(e).__name__}: {e}") from None
        return
    try:
        importlib.import_module(spec)
    except ImportError as e:
        raise ConfigError(f"imports: cannot import module {spec!r}: {e}") from None
    except Exception as e:
        raise ConfigError(f"imports: module {spec!r} failed to import: {type(e).__name__}: {e}") from None


def source_digests(specs: list[str]) -> dict[str, str]:
    """{import: SHA-256 of its source file} for a config's imports (already imported), so that a
    run can tell when the code it trained with has changed; modules without a source file (built
    in, compiled) are left out."""
    digests = {}
    for spec in specs:
        found = spec if spec.endswith(".py") else getattr(importlib.util.find_spec(spec), "origin", None)
        if found and found.endswith(".py") and Path(found).is_file():
            digests[spec] = hashlib.sha256(Path(found).read_bytes()).hexdigest()
    return digests
