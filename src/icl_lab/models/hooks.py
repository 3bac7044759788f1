"""Hook points with TransformerLens names: read (cache) or replace activations during a forward pass.

A hook function is called as fn(activation, hook=hook_point), as in TransformerLens, and may return
a replacement. Attach functions with `hooks(...)` / `run_with_hooks(...)` for one block or call, or
`add_hook(...)` until `reset_hooks()`; PyTorch's own module hooks never fire on a hook point."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from icl_lab.models.activation_cache import ActivationCache

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None


class HookPoint(nn.Module):
    """An identity at a named place in the model; attached functions may return a replacement."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.fns: list[HookFn] = []

    def __call__(self, x: Tensor) -> Tensor:  # type: ignore[override]
        # Bypasses nn.Module.__call__: a hook point sits on the hot path and costs one list check.
        for fn in self.fns:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        return x

    def _no_module_hooks(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            f"hook point {self.name!r} does not run PyTorch module hooks (it bypasses nn.Module.__call__ "
            "for speed): use model.run_with_hooks(x, fwd_hooks=[(name, fn)]), model.hooks([...]) or "
            "model.add_hook(name, fn)"
        )

    register_forward_hook = _no_module_hooks  # type: ignore[assignment]
    register_forward_pre_hook = _no_module_hooks  # type: ignore[assignment]
    register_full_backward_hook = _no_module_hooks  # type: ignore[assignment]


def takes_suffix(fn: HookFn) -> HookFn:
    """Mark fn as correct on an activation holding only the sequence's last positions.

    A model that reads out at fixed positions may compute its last block from the first of them on
    (Transformer.last_block_first): there the position axis of the queries, the pattern's
    query rows, z and the residual after attention holds the last P of T positions. An unmarked
    function on that block makes the model compute every position."""
    fn.takes_suffix = True  # type: ignore[attr-defined]
    return fn


def _matcher(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda _: True
    if isinstance(names, str):
        return lambda n: n == names
    if callable(names):
        return names
    wanted = set(names)
    return wanted.__contains__


class HookedModule(nn.Module):
    """A module whose HookPoints are addressable by name, with TransformerLens-style helpers."""

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        """Name every HookPoint after its module path; call at the end of __init__."""
        self.hook_dict = {n: m for n, m in self.named_modules() if isinstance(m, HookPoint)}
        for name, hook in self.hook_dict.items():
            hook.name = name

    def hook_points(self, names: NameFilter) -> list[HookPoint]:
        match = _matcher(names)
        return [h for n, h in self.hook_dict.items() if match(n)]

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[None]:
        """Attach (name or name-predicate, fn) pairs for the duration of the block."""
        kept: list[tuple[HookPoint, int]] = []  # each point touched, with its number of functions before
        try:
            for names, fn in fwd_hooks:
                points = self.hook_points(names)
                if isinstance(names, str) and not points:
                    raise KeyError(f"model has no hook point {names!r}")
                for point in points:
                    kept.append((point, len(point.fns)))
                    point.fns.append(fn)
            yield
        finally:
            # truncate rather than remove by value: blocks nest, and torch.compile traces this
            for point, n in reversed(kept):
                del point.fns[n:]

    def add_hook(self, names: str | Callable[[str], bool], fn: HookFn) -> None:
        """Attach fn at the matching hook points until reset_hooks() (TransformerLens' add_hook)."""
        points = self.hook_points(names)
        if isinstance(names, str) and not points:
            raise KeyError(f"model has no hook point {names!r}")
        for point in points:
            point.fns.append(fn)

    def reset_hooks(self) -> None:
        """Remove every hook function from every hook point."""
        for point in self.hook_dict.values():
            point.fns.clear()

    def run_with_hooks(
        self,
        *args: object,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        **kwargs: object,
    ) -> Tensor:
        """Forward pass with hooks attached only for this call."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self, *args: object, names_filter: NameFilter = None, detach: bool = True, **kwargs: object
    ) -> tuple[Tensor, "ActivationCache"]:
        """Forward pass that also returns the activations of the hooks matched, in an
        ActivationCache (indexable by full name or TransformerLens' (name, layer) keys)."""
        from icl_lab.models.activation_cache import ActivationCache

        cache = ActivationCache({}, self)

        def save(x: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach() if detach else x

        match = _matcher(names_filter)
        out = self.run_with_hooks(*args, fwd_hooks=[(match, save)], **kwargs)
        return out, cache
