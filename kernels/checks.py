"""Argument checks shared by the kernels and the families: one error wording everywhere.

``argument_error("masked_attention", "impl", "one of ('reference', 'xla')", "'flash'")`` reads
``masked_attention: `impl` must be one of ('reference', 'xla'); got 'flash'``.
"""

from __future__ import annotations

import jax
import numpy as np


def argument_error(fn: str, name: str, expected, got) -> ValueError:
    """The ValueError for argument ``name`` of ``fn``: what was expected, what was received."""
    return ValueError(f"{fn}: `{name}` must be {expected}; got {got}")


def concrete(x):
    """``x`` as a numpy array when its values are known, ``None`` under tracing (jit/vmap/grad),
    so value checks run eagerly and shape checks alone run under ``jit``."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
