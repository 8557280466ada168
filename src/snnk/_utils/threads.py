"""One intra-op thread for latency-bound loops of small tensor operations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["single_thread_if"]


@contextlib.contextmanager
def single_thread_if(small: bool) -> Iterator[None]:
    """Run the body on one intra-op thread when ``small`` is true, then restore the count.

    Loops of many small operations (a DPP chain's rank-one updates, the Cholesky factors of a
    deep kernel machine's step) are latency-bound: waking and joining threads costs more than
    the work, and on a busy machine each call pays milliseconds (a 5,000 x 50 matrix-vector
    product: 8-15 ms on two threads against 50 µs on one; a DKM step 75x slower at m = 120,
    torch 2.13 on a loaded 2-core VM). ``torch.set_num_threads`` is process-wide: another
    Python thread running torch inside the block also runs on one thread until it ends (a
    speed effect only; results do not depend on the thread count).
    """
    before = torch.get_num_threads()
    if not small or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
