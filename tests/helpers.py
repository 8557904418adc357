"""Assertions shared by the tests."""

import contextlib
import logging

import jax


@contextlib.contextmanager
def count_compilations():
    """Yields a list that collects one entry per XLA compilation inside the block."""
    compiled = []

    class Handler(logging.Handler):
        def emit(self, record):
            if "Compiling" in record.getMessage() or "compiling" in record.getMessage():
                compiled.append(record.getMessage())

    handler = Handler()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            yield compiled
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def optimised_jit(fn, **jit_kwargs):
    """`jax.jit` at XLA's default LLVM optimisation level (2).

    tests/conftest.py compiles at level 0 because most tests spend their time compiling. A
    test that runs one program for thousands of steps spends it running instead, and level 0
    code runs several times slower (the 21-loss DCGAN test: 30 s -> 8 s at level 2)."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 2}, **jit_kwargs)
