"""The torch-free reader of torch.save state dicts, on fixtures torch wrote (both formats)."""

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zoo.core.torch_weights import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, load_torch_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_what_torch_wrote_dtypes_shapes_strides_and_offsets(fmt):
    got = load_torch_state_dict(FIXTURES / f"state_dict_{fmt}.pth")
    with np.load(FIXTURES / "state_dict_expected.npz") as z:
        expected = {k: z[k] for k in z.files}
    assert list(got) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                         "1.num_batches_tracked", "transposed", "slice", "half", "int32", "scalar"]  # fmt: skip
    for key, want in expected.items():
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    assert got["transposed"].flags.c_contiguous and got["transposed"][1, 0] == 1.0


def test_matches_torch_load_when_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"w": torch.randn(5, 3, 2), "t": torch.randn(4, 6).t(), "i": torch.arange(7)[2:], "b": torch.rand(3) > 0.5}
    for new in (True, False):
        path = tmp_path / f"{new}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=new)
        got = load_torch_state_dict(path)
        for k, v in torch.load(path).items():
            np.testing.assert_array_equal(got[k], v.numpy())


def _legacy_file(path, obj):
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f)
        pickle.dump(obj, f)
        pickle.dump([], f)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-not-run",))


def test_refuses_globals_other_than_tensors_and_never_runs_them(tmp_path, capfd):
    _legacy_file(tmp_path / "evil.pth", {"x": _Exploit()})
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        load_torch_state_dict(tmp_path / "evil.pth")
    assert "should-not-run" not in capfd.readouterr().out


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load_torch_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(pickle.dumps(42))
    with pytest.raises(ValueError, match="not a torch.save file"):
        load_torch_state_dict(tmp_path / "junk.pth")
    _legacy_file(tmp_path / "list.pth", [1, 2])
    with pytest.raises(ValueError, match="not a dict of tensors"):
        load_torch_state_dict(tmp_path / "list.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="without data.pkl"):
        load_torch_state_dict(tmp_path / "other.zip")


def test_a_checkpoint_dict_is_unwrapped(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, tmp_path / "ckpt.pth")
    assert list(load_torch_state_dict(tmp_path / "ckpt.pth")) == ["w"]
