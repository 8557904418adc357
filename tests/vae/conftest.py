"""Fixtures shared by the VAE tests."""

import pytest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One prepared copy of the offline data sets per module (not the user's cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_DATA_DIR", str(tmp_path_factory.mktemp("tfds")))
        yield
