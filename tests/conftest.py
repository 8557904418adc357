"""Test set-up: 4 forced CPU devices (for the data-parallel tests) and no network."""

import os
import socket

import jax
import pytest

# Must happen before any JAX computation initialises the CPU backend.
jax.config.update("jax_num_cpu_devices", 4)

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")


class NetworkAccessError(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkAccessError(f"tests must not touch the network (attempted: {args[:2]!r})")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails at once instead of retrying for minutes."""
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's name: fresh inputs per test, reproducible."""
    import zlib

    return __import__("numpy").random.default_rng(zlib.crc32(request.node.nodeid.encode()))
