"""The torch-free reader of torch.save state dicts, on fixtures torch wrote (both formats)."""

import pickle
import struct
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
    with pytest.raises(ValueError, match="posix.system|os.system|nt.system"):
        load_torch_state_dict(tmp_path / "evil.pth")
    assert "should-not-run" not in capfd.readouterr().out


def _text(t: str) -> bytes:
    return b"X" + struct.pack("<I", len(t)) + t.encode()


def _tensor_opcodes(offset: int, size: int, stride: int) -> bytes:
    """Protocol-2 opcodes that push ``torch._utils._rebuild_tensor_v2(<storage "0" of 4 floats>,
    offset, (size,), (stride,), False, {})``, written by hand so no torch is needed."""
    storage = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu") + b"K\x04NtQ"  # legacy id: (..., numel, view=None)
    args = b"(" + storage + b"J" + struct.pack("<i", offset) + b"J" + struct.pack("<i", size) + b"\x85"
    args += b"J" + struct.pack("<i", stride) + b"\x85" + b"\x89}t"
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def _tensor_pickle(offset: int, size: int, stride: int) -> bytes:
    """``{"w": <tensor>}``."""
    return b"\x80\x02}" + _text("w") + _tensor_opcodes(offset, size, stride) + b"s."


def _legacy_with_tensor(path, offset, size, stride, payload: bytes | None = None):
    """A legacy torch.save file whose one storage holds 0, 1, 2, 3; ``payload`` replaces the
    ``{"w": <tensor>}`` pickle."""
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f)
        f.write(payload or _tensor_pickle(offset, size, stride))
        pickle.dump(["0"], f)
        f.write(struct.pack("<q", 4) + np.arange(4, dtype="<f4").tobytes())


def test_hand_written_tensor_pickle_reads_and_out_of_storage_views_are_refused(tmp_path):
    _legacy_with_tensor(tmp_path / "ok.pth", offset=1, size=2, stride=2)
    np.testing.assert_array_equal(load_torch_state_dict(tmp_path / "ok.pth")["w"], [1.0, 3.0])
    for name, (offset, size, stride) in {"negative_offset": (-1, 4, 1), "negative_stride": (3, 4, -1),
                                         "past_the_end": (1, 4, 1), "negative_size": (0, -2, 1)}.items():  # fmt: skip
        _legacy_with_tensor(tmp_path / f"{name}.pth", offset, size, stride)
        with pytest.raises(ValueError, match="offset|overruns"):
            load_torch_state_dict(tmp_path / f"{name}.pth")


def test_a_code_running_pickle_in_the_legacy_header_is_refused_before_it_runs(tmp_path, capfd):
    with open(tmp_path / "evil_header.pth", "wb") as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(ValueError, match="header refers to (posix|os|nt).system"):
        load_torch_state_dict(tmp_path / "evil_header.pth")
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
    """``{"epoch": 3, "state_dict": {"w": <tensor>}}`` (a training checkpoint) reads as its state dict."""
    checkpoint = (b"\x80\x02}" + _text("epoch") + b"K\x03s" + _text("state_dict") + b"}" + _text("w")
                  + _tensor_opcodes(1, 2, 2) + b"ss.")  # fmt: skip
    _legacy_with_tensor(tmp_path / "ckpt.pth", 0, 0, 0, payload=checkpoint)
    got = load_torch_state_dict(tmp_path / "ckpt.pth")
    assert list(got) == ["w"]
    np.testing.assert_array_equal(got["w"], [1.0, 3.0])
