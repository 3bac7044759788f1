"""Hook points with TransformerLens names: read (cache) or replace activations during a forward pass."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

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
            out = fn(x, self)
            if out is not None:
                x = out
        return x


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
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for names, fn in fwd_hooks:
                points = self.hook_points(names)
                if isinstance(names, str) and not points:
                    raise KeyError(f"model has no hook point {names!r}")
                for point in points:
                    point.fns.append(fn)
                    attached.append((point, fn))
            yield
        finally:
            for point, fn in attached:
                point.fns.remove(fn)

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
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward pass that also returns {hook name: activation} for the hooks matched."""
        cache: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach() if detach else x

        match = _matcher(names_filter)
        out = self.run_with_hooks(*args, fwd_hooks=[(match, save)], **kwargs)
        return out, cache


def stack_heads(cache: dict[str, Tensor], hook: str, n_layers: int) -> Tensor:
    """Stack blocks.{l}.{hook} over layers: (n_layers, *activation shape)."""
    return torch.stack([cache[f"blocks.{layer}.{hook}"] for layer in range(n_layers)])
