"""A compressed checkpoint for unstructured-sparse models, and what it saves on disk.

Folder layout: what the family's ``save_config`` writes (a Hugging Face family: ``config.json`` with the
structure, generation config, processor files; ``models.ctc``: ``speechprune_ctc.json``), with
``model.sparse.safetensors`` in place of ``model.safetensors``. Each tensor
of two or more dimensions is stored in the layout that takes fewest bytes (or the one asked for):

- ``dense``: the tensor as is (``NAME``);
- ``bitmask``: one bit per entry, packed little-endian into uint8 (``NAME.__mask__``), plus the nonzero values in
  row-major order (``NAME.__values__``): ``ceil(n / 8) + nnz * value_bytes``;
- ``csr``: on the ``[rows, -1]`` view, row pointers (int32, ``NAME.__indptr__``), column indices (int16 when the
  row is at most 32767 wide, else int32, ``NAME.__indices__``) and values: ``4 (rows + 1) + nnz * (index_bytes +
  value_bytes)``.

Vectors (biases, norms) stay dense. ``values="float16"`` stores every floating tensor (dense ones too) in fp16 and
the loader casts back: then outputs match the model with fp16-rounded weights, not the fp32 one. The layouts and
original dtypes are listed in the safetensors header metadata (``speechprune_sparse``, JSON). Nothing in the file
is executed. :func:`speechprune.models.checkpoint.load_pruned` (hence ``load_whisper`` and every backend) reads such
a folder and rebuilds the exact dense tensors.

Honest accounting: with fp32 values the bitmask layout beats dense from sparsity ``1/32`` (3.1 %) on, CSR with int16
indices from ``1/3`` (:func:`crossover_sparsity`); a masked model still runs dense kernels, so the format saves disk
and download, never compute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from ..io import check_output_dir, staged_dir

SPARSE_FILE = "model.sparse.safetensors"
META_KEY = "speechprune_sparse"
FORMAT = 1
LAYOUTS = ("dense", "bitmask", "csr")
Layout = Literal["auto", "dense", "bitmask", "csr"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_bytes(shape: tuple[int, ...], nnz: int, value_bytes: int) -> dict[str, int]:
    """Bytes of a tensor's payload in each layout (header bytes aside). A pure function."""
    n = math.prod(shape)
    rows = shape[0] if shape else 1
    width = n // rows if rows else 0
    index_bytes = 2 if width <= 32767 else 4
    return {"dense": n * value_bytes, "bitmask": math.ceil(n / 8) + nnz * value_bytes,
            "csr": 4 * (rows + 1) + nnz * (index_bytes + value_bytes)}


def crossover_sparsity(layout: str = "bitmask", value_bytes: int = 4, dense_bytes: int = 4,
                       index_bytes: int = 2) -> float:
    """The sparsity above which ``layout`` (values of ``value_bytes``) takes fewer bytes than a dense tensor of
    ``dense_bytes`` per entry, for a large tensor (row pointers neglected). A pure function."""
    per_entry = {"bitmask": (1 / 8, value_bytes), "csr": (0.0, index_bytes + value_bytes)}[layout]
    fixed, per_nonzero = per_entry
    return max(0.0, 1.0 - (dense_bytes - fixed) / per_nonzero)


def _unique_state(model) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (first name kept; the loader re-ties, as ``save_pretrained`` does)."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = t.detach().cpu().contiguous()
    return out


def encode_state(state: dict[str, torch.Tensor], layout: Layout = "auto", values: str = "float32"
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)``: the safetensors entries and the per-tensor layout record for ``state``."""
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"unknown sparse layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    if values not in ("float32", "float16"):
        raise ConfigError(f"values must be float32 or float16, got {values!r}")
    vdtype = _DTYPES[values]
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, t in state.items():
        floating = t.is_floating_point()
        stored = t.to(vdtype) if floating else t
        entry = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        chosen = "dense"
        if floating and t.dim() >= 2 and t.numel():
            nnz = int(stored.count_nonzero())
            sizes = layout_bytes(tuple(t.shape), nnz, stored.element_size())
            chosen = min(sizes, key=sizes.get) if layout == "auto" else layout
            entry.update(nnz=nnz, bytes=sizes[chosen], dense_bytes=sizes["dense"])
        entry["layout"] = chosen
        if chosen == "dense":
            tensors[name] = stored
        elif chosen == "bitmask":
            flat = stored.reshape(-1)
            keep = flat != 0
            tensors[f"{name}.__mask__"] = torch.from_numpy(np.packbits(keep.numpy(), bitorder="little"))
            tensors[f"{name}.__values__"] = flat[keep].clone()
        else:  # csr
            rows = stored.reshape(t.shape[0], -1)
            crow, col, val = _csr(rows)
            entry["index"] = _dtype_name(col.dtype)
            tensors[f"{name}.__indptr__"], tensors[f"{name}.__indices__"], tensors[f"{name}.__values__"] = crow, col, val
        meta[name] = entry
    return tensors, {"format": FORMAT, "values": values, "tensors": meta}


def _csr(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    nz = rows != 0
    crow = torch.zeros(rows.shape[0] + 1, dtype=torch.int32)
    crow[1:] = nz.sum(dim=1).cumsum(0).to(torch.int32)
    col = nz.nonzero()[:, 1]
    col = col.to(torch.int16 if rows.shape[1] <= 32767 else torch.int32)
    return crow, col, rows[nz].clone()


def decode_state(tensors: dict[str, torch.Tensor], meta: dict, source: str | Path | None = None
                 ) -> dict[str, torch.Tensor]:
    """The dense state dict back from :func:`encode_state`'s output (values cast to their original dtype)."""
    if meta.get("format") != FORMAT:
        raise ModelError(f"unknown sparse checkpoint format {meta.get('format')!r} (this version reads {FORMAT})", source)
    out = {}
    try:
        for name, e in meta["tensors"].items():
            shape, dtype = tuple(e["shape"]), _DTYPES.get(e["dtype"])
            n = math.prod(shape)
            if e["layout"] == "dense":
                t = tensors[name]
                out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
                continue
            vals = tensors[f"{name}.__values__"].to(dtype)
            if e["layout"] == "bitmask":
                keep = np.unpackbits(tensors[f"{name}.__mask__"].numpy(), count=n, bitorder="little").astype(bool)
                flat = torch.zeros(n, dtype=dtype)
                flat[torch.from_numpy(keep)] = vals
                out[name] = flat.view(shape)
            elif e["layout"] == "csr":
                crow = tensors[f"{name}.__indptr__"].long()
                col = tensors[f"{name}.__indices__"].long()
                n_rows = shape[0]
                dense = torch.zeros(n_rows, n // n_rows if n_rows else 0, dtype=dtype)
                row = torch.repeat_interleave(torch.arange(n_rows), crow[1:] - crow[:-1])
                dense[row, col] = vals
                out[name] = dense.view(shape)
            else:
                raise ModelError(f"{name}: unknown layout {e['layout']!r}", source)
    except KeyError as e:
        raise ModelError(f"sparse checkpoint is missing tensor {e.args[0]!r}", source) from None
    return out


def save_sparse(model, processor_or_tokenizer_folder, out_dir: str | Path, *, layout: Layout = "auto",
                values: str = "float32", overwrite: bool = False) -> dict:
    """Write ``model`` to ``out_dir`` (atomically) in the compressed format; returns a record: bytes of the
    weights file, the layout count and, per tensor, layout and bytes. ``processor_or_tokenizer_folder`` as in
    :func:`speechprune.models.checkpoint.save_pruned`."""
    from safetensors.torch import save_file

    from .family import family_for

    out = Path(out_dir)
    check_output_dir(out, overwrite)
    source = processor_or_tokenizer_folder
    if isinstance(source, (str, Path)) and not Path(source).is_dir():
        raise ConfigError("processor folder does not exist", source)
    tensors, meta = encode_state(_unique_state(model), layout, values)
    with staged_dir(out) as tmp:
        save_file(tensors, str(tmp / SPARSE_FILE), metadata={META_KEY: json.dumps(meta)})
        family_for(model).save_config(model, source, tmp)
    counts = {k: sum(1 for e in meta["tensors"].values() if e["layout"] == k) for k in LAYOUTS}
    return {"folder": str(out), "file_bytes": (out / SPARSE_FILE).stat().st_size, "values": values,
            "layout": layout, "layouts": counts,
            "tensors": {k: {"layout": e["layout"], "bytes": e.get("bytes")} for k, e in meta["tensors"].items()}}


def read_sparse_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a ``model.sparse.safetensors`` file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except KeyError:
        raise ModelError(f"not a speechprune sparse checkpoint (no {META_KEY} metadata)", path) from None
    except Exception as e:
        raise ModelError(f"cannot read sparse weights: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                         path) from e
    return decode_state(tensors, meta, path)


def serialized_bytes(model, layout: Layout = "auto", values: str = "float32") -> int:
    """The size of the weights file the format writes for ``model`` (serialized in memory, header included)."""
    from safetensors.torch import save

    tensors, meta = encode_state(_unique_state(model), layout, values)
    return len(save(tensors, metadata={META_KEY: json.dumps(meta)}))


def dense_bytes(model, dtype: torch.dtype | None = None) -> int:
    """The size of a plain safetensors file of ``model``'s weights (tied duplicates once), optionally cast."""
    from safetensors.torch import save

    state = _unique_state(model)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return len(save(state))


def size_report(model) -> dict:
    """Weights-file bytes of ``model`` serialized dense and in the compressed format (``auto`` layouts), each with
    fp32 and fp16 values (compare fp16 with fp16), and the layouts chosen for fp32."""
    from safetensors.torch import save

    state = _unique_state(model)
    out = {}
    for values, suffix in (("float32", ""), ("float16", "_fp16")):
        tensors, meta = encode_state(state, "auto", values)
        out[f"sparse{suffix}_bytes"] = len(save(tensors, metadata={META_KEY: json.dumps(meta)}))
        if not suffix:
            out["layouts"] = {k: sum(1 for e in meta["tensors"].values() if e["layout"] == k) for k in LAYOUTS}
    out["dense_bytes"] = dense_bytes(model)
    out["dense_fp16_bytes"] = dense_bytes(model, torch.float16)
    return out
