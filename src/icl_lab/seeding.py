"""Deterministic seed derivation: every random stream comes from the run seed and a purpose."""

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed that depends only on the run seed and the purpose labels."""
    text = ":".join([str(seed), *map(str, purpose)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *purpose: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from the run seed and a purpose, on the given device."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *purpose))
    return g


@contextlib.contextmanager
def forked_generators(device: str | torch.device) -> Iterator[torch.Generator]:
    """Within the block, draws from the CPU's and `device`'s default generators leave them as the
    caller had them; yields `device`'s default generator (the one its random functions use)."""
    device = torch.device(device)
    if device.type != "cuda":
        with torch.random.fork_rng(devices=[]):
            yield torch.default_generator
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index], device_type="cuda"):
        yield torch.cuda.default_generators[index]
