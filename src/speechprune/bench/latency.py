"""Latency of one backend on real utterances, split into front end, encoder and decoder.

Batch size 1, as a user transcribing one clip sees it. Each utterance is timed ``repeats`` times and its
per-stage median kept; the report gives medians and 90th percentiles over utterances. Audio file reading is
not timed (it is the same for every backend); the front end (log-mel features, a normalized waveform) is. Backends
timed side by side read the same front end (``backend.frontend()``), unless each is asked to read its own.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..data.audio import load_audio
from ..data.features import WINDOW_SECONDS, FeatureFrontend, real_frames
from ..data.manifest import Utterance
from ..errors import AudioError, ConfigError
from ..evaluate.backends import Backend, FasterWhisper
from ..models.decoding import DecodeOptions
from .environment import ResourceMonitor, environment


@dataclass(frozen=True)
class BenchOptions:
    warmup: int = 2  # untimed runs before measuring
    repeats: int = 3  # timed runs per utterance; the median is kept
    max_utterances: int = 20  # utterances timed (the first ones of the data set, in order)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.max_utterances < 1:
            raise ConfigError("bench needs warmup >= 0, repeats >= 1 and max_utterances >= 1")


def _time_once(backend: Backend, frontend: FeatureFrontend, audio: np.ndarray, utt: Utterance,
               options: DecodeOptions) -> dict:
    t0 = time.perf_counter()
    feats = frontend([audio])
    t1 = time.perf_counter()
    enc = backend.encode(feats, frontend.lengths([audio]))
    backend.synchronize()
    t2 = time.perf_counter()
    # CTranslate2 decodes in one call: it times its first step apart only when asked (whatever the backend's name)
    kw = {"time_first_step": True} if isinstance(backend, FasterWhisper) else {}
    dec = backend.decode(enc, [utt.language], [utt.task], options, **kw)
    st = dec.stats
    decoder_s = st.first_step_s + st.later_steps_s
    return {
        "features_ms": (t1 - t0) * 1e3,
        "encoder_ms": (t2 - t1) * 1e3,
        "decoder_ms": decoder_s * 1e3,
        "decoder_first_step_ms": st.first_step_s * 1e3,
        "decoder_ms_per_token": st.later_steps_s / st.later_steps * 1e3 if st.later_steps else None,
        "lm_ms": st.lm_s * 1e3,  # shallow fusion: the LM's share of decoder_ms
        "latency_ms": (t1 - t0) * 1e3 + (t2 - t1) * 1e3 + decoder_s * 1e3,
        "n_tokens": len(dec.tokens[0]) + 1,  # + end-of-text
        "language": dec.languages[0],
        "task": utt.task or options.task,
    }


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _p90(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.percentile(xs, 90)) if xs else None


def _summary(backend: Backend, rows: list[dict]) -> dict:
    ms_per_tok = [r["decoder_ms_per_token"] for r in rows]
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    return {
        "backend": backend.name,
        "n_utterances": len(rows),
        "latency_ms_median": _median(col("latency_ms")),
        "latency_ms_p90": _p90(col("latency_ms")),
        "features_ms_median": _median(col("features_ms")),
        "features_ms_p90": _p90(col("features_ms")),
        "encoder_ms_median": _median(col("encoder_ms")),
        "encoder_ms_p90": _p90(col("encoder_ms")),
        "decoder_ms_median": _median(col("decoder_ms")),
        "decoder_first_step_ms_median": _median(col("decoder_first_step_ms")),
        "lm_ms_median": _median(col("lm_ms")),
        "decoder_ms_per_token": _median(ms_per_tok),
        "decoder_ms_per_token_p90": _p90(ms_per_tok),
        "tokens_median": _median(col("n_tokens")),
        "rtf_median": _median(col("rtf")),
        **backend.flops_record(rows),  # the backend's own cost model (its family's FLOP count)
        "params": backend.params,
        "disk_bytes": backend.disk_bytes,
        "numerics": getattr(backend, "numerics", None),  # the dtype of each part, and why (models.precision)
        "utterances": rows,
    }


def _decode_record(options: DecodeOptions) -> dict:
    """How a backend searched: beam size and, with shallow fusion, the LM's folder, weight and bonus."""
    return {"beam_size": options.beam_size, "lm": options.lm.folder if options.lm is not None else None,
            "lm_weight": options.lm_weight, "lm_bonus": options.lm_bonus}


def benchmark(backends: list[Backend], utterances: list[Utterance],
              options: DecodeOptions | dict[str, DecodeOptions] = DecodeOptions(),
              bench: BenchOptions = BenchOptions(), frontend: FeatureFrontend | None = None,
              threads: int | None = None, progress: bool = True, own_frontends: bool = False) -> dict:
    """Time several backends side by side on the first ``bench.max_utterances`` readable utterances, each decoding
    with ``options`` (or ``options[backend.name]``: one recognizer searched several ways, with and without an LM).

    Runs are interleaved (utterance by utterance, repeat by repeat, backend by backend) so that a change in
    machine load hits every backend alike. The first backend is the primary one: its figures are also the
    record's top-level keys, and ``latency_ratio`` gives every backend's median latency divided by the primary's.
    Every backend reads the same front end (``backend.frontend()``; backends whose front ends differ are refused);
    ``frontend`` overrides it. With ``own_frontends`` each backend is timed on its own front end instead (a peer that
    computes its own features from the waveform, like OpenVINO GenAI's pipeline, beside backends that read the shared
    log-mel: each pays for its own features in ``features_ms``). Each row records the clip's ``samples`` and its
    log-mel ``frames``.
    """
    if not backends:
        raise ConfigError("no backend to benchmark")
    if len({b.name for b in backends}) != len(backends):
        raise ConfigError("the same backend is named twice")
    if isinstance(options, dict):
        missing = [b.name for b in backends if b.name not in options]
        if missing:
            raise ConfigError(f"no decoding options for {', '.join(missing)}")
    opts = {b.name: options[b.name] if isinstance(options, dict) else options for b in backends}
    fronts = [b.frontend() for b in backends]
    if frontend is None and not own_frontends and any(f != fronts[0] for f in fronts[1:]):
        raise ConfigError("backends read different front ends (" + ", ".join(
            f"{b.name}: {f!r}" for b, f in zip(backends, fronts)) + "); time them in separate runs")
    front_of = {b.name: f if frontend is None else frontend for b, f in zip(backends, fronts)}
    clips, skipped = [], []
    for u in utterances:
        if len(clips) == bench.max_utterances:
            break
        try:
            clips.append((u, load_audio(u.audio, max_seconds=WINDOW_SECONDS)))
        except AudioError as e:
            skipped.append({"id": u.id, "error": str(e)})
    if not clips:
        raise ConfigError("no readable utterance to benchmark")
    rows: dict[str, list[dict]] = {b.name: [] for b in backends}
    with ResourceMonitor() as mon:
        for i in range(bench.warmup):
            u, a = clips[i % len(clips)]
            for b in backends:
                _time_once(b, front_of[b.name], a, u, opts[b.name])
        for u, a in tqdm(clips, desc="bench", unit="utt", disable=not progress, dynamic_ncols=True):
            runs: dict[str, list[dict]] = {b.name: [] for b in backends}
            for _ in range(bench.repeats):
                for b in backends:
                    runs[b.name].append(_time_once(b, front_of[b.name], a, u, opts[b.name]))
            for b in backends:
                rs = runs[b.name]
                row = {k: _median([r[k] for r in rs]) for k in rs[0] if k.endswith("ms") or k.endswith("token")}
                prompt = getattr(getattr(b, "vocab", None), "prompt", None)  # a CTC model has no decoder prompt
                row.update(id=u.id, duration_s=len(a) / 16000, n_tokens=rs[0]["n_tokens"], samples=len(a),
                           frames=real_frames(len(a)), positions=getattr(b, "last_positions", None),
                           prompt_len=len(prompt(rs[0]["language"], rs[0]["task"])) if prompt else 0)
                row["rtf"] = row["latency_ms"] / 1e3 / row["duration_s"]
                rows[b.name].append(row)

    per_backend = {b.name: {**_summary(b, rows[b.name]), "decode": _decode_record(opts[b.name])} for b in backends}
    primary = per_backend[backends[0].name]
    return {
        **{k: v for k, v in primary.items() if k != "utterances"},
        "latency_ratio": {name: r["latency_ms_median"] / primary["latency_ms_median"] for name, r in per_backend.items()},
        "warmup": bench.warmup,
        "repeats": bench.repeats,
        "beam_size": opts[backends[0].name].beam_size,
        "audio_s_median": _median([len(a) / 16000 for _, a in clips]),
        "peak_rss_bytes": mon.peak_rss_bytes,
        "other_cpu_load": mon.other_cpu_load,
        "skipped": skipped,
        "backends": per_backend,
        "environment": environment(threads),
    }
