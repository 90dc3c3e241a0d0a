"""A short report of evaluated and benchmarked models: one Markdown table plus the same facts as JSON."""

from __future__ import annotations

from pathlib import Path

from ..bench.environment import machine_line
from ..io import atomic_write_json, atomic_write_text


def summary_rows(bench: dict, metrics: dict[str, dict]) -> list[dict]:
    """One flat row per benchmarked backend: accuracy (where ``metrics`` has that backend) next to speed, FLOPs
    and size. ``bench`` is a :func:`speechprune.bench.latency.benchmark` record."""
    rows = []
    for name, r in bench["backends"].items():
        m = metrics.get(name) or {}
        ood = m.get("ood") or {}
        rows.append({
            "backend": name,
            "wer": m.get("wer"),
            "cer": m.get("cer"),
            "n_utterances": m.get("n_utterances"),
            "wer_ood": ood.get("wer"),
            "macro_wer_ood": ood.get("macro_wer"),
            "n_utterances_ood": ood.get("n_utterances"),
            "latency_ms_median": r["latency_ms_median"],
            "latency_ratio": bench["latency_ratio"][name],
            "encoder_ms_median": r["encoder_ms_median"],
            "decoder_ms_per_token": r["decoder_ms_per_token"],
            "rtf_median": r["rtf_median"],
            "gflops_encoder": r["flops_encoder"] / 1e9,
            "params_m": r["params"] / 1e6,
            "disk_mb": r["disk_bytes"] / 1e6,
        })
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(title: str, rows: list[dict], env: dict | None) -> str:
    lines = [f"# {title}", ""]
    lines.append("| backend | WER % | out-of-domain WER % (mean of sources) | CER % | latency ms (median) | ratio "
                 "| encoder ms | decoder ms/token | RTF | encoder GFLOP | params M | disk MB |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ood = "-" if r.get("wer_ood") is None else (
            f"{100 * r['wer_ood']:.2f} ({_fmt(r.get('macro_wer_ood') and 100 * r['macro_wer_ood'], '.2f')})")
        lines.append(
            f"| {r['backend']} | {_fmt(r['wer'] and 100 * r['wer'], '.2f')} | {ood} "
            f"| {_fmt(r['cer'] and 100 * r['cer'], '.2f')} | {_fmt(r['latency_ms_median'], '.1f')} "
            f"| {_fmt(r['latency_ratio'], '.2f')}x | {_fmt(r['encoder_ms_median'], '.1f')} "
            f"| {_fmt(r['decoder_ms_per_token'], '.2f')} | {_fmt(r['rtf_median'], '.3f')} "
            f"| {_fmt(r['gflops_encoder'], '.2f')} | {_fmt(r['params_m'], '.2f')} | {_fmt(r['disk_mb'], '.1f')} |"
        )
    if env:
        lines += ["", f"Measured on {env.get('cpu_model')} with {env.get('threads')} threads, batch size 1, greedy; "
                      f"ratio = latency / the first backend's. speechprune {env.get('versions', {}).get('speechprune')}, "
                      f"torch {env.get('versions', {}).get('torch')}, git {env.get('git_revision')}.",
                  "", f"Machine and kernels: {machine_line(env)}.",
                  "", "WER is on the in-domain set named in the title; out-of-domain WER on english-ood: real English "
                      "speakers and recordings that no recovery, calibration or sweep reads (speechprune.data.sources), "
                      "pooled over words and, in brackets, the mean of the per-source WERs."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, bench: dict, metrics: dict[str, dict], title: str) -> Path:
    """Write ``report.md`` and ``report.json`` into ``out_dir``; return the Markdown path."""
    out_dir = Path(out_dir)
    rows = summary_rows(bench, metrics)
    env = bench.get("environment")
    md = out_dir / "report.md"
    atomic_write_text(md, to_markdown(title, rows, env))
    atomic_write_json(out_dir / "report.json", {"title": title, "rows": rows, "environment": env, "metrics": metrics})
    return md
