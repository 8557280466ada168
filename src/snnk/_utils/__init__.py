"""Internal helpers: validation, random generators and row blocking."""

from snnk._utils.blocks import crossprod, default_block_rows, empty_output, iter_blocks
from snnk._utils.random import draw_seed, make_generator, on_cpu
from snnk._utils.validation import (
    all_finite,
    as_float_tensor,
    check_bool,
    check_device,
    check_finite,
    check_in,
    check_positive,
    check_positive_int,
    check_same_device,
    compute_dtype,
)

__all__ = [
    "all_finite",
    "as_float_tensor",
    "check_bool",
    "check_device",
    "check_finite",
    "check_in",
    "check_positive",
    "check_positive_int",
    "check_same_device",
    "compute_dtype",
    "crossprod",
    "default_block_rows",
    "draw_seed",
    "empty_output",
    "iter_blocks",
    "make_generator",
    "on_cpu",
]
