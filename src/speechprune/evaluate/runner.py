"""Evaluate a backend on a list of utterances: resumable, incremental, through the backend's front end.

``DIR/hypotheses.jsonl`` gets one record per utterance as soon as its batch is decoded (failures included,
with their reason); ``DIR/run.json`` records the settings; ``DIR/metrics.json`` is written atomically at the
end from the hypotheses file. A rerun with the same ``DIR`` and settings skips what is already there and
ends with the same metrics as an uninterrupted run; other settings in the same ``DIR`` are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from ..data.audio import load_audio
from ..data.features import MAX_CLIP_SECONDS, FeatureFrontend, split_windows
from ..data.manifest import Utterance
from ..data.normalize import scoring_text
from ..errors import AudioError, ConfigError
from ..io import append_jsonl, atomic_write_json, read_jsonl_tolerant, repair_jsonl
from ..models.decoding import DecodeOptions
from .backends import Backend
from .metrics import bleu, char_errors, word_errors

HYPOTHESES = "hypotheses.jsonl"
METRICS = "metrics.json"
RUN = "run.json"


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def eval_settings(model: str, data: str, split: str | None, backend: str, options: DecodeOptions,
                  limit: int | None = None) -> dict:
    """What pins an evaluation run (``DIR/run.json``): a rerun into the same folder must match it to resume."""
    settings = {"model": model, "data": data, "split": split, "limit": limit, "backend": backend,
                "beam_size": options.beam_size, "language": options.language, "task": options.task}
    if options.lm is not None:  # shallow fusion: the LM (folder, weights' digest) and its weight and bonus
        settings["lm"] = {**options.lm.describe(), "weight": options.lm_weight, "bonus": options.lm_bonus}
    return settings


def claim_run_dir(out_dir: Path, settings: dict) -> None:
    """Record ``settings`` in ``DIR/run.json``, or check that an earlier run there used the same ones."""
    path = out_dir / RUN
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if isinstance(before, dict) and "weights" in settings and "weights" not in before:
            raise ConfigError("holds a run written without a weights fingerprint (an older speechprune), so resuming "
                              "it could mix two models; use another --out or delete it", out_dir)
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(settings) | set(before or {}) if (before or {}).get(k) != settings.get(k))
            raise ConfigError(f"holds a run with other settings ({', '.join(changed)}); use another --out", out_dir)
    else:
        atomic_write_json(path, settings)


@dataclass
class FeatureBatch:
    """One batch's windows through a front end, ready to decode by any backend that reads that front end (several
    models can share it): ``owners[i]`` is the utterance window ``i`` belongs to; ``errors`` holds the records of
    utterances whose audio failed."""

    utts: list[Utterance]
    owners: list[Utterance]
    features: np.ndarray | None  # the front end's array (log-mel [windows, n_mels, 3000]); None: no audio was read
    errors: dict[str, dict]
    frames: list[int] | None = None  # each window's real (unpadded) length in the front end's units (frames, samples)


def prepare_batch(frontend: FeatureFrontend, utts: list[Utterance]) -> FeatureBatch:
    """Read and window the batch's audio (:func:`split_windows`) and compute its features once, through
    ``frontend`` (``backend.frontend()``: a ``data.features`` front end, which also gives each window's length)."""
    errors: dict[str, dict] = {}
    owners, audios = [], []
    for u in utts:
        try:
            windows = split_windows(load_audio(u.audio, max_seconds=MAX_CLIP_SECONDS))
        except AudioError as e:
            errors[u.id] = {"id": u.id, "audio": str(u.audio), "error": str(e)}
            continue
        owners += [u] * len(windows)
        audios += windows
    frames = frontend.lengths(audios)
    return FeatureBatch(list(utts), owners, frontend(audios) if audios else None, errors, frames)


def decode_prepared(backend: Backend, batch: FeatureBatch, options: DecodeOptions, encoded=None) -> list[dict]:
    """Decode a prepared batch: one record per utterance, in order (a window's texts joined with a space).
    ``encoded``: the batch's encoder output, when the caller already has it (e.g. from a model with the same encoder)."""
    records = dict(batch.errors)
    if batch.features is not None:
        owners = batch.owners
        enc = backend.encode(batch.features, batch.frames) if encoded is None else encoded
        out = backend.decode(enc, [u.language for u in owners], [u.task for u in owners], options)
        gates = getattr(backend, "last_gates", None)  # a gated backend's [windows, M] 0/1 gates
        window_gates: dict[str, list[list[int]]] = {}
        if gates is not None:
            for u, row in zip(owners, gates.round().int().tolist()):
                window_gates.setdefault(u.id, []).append(row)
        texts: dict[str, list[str]] = {}
        tokens: dict[str, int] = {}
        langs: dict[str, str | None] = {}
        capped: set[str] = set()
        for u, toks, lang in zip(owners, out.tokens, out.languages):
            texts.setdefault(u.id, []).append(backend.decode_text(toks))
            tokens[u.id] = tokens.get(u.id, 0) + len(toks)
            langs.setdefault(u.id, lang)
            if backend.token_limited and len(toks) >= options.max_new_tokens:
                capped.add(u.id)
        for u in dict.fromkeys(owners):
            records[u.id] = {
                "id": u.id,
                "audio": str(u.audio),
                "language": langs[u.id],
                "task": u.task or options.task,
                "reference": u.translation if (u.task or options.task) == "translate" else u.text,
                "hypothesis": " ".join(t for t in texts[u.id] if t),
                "n_tokens": tokens[u.id],
                "n_windows": len(texts[u.id]),
                "runaway": u.id in capped,  # a window decoded to the token limit without end-of-text
            }
            if u.id in window_gates:  # the first window's gates (1 keep, 0 skip), the skip share over all windows
                rows = window_gates[u.id]
                records[u.id]["gates"] = "".join(map(str, rows[0]))
                records[u.id]["skip_share"] = 1.0 - float(np.mean(rows))
    return [records[u.id] for u in batch.utts]


def decode_batch(backend: Backend, frontend: FeatureFrontend, utts: list[Utterance], options: DecodeOptions) -> list[dict]:
    """Decode one batch; unreadable audio becomes a record with an ``error`` instead of a hypothesis.

    A clip longer than one 30 s window is cut into windows (:func:`split_windows`) that are decoded in the same
    batch; their texts are joined with a space.
    """
    return decode_prepared(backend, prepare_batch(frontend, utts), options)


def is_runaway(record: dict) -> bool:
    """Whether a hypothesis ran to the token limit without end-of-text (a decoding loop, mostly). Records written
    before the ``runaway`` field: one window that holds the default limit's worth of tokens."""
    if "runaway" in record:
        return bool(record["runaway"])
    return record.get("n_windows") == 1 and record.get("n_tokens", 0) >= DecodeOptions().max_new_tokens


def _score_by_source(records: list[dict], refs: list[str], hyps: list[str]) -> dict[str, dict]:
    """WER and CER per out-of-domain source (ids ``<source>/...``, :mod:`speechprune.data.sources`) when the records
    come from more than one; {} otherwise. A pooled WER is weighted by each source's words; the macro WER (their
    mean) is not, so a large source cannot hide a small one."""
    from ..data.sources import SOURCES

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        prefix = r["id"].partition("/")[0]
        groups.setdefault(prefix if prefix in SOURCES and "/" in r["id"] else "", []).append(i)
    if len(groups) < 2 or "" in groups:
        return {}
    out = {}
    for name, idx in groups.items():
        w = word_errors([refs[i] for i in idx], [hyps[i] for i in idx])
        c = char_errors([refs[i] for i in idx], [hyps[i] for i in idx])
        out[name] = {"wer": w.rate, "cer": c.rate, "n_scored": len(idx), "n_words": w.reference_length}
    return out


def _score_by_language_task(ok: list[dict]) -> dict[str, dict]:
    """One table per language and task (keys ``"<language>/<task>"``, e.g. ``es/transcribe``, ``es/translate``):
    WER and CER for transcribe (on :func:`~speechprune.data.normalize.scoring_text` of the record's language, so
    Spanish is scored without diacritics), BLEU for translate (against the English reference, raw text, as the
    pooled ``bleu``). {} when every record is English transcription, the one table the pooled figures already are."""
    groups: dict[str, list[dict]] = {}
    for r in ok:
        groups.setdefault(f"{r.get('language') or 'en'}/{r['task']}", []).append(r)
    if set(groups) <= {"en/transcribe"}:
        return {}
    out = {}
    for key, recs in sorted(groups.items()):
        if key.endswith("/translate"):
            pairs = [r for r in recs if r.get("reference")]
            out[key] = {"bleu": bleu([r["reference"] for r in pairs], [r["hypothesis"] for r in pairs]) if pairs
                        else None, "n_translated": len(pairs)}
            continue
        refs = [scoring_text(r["reference"], r["language"]) for r in recs]
        hyps = [scoring_text(r["hypothesis"], r["language"]) for r in recs]
        w, c = word_errors(refs, hyps), char_errors(refs, hyps)
        out[key] = {"wer": w.rate, "cer": c.rate, "n_scored": len(recs), "n_words": w.reference_length,
                    "n_chars": c.reference_length}
    return out


def score(records: list[dict]) -> dict:
    """Corpus metrics from hypothesis records (in utterance order). Deterministic: no timings in here.
    ``runaway`` counts the hypotheses that ran to the token limit and the word errors they hold: pruned models
    fail by looping, and those few utterances can hold most of a corpus WER."""
    failed = [{"id": r["id"], "audio": r["audio"], "error": r["error"]} for r in records if "error" in r]
    ok = [r for r in records if "error" not in r]
    asr = [r for r in ok if r["task"] == "transcribe"]
    refs = [scoring_text(r["reference"], r["language"]) for r in asr]
    hyps = [scoring_text(r["hypothesis"], r["language"]) for r in asr]
    w, c = word_errors(refs, hyps), char_errors(refs, hyps)
    loops = [i for i, r in enumerate(asr) if is_runaway(r)]
    loop_errors = word_errors([refs[i] for i in loops], [hyps[i] for i in loops]).errors if loops else 0
    metrics = {
        "wer": w.rate,
        "cer": c.rate,
        "n_utterances": len(records),
        "n_scored": len(asr),
        "n_words": w.reference_length,
        "word_errors": {"substitutions": w.substitutions, "deletions": w.deletions, "insertions": w.insertions},
        "n_failed": len(failed),
        "failed": failed,
        "runaway": {"utterances": len(loops), "word_errors": loop_errors},
    }
    by_source = _score_by_source(asr, refs, hyps)
    if by_source:
        metrics["by_source"] = by_source
        metrics["macro_wer"] = sum(v["wer"] for v in by_source.values()) / len(by_source)
    st = [r for r in ok if r["task"] == "translate" and r.get("reference")]
    if st:
        metrics["bleu"] = bleu([r["reference"] for r in st], [r["hypothesis"] for r in st])
        metrics["n_translated"] = len(st)
    by_language_task = _score_by_language_task(ok)
    if by_language_task:
        metrics["by_language_task"] = by_language_task
    gated = [r for r in ok if "gates" in r]
    if gated:
        metrics["gates"] = _gate_summary(gated)
    return metrics


def _gate_summary(records: list[dict]) -> dict:
    """A gated model's mean skip share and, per language and task, each gated module's keep share (in the
    module order of the run's ``settings.gates.modules``): the data of the gate heatmaps."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{r.get('language') or 'en'}/{r['task']}", []).append(r)
    by = {}
    for key, recs in sorted(groups.items()):
        keep = np.array([[int(c) for c in r["gates"]] for r in recs], dtype=float)
        by[key] = {"skip_share": float(np.mean([r["skip_share"] for r in recs])), "n": len(recs),
                   "keep": keep.mean(axis=0).round(4).tolist()}
    return {"skip_share": float(np.mean([r["skip_share"] for r in records])), "by_language_task": by}


def evaluate(
    backend: Backend,
    utterances: list[Utterance],
    out_dir: str | Path,
    options: DecodeOptions = DecodeOptions(),
    batch_size: int = 8,
    settings: dict | None = None,
    frontend: FeatureFrontend | None = None,
    progress: bool = True,
) -> dict:
    """Decode every utterance (resuming what ``out_dir`` already holds) and write ``metrics.json``. The settings
    pinned in ``run.json`` get the backend's ``fingerprint()`` of its weights, so a rerun resumes only the same model
    (re-pruning into the same model folder makes a new one). ``frontend``: default the backend's own
    (``backend.frontend()``)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ConfigError("utterance ids are not unique")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = getattr(backend, "fingerprint", None)  # what the backend runs: a resume must run the same weights
    settings = {**(settings or {}), "weights": fingerprint() if callable(fingerprint) else None}
    claim_run_dir(out_dir, settings)
    hyp_path = out_dir / HYPOTHESES
    repair_jsonl(hyp_path)
    wanted = set(ids)
    done = {r["id"]: r for r in read_jsonl_tolerant(hyp_path) if r.get("id") in wanted}
    todo = [u for u in utterances if u.id not in done]
    frontend = backend.frontend() if frontend is None else frontend
    with tqdm(total=len(utterances), initial=len(utterances) - len(todo), desc="eval", unit="utt",
              disable=not progress, dynamic_ncols=True) as bar:
        for batch in _batches(todo, batch_size):
            for rec in decode_batch(backend, frontend, batch, options):
                append_jsonl(hyp_path, rec)
                done[rec["id"]] = rec
            bar.update(len(batch))
    metrics = score([done[i] for i in ids])
    atomic_write_json(out_dir / METRICS, {**metrics, "settings": settings})
    return metrics


OOD_DATA = "english-ood"  # the pooled out-of-domain English suite (speechprune.data.sources)
OOD_DIR = "ood"


def wants_ood(data: str) -> bool:
    """Whether an evaluation on ``data`` gets the out-of-domain suite beside it: always, unless ``data`` is itself
    one of its sources (or the pooled suite)."""
    from ..data.sources import SET_NAMES

    return data not in SET_NAMES


def evaluate_ood(backend: Backend, model: str, out_dir: str | Path, options: DecodeOptions = DecodeOptions(),
                 batch_size: int = 8, per_source: int | None = None, progress: bool = True) -> dict:
    """The pooled out-of-domain suite through ``backend`` into ``out_dir`` (resumable like ``evaluate``): the
    figure every in-domain WER is shown beside, with WER per source (``by_source``) and their mean (``macro_wer``).
    ``per_source`` keeps only the first N utterances of each source (a quick look, not a result)."""
    from ..data.datasets import load_dataset
    from ..data.sources import source_of

    utts = load_dataset(OOD_DATA)
    if per_source is not None:
        kept, seen = [], {}
        for u in utts:
            src = source_of(u.id)
            seen[src] = seen.get(src, 0) + 1
            if seen[src] <= per_source:
                kept.append(u)
        utts = kept
    settings = eval_settings(model, OOD_DATA, None, backend.name, options, per_source)
    return evaluate(backend, utts, out_dir, options, batch_size=batch_size, settings=settings, progress=progress)


def evaluate_with_ood(backend: Backend, utts: list, out_dir: str | Path, model: str, data: str, split: str | None,
                      options: DecodeOptions = DecodeOptions(), limit: int | None = None,
                      ood_per_source: int | None = None, progress: bool = True) -> dict:
    """In-domain metrics of ``backend`` on ``utts`` (``data``/``split``, the first ``limit`` if set) into ``out_dir``,
    with the out-of-domain suite's under ``"ood"`` (into ``out_dir/ood``) unless ``data`` is itself one of its
    sources: the pair every evaluation of a pruned or trained model reports. Both resume like :func:`evaluate`."""
    out_dir = Path(out_dir)
    metrics = evaluate(backend, utts, out_dir, options, settings=eval_settings(model, data, split, backend.name,
                                                                              options, limit), progress=progress)
    if wants_ood(data):
        metrics = {**metrics, "ood": evaluate_ood(backend, model, out_dir / OOD_DIR, options,
                                                  per_source=ood_per_source, progress=progress)}
    return metrics


def ood_fields(metrics: dict, suffix: str = "") -> dict:
    """The out-of-domain half of :func:`evaluate_with_ood`'s metrics as flat record fields (``wer_ood<suffix>``,
    its mean of sources, loops, per-source WER); empty when there is none."""
    ood = metrics.get("ood")
    if not ood:
        return {}
    return {f"wer_ood{suffix}": ood["wer"], f"macro_wer_ood{suffix}": ood.get("macro_wer"),
            f"runaway_ood{suffix}": ood["runaway"]["utterances"],
            f"wer_ood_by_source{suffix}": {k: v["wer"] for k, v in (ood.get("by_source") or {}).items()}}
