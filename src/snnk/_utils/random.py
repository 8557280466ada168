"""Seeded random generators that never touch torch's or NumPy's global RNG."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
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


def check_random_state(random_state) -> np.random.RandomState:
    """scikit-learn's ``check_random_state`` without the global RNG.

    An int or a ``RandomState`` behaves as in scikit-learn (same draws); ``None`` gives a
    fresh ``RandomState`` seeded from the operating system instead of NumPy's global one, so
    fitting with ``random_state=None`` never advances ``np.random``'s state. A
    ``np.random.Generator`` is wrapped so that ``randint`` / ``standard_normal`` work.
    """
    if random_state is None:
        return np.random.RandomState(draw_seed() % (2**32))
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.RandomState(int(random_state.integers(2**32)))
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise TypeError(
            f"random_state must be None, an int or a numpy RandomState/Generator, got "
            f"{random_state!r}"
        )
    return np.random.RandomState(int(random_state) % (2**32))


def seed_from_random_state(random_state) -> int:
    """The 31-bit integer seed an estimator derives from ``random_state`` for its torch
    generators: the same value scikit-learn's ``check_random_state(rs).randint(2**31 - 1)``
    gives for an int, a fresh OS-entropy one for ``None``."""
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextmanager
def on_cpu() -> Iterator[torch.device]:
    """Within the block, tensors made without a device land on the CPU whatever torch's
    default device (``torch.set_default_device``, ``with torch.device(...)``): random
    matrices are drawn from CPU generators (the same on every device), then moved.

    Yields the default device the caller had, so that e.g. ``with torch.device("meta"):
    SNNKLinear(...)`` builds a meta module without drawing on it.
    """
    target = torch.get_default_device()
    with torch.device("cpu"):
        yield target
