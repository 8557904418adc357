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
