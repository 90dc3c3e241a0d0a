"""Pruning a language model every way (issue 19, item 4): the trained Whisper-BPE LM cut by each method to three
sizes, each scored by test perplexity, LM time per token and tiny.en's asterisk test WER under shallow fusion.

Variants, ``METHOD@R`` with ``R`` the share removed (0.25, 0.5, 0.75) of what the method targets (every attention
and FFN weight of the 4 layers; the tied embedding, most of a small LM's weights, is left to all of them alike):

    magnitude-unstructured, taylor-unstructured   one-shot, no fine-tuning (``speechprune sparsify``)
    magnitude-unstructured-ft        one-shot, then fine-tuning with the pruned weights held at zero (IMP, 1 round)
    magnitude-unstructured-imp       incremental: 3 rounds of IMP, fine-tuning after each, no rewinding
    magnitude-structured, taylor-structured   heads and FFN neurons, share R of each per layer, one step, fine-tuned
    taylor-structured-incr           the same in 3 steps, fine-tuning after each
    layers                           whole layers (R of the 4: 1, 2 or 3), by Taylor importance, fine-tuned
    lowrank, lowrank-incr            truncated SVD of every projection to 1 - R of its parameters: one step, or 3
                                     steps whose ranks shrink step by step, fine-tuned after each
    scratch                          a model of the structured cut's parameter count (a narrower FFN) trained from
                                     scratch on the same text for the dense recipe's steps

plus ``dense`` (the LM itself) and ``no-lm`` (tiny.en beam search without an LM). Fine-tuning is the same budget
everywhere (``--ft-steps`` steps of ``--ft-batch`` lines of english-text train); calibration reads english-text dev.
Perplexity is on english-text test (``--ppl-lines`` lines spread over it); fused WER on the first ``--wer-clips``
asterisk test clips and, beside it, the first ``--ood-per-source`` clips of each out-of-domain source
(``english-ood``), at one LM weight and bonus for every variant (tuned once for the dense LM on asterisk dev:
``--weight``/``--bonus``), with the LM's share of the decoding time. Results are appended to ``OUT/results.jsonl`` as
each variant finishes; a rerun skips finished variants and resumes unfinished runs and evaluations.

    python bench/lm_pruning.py --lm runs/lm/whisper-bpe/model --out runs/lm-pruning [--variants a,b] [--threads 1]
    python bench/lm_pruning.py --lm LM --out /tmp/lmp --limit 8 --ft-steps 2   # a smoke test, not a result
    python bench/lm_pruning.py --lm LM --out runs/lm-pruning --executor ray     # variants on Ray workers
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from speechprune.scale.executor import add_executor_arguments, executor_from_arguments, run_jobs

RECOGNIZER = "whisper-tiny.en"
SHARES = (0.25, 0.5, 0.75)
METHODS = ("magnitude-unstructured", "taylor-unstructured", "magnitude-unstructured-ft", "magnitude-unstructured-imp",
           "magnitude-structured", "taylor-structured", "taylor-structured-incr", "layers", "lowrank", "lowrank-incr",
           "scratch")


def variant_names() -> list[str]:
    return ["dense", "no-lm", *[f"{m}@{r:g}" for m in METHODS for r in SHARES]]


def _calibration(limit: int | None) -> dict:
    return {"data": ["english-text:dev"], "utterances": limit or 256, "batch_size": 16}


def _recovery(steps: int, batch: int, limit: int | None) -> dict:
    return {"data": ["english-text:train"], "max_utterances": (limit or 200) * batch, "steps": steps,
            "batch_size": batch, "lr": 3e-4, "kl_weight": 0.0}


def run_variant(name: str, lm: Path, out: Path, args) -> Path:
    """Prune (or train) the variant's model into ``out/<name>`` (resumable) and return its folder."""
    from speechprune.prune.lowrank_recipe import parse_lowrank_recipe
    from speechprune.prune.lowrank_run import run_lowrank
    from speechprune.prune.recipe import parse_recipe
    from speechprune.prune.run import run_prune
    from speechprune.prune.run_unstructured import run_sparsify
    from speechprune.prune.runner import final_model_dir
    from speechprune.prune.sparse_recipe import parse_sparsify_recipe

    method, share = name.split("@")
    r = float(share)
    folder = out / "models" / name
    cal, rec = _calibration(args.limit), _recovery(args.ft_steps, args.ft_batch, args.limit)
    if method.endswith("-unstructured") or method.startswith("magnitude-unstructured-"):
        recipe: dict = {"criterion": method.split("-")[0], "sparsity": r, "components": ["self_attn", "ffn"],
                        "calibration": cal}
        if method.endswith("-ft") or method.endswith("-imp"):
            recipe["imp"] = {"rounds": 3 if method.endswith("-imp") else 1, "rewind": "none", "recovery": rec}
        run_sparsify(str(lm), parse_sparsify_recipe(recipe), folder, progress=False)
        return folder / "model"
    if method == "scratch":
        return train_scratch(lm, out, r, args)
    if method.startswith("lowrank"):
        steps = 3 if method.endswith("-incr") else 1
        recipe = {"method": "svd", "target": {"params": 1 - r}, "sites": {"components": ["self_attn", "ffn"]},
                  "schedule": {"steps": steps}, "recovery": rec}
        run_lowrank(str(lm), parse_lowrank_recipe(recipe), folder, progress=False)
        return final_model_dir(folder)
    if method == "layers":
        targets = [{"stack": "decoder", "n_layers": round(r * 4)}]
        criterion = "taylor"
    else:
        targets = [{"stack": "decoder", "kind": "ffn", "sparsity": r},
                   {"stack": "decoder", "kind": "self_attn", "sparsity": r}]
        criterion = method.split("-")[0]
    recipe = {"criterion": criterion, "calibration": cal, "targets": targets, "recovery": rec,
              "schedule": {"steps": 3 if method.endswith("-incr") else 1}}
    run_prune(str(lm), parse_recipe(recipe), folder, progress=False)
    return final_model_dir(folder)


def train_scratch(lm: Path, out: Path, r: float, args) -> Path:
    """An LM with the dense one's recipe but an FFN narrow enough to have the parameters of the structured cut at
    share ``r`` (heads and FFN neurons), trained from scratch for the recipe's steps (``--limit``: 2 steps)."""
    from speechprune.models.lm import load_lm
    from speechprune.train.lm import train_lm
    from speechprune.train.recipe import load_train_recipe

    dense = load_lm(lm)
    cfg = dense.config
    attn = 4 * cfg.d_model * cfg.d_model  # q, k, v, o weights per layer
    removed = r * (attn + 2 * cfg.d_model * cfg.ffn_dim)  # what the structured cut at r removes per layer
    ffn_dim = max(8, round(cfg.ffn_dim - removed / (2 * cfg.d_model)))
    recipe = load_train_recipe(args.scratch_recipe)
    recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"ffn_dim": ffn_dim}),
                                       **({"steps": 2, "eval_every": 1} if args.limit else {})})
    folder = out / "models" / f"scratch@{r:g}"
    train_lm(recipe, folder, progress=False)
    return folder / "model"


def lm_ms_per_token(folder: Path, beams: int = 4, tokens: int = 48, repeats: int = 3) -> float:
    """Median milliseconds of one cached step of ``beams`` rows (a beam search's LM step), over ``tokens`` steps
    from an empty cache, ``repeats`` times."""
    import torch

    from speechprune.models.lm import load_lm

    model = load_lm(folder)
    ids = torch.zeros((beams, 1), dtype=torch.long)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            cache = None
            for _ in range(tokens):
                t0 = time.perf_counter()
                _, cache = model.step(ids, cache)
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def fused_wer(lm_folder: Path | None, label: str, out: Path, args) -> dict:
    """tiny.en beam search (``--beam``) on the first ``--wer-clips`` asterisk test clips, fused with the LM in
    ``lm_folder`` (None: no LM), and the first ``--ood-per-source`` clips of each out-of-domain source; WER of
    each, seconds per asterisk clip and the LM's share of them."""
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.backends import load_backend
    from speechprune.evaluate.runner import OOD_DIR, eval_settings, evaluate, evaluate_ood
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.fusion import load_fusion_lm
    from speechprune.models.registry import resolve_model

    be = load_backend(RECOGNIZER, "torch", threads=args.threads)
    fusion = None if lm_folder is None else load_fusion_lm(lm_folder, resolve_model(RECOGNIZER))
    options = DecodeOptions(beam_size=args.beam, lm=fusion, lm_weight=args.weight if fusion else 0.0,
                            lm_bonus=args.bonus if fusion else 0.0)
    n = args.limit or args.wer_clips
    utts = load_dataset("asterisk", "test")[:n]
    t0 = time.perf_counter()
    m = evaluate(be, utts, out / "eval" / label, options,
                 settings=eval_settings(RECOGNIZER, "asterisk", "test", "torch", options, n), progress=False)
    seconds = time.perf_counter() - t0
    timing = {"seconds_per_clip": seconds / max(1, len(utts)),
              "lm_share": None if fusion is None or seconds < 1e-9 else fusion.seconds / seconds,
              "lm_steps": None if fusion is None else fusion.steps}  # asterisk only: before the suite below
    ood = evaluate_ood(be, RECOGNIZER, out / "eval" / label / OOD_DIR, options, per_source=args.ood_per_source,
                       progress=False)
    return {"wer": m["wer"], "n_utterances": m["n_utterances"], "runaway": m["runaway"]["utterances"],
            "english_ood_wer": ood["wer"], "english_ood_macro_wer": ood.get("macro_wer"),
            "english_ood_utterances": ood["n_utterances"], **timing}


@dataclass(frozen=True)
class VariantJob:
    """One variant per item (``scale.executor.Job``): prune or train it (resumable, in its own folder), then its
    perplexity, LM step time and fused WER. Nothing is shared between variants, so setup has nothing to build."""

    args: argparse.Namespace

    def setup(self) -> None:
        return None

    def run(self, state: None, name: str) -> dict:
        from speechprune.evaluate.perplexity import evaluate_perplexity
        from speechprune.models.family import family_for_folder

        args = self.args
        t0 = time.time()
        row: dict = {"variant": name}
        if name == "no-lm":
            folder = None
        else:
            folder = args.lm if name == "dense" else run_variant(name, args.lm, args.out, args)
            family = family_for_folder(folder)
            model = family.load(folder)
            shape = family.shape_record(model)
            ppl = evaluate_perplexity(folder, "english-text", "test", limit=args.limit or args.ppl_lines,
                                      progress=False)
            row.update(folder=str(folder), params=shape["params"],
                       nonzero_params=sum(int((p != 0).sum()) for p in model.parameters()),
                       layer_params=sum(p.numel() for p in model.layers.parameters()),
                       flops_per_token=shape["flops_decoder_per_token"], test_ppl=ppl["ppl"],
                       ms_per_token_beam4=lm_ms_per_token(folder))
        if not args.no_wer:
            row["asterisk_test"] = fused_wer(folder, name, args.out, args)
        row.update(minutes=(time.time() - t0) / 60, threads=args.threads, limit=args.limit,
                   settings={k: getattr(args, k) for k in ("ft_steps", "ft_batch", "ppl_lines", "wer_clips",
                                                            "ood_per_source", "beam", "weight", "bonus")})
        return row


def main() -> None:
    import torch

    from speechprune.io import append_jsonl, read_jsonl_tolerant
    from speechprune.models.family import family_for_folder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", type=Path, required=True, help="the dense LM folder (a Whisper-token LM)")
    ap.add_argument("--out", type=Path, default=Path("runs/lm-pruning"))
    ap.add_argument("--variants", default=None, help="comma-separated (default: all, in order)")
    ap.add_argument("--ft-steps", type=int, default=100, help="fine-tuning steps per recovery phase")
    ap.add_argument("--ft-batch", type=int, default=32, help="lines per fine-tuning batch")
    ap.add_argument("--ppl-lines", type=int, default=4000)
    ap.add_argument("--wer-clips", type=int, default=200)
    ap.add_argument("--ood-per-source", type=int, default=20, help="english-ood clips per source scored")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--weight", type=float, default=0.3, help="LM weight lambda for every variant")
    ap.add_argument("--bonus", type=float, default=0.5, help="length bonus beta per token for every variant")
    ap.add_argument("--scratch-recipe", default="lm-whisper-bpe", help="the dense LM's training recipe")
    ap.add_argument("--no-wer", action="store_true", help="perplexity and time only")
    ap.add_argument("--limit", type=int, default=None, help="a smoke test: tiny data everywhere")
    add_executor_arguments(ap, local_threads=1)
    args = ap.parse_args()
    where = executor_from_arguments(args)
    args.threads = where.threads
    torch.set_num_threads(args.threads)
    if family_for_folder(args.lm).name != "lm":
        raise SystemExit(f"{args.lm}: not a language model folder")
    names = args.variants.split(",") if args.variants else variant_names()
    unknown = sorted(set(names) - set(variant_names()))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {variant_names()}")
    results = args.out / "results.jsonl"
    done = {r["variant"] for r in read_jsonl_tolerant(results)} if results.exists() else set()

    def on_record(name: str, row: dict) -> None:
        append_jsonl(results, {**row, "executor": where.record})
        print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)

    run_jobs(VariantJob(args), [n for n in names if n not in done], where, on_record, desc="variants")


if __name__ == "__main__":
    main()
