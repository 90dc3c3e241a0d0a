"""A short report of evaluated and benchmarked models: one Markdown table plus the same facts as JSON."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_json, atomic_write_text


def summary_rows(entries: list[dict]) -> list[dict]:
    """One flat row per (model, backend): accuracy next to speed, FLOPs and size."""
    rows = []
    for e in entries:
        m, b = e.get("metrics") or {}, e.get("bench") or {}
        for name, r in (b.get("backends") or {}).items():
            rows.append({
                "model": e["name"],
                "backend": name,
                # accuracy is measured with the primary backend only
                "wer": m.get("wer") if name == b.get("backend") else None,
                "cer": m.get("cer") if name == b.get("backend") else None,
                "n_utterances": m.get("n_utterances"),
                "latency_ms_median": r["latency_ms_median"],
                "latency_ratio": b["latency_ratio"][name],
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
    lines.append("| model | backend | WER % | CER % | latency ms (median) | ratio | encoder ms | decoder ms/token "
                 "| RTF | encoder GFLOP | params M | disk MB |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['backend']} | {_fmt(r['wer'] and 100 * r['wer'], '.2f')} "
            f"| {_fmt(r['cer'] and 100 * r['cer'], '.2f')} | {_fmt(r['latency_ms_median'], '.1f')} "
            f"| {_fmt(r['latency_ratio'], '.2f')}x | {_fmt(r['encoder_ms_median'], '.1f')} "
            f"| {_fmt(r['decoder_ms_per_token'], '.2f')} | {_fmt(r['rtf_median'], '.3f')} "
            f"| {_fmt(r['gflops_encoder'], '.2f')} | {_fmt(r['params_m'], '.2f')} | {_fmt(r['disk_mb'], '.1f')} |"
        )
    if env:
        lines += ["", f"Measured on {env.get('cpu_model')} with {env.get('threads')} threads, batch size 1, greedy; "
                      f"ratio = latency / the first backend's. speechprune {env.get('versions', {}).get('speechprune')}, "
                      f"torch {env.get('versions', {}).get('torch')}, git {env.get('git_revision')}."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, entries: list[dict], title: str) -> Path:
    """Write ``report.md`` and ``report.json`` into ``out_dir``; return the Markdown path."""
    out_dir = Path(out_dir)
    rows = summary_rows(entries)
    env = next((e["bench"].get("environment") for e in entries if e.get("bench")), None)
    md = out_dir / "report.md"
    atomic_write_text(md, to_markdown(title, rows, env))
    atomic_write_json(out_dir / "report.json", {"title": title, "rows": rows, "environment": env})
    return md
