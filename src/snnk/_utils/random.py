"""Seeded random generators that never touch torch's or NumPy's global RNG."""

from __future__ import annotations

import numbers
import os

import torch


def draw_seed() -> int:
    """A fresh 63-bit seed from the operating system (the global RNGs stay untouched)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def make_generator(seed: int | torch.Generator | None) -> tuple[torch.Generator, int | None]:
    """Return a CPU ``torch.Generator`` for ``seed`` and the integer seed used.

    Parameters
    ----------
    seed : int, torch.Generator or None
        An integer gives a reproducible generator; ``None`` draws a seed from the operating
        system (recorded, so the draw can be repeated); a generator is used as it is, and the
        returned seed is ``None``.
    """
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(
                "seed must be an int or a CPU torch.Generator: random matrices are drawn on "
                "the CPU so that they are the same on every device; got a generator on "
                f"{seed.device}"
            )
        return seed, None
    if seed is None:
        seed = draw_seed()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) % (2**63))
    return gen, int(seed)


def numpy_seed_from(generator: torch.Generator) -> int:
    """Draw an integer from ``generator`` to seed a NumPy/SciPy generator reproducibly."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())
