"""Test set-up: 4 forced CPU devices (for the data-parallel tests) and no network."""

import os
import socket

# XLA:CPU spends most of a test's time compiling (often 3-4x longer than running). Two
# compile-time flags, for tests only (the tiny test shapes run no slower to speak of):
# * LLVM optimisation level 0 compiles several times faster than the default;
# * the older elemental emitters instead of the fusion emitters cut what is left by about a
#   third (the NVAE smoke test's compiles: 28 s -> 18 s).
# Must be set before the CPU backend starts; a flag the caller already set is kept.
_TEST_XLA_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
for _name, _value in _TEST_XLA_FLAGS.items():
    if _name not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_name}={_value}").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

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
