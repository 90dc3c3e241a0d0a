"""What each ingredient of the recovery data buys, in domain and out of domain, at one recovery budget.

The structure and the recovery settings are the main job's default recipe (``whisper-tiny.en-onnx``); only
``recovery.data`` (and ``interleave``, ``augment``) change, with ``max_utterances`` and ``steps`` fixed. Every variant
but ``+synth-refit`` keeps the least-squares refit of the cut blocks that the recipe had when they were measured;
``+synth-refit`` (the recipe since 2026-12-07) has none:

    asterisk         asterisk dev only (one telephone voice)
    +synth           + synthetic voices, wideband and telephone band (every engine and voice)
    +real            + real recorded English, unlabelled (game voices, radio: speechprune.data.unlabelled)
    +augment         the same data through noise, room and channel augmentation
    +augment+cal     and the calibration (criterion and least-squares refit) on the same diverse clips
    +synth+cal       +synth's recovery data, calibration on diverse clips
    +synth-refit     +synth's recovery data, no least-squares refit (the cut blocks keep their surviving weights)
    one-shot         no recovery: the structure as pruned and refit on asterisk calibration
    one-shot+cal     no recovery, calibration on diverse clips (asterisk, synthetic voices, real unlabelled English)
    one-shot+speech  no recovery, asterisk calibration, the refit weighing speech and padding positions alike
    one-shot-refit   no recovery, no refit: the cut structure as the criterion left it
    one-shot-ffn-refit, one-shot-heads-refit   the same, with only the FFN cut or only the head cut
    one-shot-refit+cal  no recovery, no refit, the criterion calibrated on diverse clips

Each variant is pruned and recovered (``run_prune``), then scored on the asterisk test split and on the pooled
out-of-domain suite (``english-ood``: speakers and recordings that no recovery, calibration or sweep reads).
Results are appended to ``OUT/results.jsonl`` as each variant finishes; a rerun skips finished variants and
resumes unfinished evaluations.

    python bench/recovery_data.py --out runs/recovery-data [--variants asterisk,+synth,...] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RECIPE = "whisper-tiny.en-onnx"
BASE_DATA = ["asterisk:dev"]
SYNTH = ["synth:300", "synth-telephone:300"]
REAL = ["unlabelled:600"]
DIVERSE_CALIBRATION = {"data": BASE_DATA + SYNTH + REAL}
# per variant: changes to the recipe's recovery, and to its calibration
# (every key a variant changes is set explicitly: the recipe's own recovery block is the +synth-refit variant)
FFN_ONLY = {"stack": "encoder", "kind": "ffn", "sparsity": 0.3}  # the recipe's two cuts, apart
HEADS_ONLY = {"stack": "encoder", "kind": "self_attn", "sparsity": 0.17}
REFIT = {"reconstruct": True}  # the recipe's least-squares refit before 2026-12-07, with which those rows were measured
VARIANTS = {
    "asterisk": {"data": BASE_DATA, "interleave": False, "augment": None, "recipe": REFIT},
    "+synth": {"data": BASE_DATA + SYNTH, "interleave": True, "augment": None, "recipe": REFIT},
    "+real": {"data": BASE_DATA + SYNTH + REAL, "interleave": True, "augment": None, "recipe": REFIT},
    "+augment": {"data": BASE_DATA + SYNTH + REAL, "interleave": True, "augment": {}, "recipe": REFIT},
    "+augment+cal": {"data": BASE_DATA + SYNTH + REAL, "interleave": True, "augment": {},
                     "calibration": DIVERSE_CALIBRATION, "recipe": REFIT},
    "+synth+cal": {"data": BASE_DATA + SYNTH, "interleave": True, "augment": None,
                   "calibration": DIVERSE_CALIBRATION, "recipe": REFIT},
    "+synth-refit": {"data": BASE_DATA + SYNTH, "interleave": True, "augment": None,
                     "recipe": {"reconstruct": False}},
    "one-shot": {"steps": 0, "recipe": REFIT},
    "one-shot+cal": {"steps": 0, "calibration": DIVERSE_CALIBRATION, "recipe": REFIT},
    "one-shot+speech": {"steps": 0, "recipe": {**REFIT, "reconstruct_weighting": "speech"}},
    "one-shot-refit": {"steps": 0, "recipe": {"reconstruct": False}},
    "one-shot-ffn-refit": {"steps": 0, "recipe": {"reconstruct": False, "targets": [FFN_ONLY]}},
    "one-shot-heads-refit": {"steps": 0, "recipe": {"reconstruct": False, "targets": [HEADS_ONLY]}},
    "one-shot-refit+cal": {"steps": 0, "calibration": DIVERSE_CALIBRATION, "recipe": {"reconstruct": False}},
}
EVALS = (("asterisk", "test"), ("english-ood", None))


def variant_recipe(name: str):
    from speechprune.data.augment import AugmentSettings
    from speechprune.prune.recipe import load_recipe

    base = load_recipe(RECIPE)
    change = dict(VARIANTS[name])
    calibration = change.pop("calibration", {})
    top = change.pop("recipe", {})  # recipe-level keys
    if change.get("augment") is not None:
        change["augment"] = AugmentSettings(**change["augment"])
    recipe = base.model_copy(update={"name": f"{RECIPE}{name}",
                                     "calibration": base.calibration.model_copy(update=calibration),
                                     "recovery": base.recovery.model_copy(update=change)})
    return type(base).model_validate({**recipe.model_dump(), **top})  # recipe-level keys validated


def evaluate_model(folder: Path, out: Path, label: str) -> dict:
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.backends import load_backend
    from speechprune.evaluate.runner import eval_settings, evaluate
    from speechprune.models.decoding import DecodeOptions

    be = load_backend(str(folder), "torch")
    row = {}
    for data, split in EVALS:
        m = evaluate(be, load_dataset(data, split), out / "eval" / label / data, DecodeOptions(),
                     settings=eval_settings(str(folder), data, split, be.name, DecodeOptions()), progress=False)
        row[data] = {"wer": m["wer"], "macro_wer": m.get("macro_wer"), "by_source": m.get("by_source"),
                     "runaway": m["runaway"]["utterances"], "n_utterances": m["n_utterances"]}
    return row


def main() -> None:
    import torch

    from speechprune.io import append_jsonl, read_jsonl_tolerant
    from speechprune.models.registry import resolve_model
    from speechprune.prune.run import run_prune
    from speechprune.prune.runner import final_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/recovery-data"))
    ap.add_argument("--variants", default=",".join(["dense", *VARIANTS]))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = args.out / "results.jsonl"
    done = {r["variant"] for r in read_jsonl_tolerant(results)} if results.exists() else set()
    for name in args.variants.split(","):
        if name in done:
            continue
        t0 = time.time()
        if name == "dense":
            row = evaluate_model(resolve_model("whisper-tiny.en"), args.out, "dense")
            recipe = None
        else:
            recipe = variant_recipe(name)
            prune_dir = args.out / "prune" / name.strip("+")
            if not (prune_dir / "model.txt").exists():
                run_prune("whisper-tiny.en", recipe, prune_dir, progress=False)
            row = evaluate_model(final_model_dir(prune_dir), args.out, name.strip("+"))
        row = {"variant": name, **row, "recovery": None if recipe is None else recipe.recovery.model_dump(),
               "calibration": None if recipe is None else recipe.calibration.model_dump(),
               "minutes": (time.time() - t0) / 60, "threads": args.threads}
        append_jsonl(results, row)
        print(json.dumps({k: (v["wer"] if isinstance(v, dict) and "wer" in v else v)
                          for k, v in row.items() if k != "recovery"}), flush=True)


if __name__ == "__main__":
    main()
