"""The CTranslate2 model.bin reader: a round trip through ctranslate2's own converter, and malformed files."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from speechprune.errors import ModelError
from speechprune.models.ct2 import read_ct2, sha256_file


def _name(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _tiny_file(version: int = 6) -> bytes:
    """A hand-written model.bin: one f16 matrix, one i8 scalar, one bf16 vector, one alias."""
    out = struct.pack("<I", version) + _name("TestSpec") + struct.pack("<I", 2) + struct.pack("<I", 3)
    m = np.arange(6, dtype=np.float16).reshape(2, 3)
    out += _name("a/matrix") + struct.pack("<B2IB", 2, 2, 3, 4) + struct.pack("<I", m.nbytes) + m.tobytes()
    bf = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    out += _name("b/bf16") + struct.pack("<BIB", 1, 2, 5) + struct.pack("<I", bf.nbytes) + bf.tobytes()
    out += _name("c/scalar") + struct.pack("<BB", 0, 1) + struct.pack("<I", 1) + struct.pack("<b", -3)
    out += struct.pack("<I", 1) + _name("d/alias") + _name("a/matrix")
    return out


def test_reads_hand_written_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(_tiny_file())
    model = read_ct2(path)
    assert (model.spec, model.revision) == ("TestSpec", 2)
    assert model.variables["a/matrix"].dtype == np.float16
    np.testing.assert_array_equal(model.variables["a/matrix"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(model.variables["b/bf16"], [1.5, -2.0])
    assert model.bfloat16 == {"b/bf16"}
    assert model.variables["c/scalar"].shape == () and model.scalar("c/scalar") == -3
    assert model.aliases == {"d/alias": "a/matrix"}
    assert model.get("d/alias") is model.variables["a/matrix"]


def test_parts_are_concatenated(tmp_path):
    data = _tiny_file()
    (tmp_path / "p1").write_bytes(data[:17])
    (tmp_path / "p2").write_bytes(data[17:])
    model = read_ct2([tmp_path / "p1", tmp_path / "p2"])
    assert set(model.variables) == {"a/matrix", "b/bf16", "c/scalar"}


def test_wrong_version_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(_tiny_file(version=5))
    with pytest.raises(ModelError, match="binary version 5") as info:
        read_ct2(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cut", [2, 10, 40, -5])
def test_truncated_file_is_refused(tmp_path, cut):
    path = tmp_path / "model.bin"
    path.write_bytes(_tiny_file()[:cut])
    with pytest.raises(ModelError, match="truncated") as info:
        read_ct2(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_trailing_garbage_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(_tiny_file() + b"xx")
    with pytest.raises(ModelError, match="unexpected bytes"):
        read_ct2(path)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="cannot read"):
        read_ct2(tmp_path / "absent.bin")


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    data = b"x" * 3_000_001
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1 << 16) == hashlib.sha256(data).hexdigest()


def test_reads_what_ctranslate2_wrote(tiny_ct2):
    model, _, ct2_dir = tiny_ct2
    ct2 = read_ct2(ct2_dir / "model.bin")
    assert ct2.spec == "WhisperSpec"
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2.scalar("encoder/num_heads") == 4 and ct2.scalar("decoder/num_heads") == 4
    conv1 = ct2.variables["encoder/conv1/weight"]
    assert conv1.dtype == np.float32
    np.testing.assert_array_equal(conv1, model.model.encoder.conv1.weight.detach().numpy())
