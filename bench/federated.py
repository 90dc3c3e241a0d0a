"""Federated fine-tuning with federated dropout aimed at critical or ambient layers (issue 21, item 3).

A trained model (tiny.en, a Conformer CTC folder, any family) is fine-tuned with FedAvg on Flower's simulation engine
(``speechprune.federated.flower``) on a domain split across clients by speaker (default: synthetic voices, one voice
one speaker, ``data.synth.voice_of``); a share of the speakers is held out, and every variant is scored on their
clips (and, beside them, on the out-of-domain suite ``english-ood``). Variants, each from the same starting weights
with the same rounds and local steps:

    dense       no fine-tuning (the starting point)
    none        plain FedAvg: every client gets the whole model
    critical    each client gets a sub-model without ``--rate`` of the units of the ``--layers`` most critical layers
    ambient     the same for the ``--layers`` most ambient layers (the ablation summary's whole-layer ranking)
    flat        every layer at the rate that drops as many parameters as ``ambient`` does

The table gives the share of unit-owned parameters dropped, the bytes sent down and up per client and round, and the
held-out WER. Results are appended to ``OUT/results.jsonl`` as each variant finishes; a rerun skips finished ones.

    python bench/federated.py --model whisper-tiny.en --ablation runs/ablation/summary.json --out runs/federated
    python bench/federated.py --model M --ablation S --out /tmp/fed --data synth:40 --rounds 1 --limit 4  # smoke test
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

VARIANTS = ("dense", "none", "critical", "ambient", "flat")


def _layers(summary: dict, aim: str, n: int, metric: str, method: str) -> set:
    from speechprune.federated.dropout import aimed_layers, layer_ranking

    return aimed_layers(layer_ranking(summary, metric, method), aim, n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--ablation", type=Path, required=True, help="an `analyze ablation` summary.json of --model")
    parser.add_argument("--metric", default="proxy", help="the ablation metric that ranks layers")
    parser.add_argument("--method", default="reinit", help="the ablation method that ranks layers")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="synth:600", help="the new domain's clips (a training-data spec)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--held-out", type=float, default=0.25, help="share of the speakers held out for scoring")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--layers", type=int, default=2, help="how many critical or ambient layers lose units")
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--limit", type=int, help="score only the first N held-out clips (a smoke test)")
    parser.add_argument("--ood-per-source", type=int, help="score the first N clips of each out-of-domain source")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import json

    import torch

    from speechprune.data.synth import voice_of
    from speechprune.errors import ConfigError
    from speechprune.evaluate.runner import evaluate_with_ood
    from speechprune.federated.clients import split_by_speaker
    from speechprune.federated.dropout import drop_plan, flat_rate
    from speechprune.federated.flower import FederatedSettings, run_federated
    from speechprune.io import append_jsonl, atomic_write_json, read_jsonl_tolerant
    from speechprune.models.adapters import adapter_for
    from speechprune.models.family import family_for_folder
    from speechprune.models.registry import resolve_model

    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    folder = resolve_model(args.model)
    family = family_for_folder(folder)
    model = family.load(folder)
    adapter = adapter_for(model)
    groups = adapter.unit_groups(model)
    summary = json.loads(args.ablation.read_text())
    utts = family.training_data(model, [args.data])
    try:
        parts, held, speakers = split_by_speaker(utts, lambda u: voice_of(u.id), args.clients, args.held_out)
    except ConfigError as e:
        raise SystemExit(f"{args.data}: {e}") from None
    atomic_write_json(args.out / "split.json", {"data": args.data, "speakers": {str(k): v for k, v in
                                                                                 speakers.items()},
                                                 "clips": [len(p) for p in parts], "held_out_clips": len(held)})
    held = held[: args.limit] if args.limit else held
    labeller = family.labeller(model, folder)
    client_batches = [labeller.reference_batches(p, args.batch_size) for p in parts]
    backend = family.backend(folder)

    ambient_plan = drop_plan(groups, _layers(summary, "ambient", args.layers, args.metric, args.method), args.rate, 0)
    aimed_share = ambient_plan.dropped_share(groups)
    done = {r["variant"] for r in read_jsonl_tolerant(args.out / "results.jsonl")}
    for variant in variants:
        if variant in done:
            continue
        layers, rate, rows = set(), args.rate, []
        student = copy.deepcopy(model)
        if variant in ("critical", "ambient"):
            layers = _layers(summary, variant, args.layers, args.metric, args.method)
        elif variant == "flat":
            layers = {(g.stack, g.layer) for g in groups}
            rate = flat_rate(groups, ambient_plan)
        if variant != "dense":
            settings = FederatedSettings(rounds=args.rounds, local_steps=args.local_steps, lr=args.lr,
                                         aim="none" if variant == "none" else variant, rate=rate)
            rows = run_federated(student, adapter_for(student), client_batches, settings, layers).rows
        metrics = evaluate_with_ood(backend.with_model(student, name=variant), held, args.out / variant / "eval",
                                    args.model, "synth-held-out", None, ood_per_source=args.ood_per_source,
                                    progress=False)
        record = {"variant": variant, "layers": sorted(f"{s}.{i}" for s, i in layers), "rate": rate,
                  "aimed_share": aimed_share, "rounds": args.rounds, "clients": args.clients,
                  "dropped_share": statistics.fmean(r["dropped_share"] for r in rows) if rows else 0.0,
                  "bytes_down_per_client_round": statistics.fmean(r["bytes_down"] for r in rows) if rows else 0,
                  "bytes_up_per_client_round": statistics.fmean(r["bytes_up"] for r in rows) if rows else 0,
                  "rows": rows, "wer": metrics["wer"], "cer": metrics["cer"],
                  "wer_ood": metrics.get("ood", {}).get("wer"), "macro_wer_ood": metrics.get("ood", {}).get("macro_wer")}
        append_jsonl(args.out / "results.jsonl", record)
        print(f"{variant}: dropped {100 * record['dropped_share']:.1f} %, "
              f"{record['bytes_down_per_client_round'] / 1e6:.1f} MB down per client and round, "
              f"held-out WER {100 * record['wer']:.2f} %", flush=True)
    _table(list(read_jsonl_tolerant(args.out / "results.jsonl")), args.out / "report.md")


def _table(records: list[dict], path: Path) -> None:
    from speechprune.io import atomic_write_text

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    lines = ["| dropout target | layers | share of unit parameters dropped | MB down / up per client and round | "
             "held-out WER % | CER % | english-ood WER % (mean) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: VARIANTS.index(r["variant"])):
        lines.append(f"| {r['variant']} | {', '.join(r['layers']) or '-'} | {pct(r['dropped_share'])} | "
                     f"{r['bytes_down_per_client_round'] / 1e6:.1f} / {r['bytes_up_per_client_round'] / 1e6:.1f} | "
                     f"{pct(r['wer'])} | {pct(r['cer'])} | {pct(r['wer_ood'])} ({pct(r['macro_wer_ood'])}) |")
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
