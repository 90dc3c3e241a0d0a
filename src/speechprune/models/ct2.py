"""A pure reader of CTranslate2 ``model.bin`` files (binary version 6).

Layout (little-endian, no padding): ``u32 binary_version``; spec name (``u16`` length including the NUL, bytes);
``u32 spec_revision``; ``u32 num_variables``; per variable: name (``u16`` length + bytes + NUL), ``u8 rank``,
``rank x u32`` dims, ``u8 dtype`` (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), ``u32 num_bytes``, raw data; then
``u32 num_aliases`` and (alias, target) name pairs. No code is run and nothing is imported from ctranslate2.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from speechprune.errors import ModelError

SUPPORTED_BINARY_VERSION = 6

# CT2 dtype code -> numpy dtype. bf16 has no numpy dtype: it is kept as raw uint16 words (see _bf16_to_f32).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


@dataclass
class Ct2Model:
    """The content of one CT2 ``model.bin``: spec name and revision, variables by name, aliases (alias -> target)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    # Names of variables stored as bfloat16 (their arrays hold the float32 values).
    bfloat16: frozenset[str] = frozenset()

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases; ``ModelError`` if absent."""
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise ModelError(f"CTranslate2 model ({self.spec}) has no variable {name!r}") from None

    def scalar(self, name: str) -> int | float:
        value = self.get(name)
        if value.size != 1:
            raise ModelError(f"CTranslate2 variable {name!r} is not a scalar (shape {value.shape})")
        return value.reshape(()).item()


class _Cursor:
    def __init__(self, data: memoryview, source: str):
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise ModelError(
                f"truncated CTranslate2 model: needs {end} bytes to read {what}, file has {len(self.data)}", self.source
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))

    def string(self, what: str) -> str:
        (length,) = self.unpack("<H", f"the length of {what}")
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise ModelError(f"corrupt CTranslate2 model: {what} is not NUL-terminated", self.source)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"corrupt CTranslate2 model: {what} is not UTF-8", self.source) from None


def _read_bytes(paths: Sequence[Path]) -> bytes:
    parts = []
    for p in paths:
        try:
            parts.append(Path(p).read_bytes())
        except OSError as e:
            raise ModelError(f"cannot read CTranslate2 model file: {e.strerror or e}", p) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _bf16_to_f32(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def read_ct2(paths: Path | str | Sequence[Path | str]) -> Ct2Model:
    """Read a CTranslate2 ``model.bin``; several paths are the parts of one file, concatenated in order.

    float16 variables stay float16, bfloat16 ones become float32 (listed in ``Ct2Model.bfloat16``); scalars are
    0-d arrays. Arrays are read-only views into the file's bytes. Raises ``ModelError`` naming the file on a wrong
    binary version, a truncated or corrupt file.
    """
    path_list = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not path_list:
        raise ModelError("read_ct2 needs at least one file")
    source = str(path_list[0]) if len(path_list) == 1 else " + ".join(str(p) for p in path_list)
    data = memoryview(_read_bytes(path_list))
    cur = _Cursor(data, source)

    (version,) = cur.unpack("<I", "the binary version")
    if version != SUPPORTED_BINARY_VERSION:
        raise ModelError(
            f"unsupported CTranslate2 binary version {version} (this reader handles version {SUPPORTED_BINARY_VERSION})",
            source,
        )
    spec = cur.string("the spec name")
    (revision,) = cur.unpack("<I", "the spec revision")
    (num_variables,) = cur.unpack("<I", "the variable count")

    variables: dict[str, np.ndarray] = {}
    bf16: set[str] = set()
    for index in range(num_variables):
        name = cur.string(f"the name of variable {index}")
        (rank,) = cur.unpack("<B", f"the rank of {name!r}")
        dims = cur.unpack(f"<{rank}I", f"the shape of {name!r}") if rank else ()
        (code,) = cur.unpack("<B", f"the dtype of {name!r}")
        if code not in _DTYPES:
            raise ModelError(f"corrupt CTranslate2 model: unknown dtype code {code} for {name!r}", source)
        (num_bytes,) = cur.unpack("<I", f"the byte count of {name!r}")
        dtype = _DTYPES[code]
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if num_bytes != expected:
            raise ModelError(
                f"corrupt CTranslate2 model: {name!r} has shape {tuple(dims)} {DTYPE_NAMES[code]} "
                f"({expected} bytes) but stores {num_bytes} bytes",
                source,
            )
        raw = cur.take(num_bytes, f"the data of {name!r}")
        array = np.frombuffer(raw, dtype=dtype).reshape(dims)
        if code == 5:
            array = _bf16_to_f32(array)
            bf16.add(name)
        if name in variables:
            raise ModelError(f"corrupt CTranslate2 model: variable {name!r} appears twice", source)
        variables[name] = array

    aliases: dict[str, str] = {}
    if cur.pos < len(data):  # older writers may end without an alias table
        (num_aliases,) = cur.unpack("<I", "the alias count")
        for index in range(num_aliases):
            alias = cur.string(f"the name of alias {index}")
            target = cur.string(f"the target of alias {alias!r}")
            aliases[alias] = target
    if cur.pos != len(data):
        raise ModelError(
            f"corrupt CTranslate2 model: {len(data) - cur.pos} unexpected bytes after the alias table", source
        )
    for alias, target in aliases.items():
        if target not in variables:
            raise ModelError(f"corrupt CTranslate2 model: alias {alias!r} points to missing {target!r}", source)
    return Ct2Model(spec=spec, revision=revision, variables=variables, aliases=aliases, bfloat16=frozenset(bf16))


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
