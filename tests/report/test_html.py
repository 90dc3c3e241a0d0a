"""The HTML report rendered from small synthetic run folders."""

from __future__ import annotations

import base64
import json
import re

import pytest

from speechprune.errors import ConfigError
from speechprune.report.html import collect, write_html_report


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def runs(tmp_path):
    main = tmp_path / "main"
    _write(main / "report.json", {"title": "main job", "rows": [
        {"backend": "torch", "wer": 0.0489, "wer_ood": 0.0841, "macro_wer_ood": 0.1213, "cer": 0.01,
         "latency_ms_median": 343.04, "latency_ratio": 1.0,
         "gflops_encoder": 36.94, "params_m": 37.76, "disk_mb": 151.0},
        {"backend": "torch-pruned", "wer": 0.2317, "cer": 0.1, "latency_ms_median": 223.68, "latency_ratio": 0.652,
         "gflops_encoder": 19.41, "params_m": 31.85, "disk_mb": 127.4}],
        "environment": {"cpu_model": "Intel Xeon", "cpu_isa_summary": "AVX-512 (VNNI, BF16, AMX)", "threads": 2,
                        "kernels": {"torch": {"aten_cpu_capability": "AVX512"},
                                    "ctranslate2": {"selected_isa": "AVX512"},
                                    "onnxruntime": {"sgemm": "AVX512F", "int8_gemm": "AMX"}}}})
    _write(main / "eval" / "dense" / "metrics.json", {"wer": 0.0489, "cer": 0.01, "n_utterances": 282, "n_failed": 0,
                                                      "settings": {"model": "whisper-tiny.en", "split": "test"}})
    _write(main / "eval" / "dense" / "run.json", {"model": "whisper-tiny.en"})
    _write(main / "prune" / "prune.json", {"model": "m", "recipe": {"name": "fast"}, "dense": {"params": 37760256},
                                           "steps": [{"step": 1, "params": 31848576, "removed_modules": ["encoder.2.self_attn"]}]})
    sweep = tmp_path / "sweep"
    _write(sweep / "sweep.json", {"kind": "sensitivity", "model": "tiny", "data": "asterisk", "split": "dev", "limit": 20})
    pts = [{"key": "dense", "component": "dense", "method": "dense", "sparsity": 0.0, "wer": 0.037, "params": 100,
            "nonzero_params": 100, "flops_encoder": 1e9, "flops_decoder_per_token": 1e6}]
    for s, w in ((0.1, 0.04), (0.5, 0.777)):
        pts.append({"key": f"encoder.ffn|structured|{s}", "component": "encoder.ffn", "method": "structured",
                    "sparsity": s, "wer": w, "params": 90, "nonzero_params": 90, "flops_encoder": 8e8,
                    "flops_decoder_per_token": 1e6})
    (sweep / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts) + '{"key": "trunc')
    _write(tmp_path / "ablation" / "summary.json", {"model": "tiny", "layers": [
        {"layer": "encoder.0", "wer_delta": 0.1234}, {"layer": "encoder.1", "wer_delta": 0.5678}]})
    plan = tmp_path / "plan"
    comp = {"encoder.ffn": {"sparsity": 0.5, "damage": 0.4, "cost": 7.0}}
    _write(plan / "plan.json", {"target": "encoder-flops:0.2",
                                "plan": {"recipe": str(plan / "plan.yaml"), "predicted_wer_increase": 0.49,
                                         "predicted_removed": 7e9, "per_component": comp,
                                         "realized": {"params": 35, "flops_decoder_per_token": 61234567}},
                                "uniform": {"recipe": str(plan / "plan-uniform.yaml"), "predicted_wer_increase": 1.16,
                                            "predicted_removed": 7e9, "per_component": comp}})
    for name, wer in (("plan", 0.3141), ("plan-uniform", 0.9265)):
        _write(plan / f"eval-{name}" / "metrics.json", {"wer": wer, "n_utterances": 40, "settings": {
            "model": str(plan / f"prune-{name}" / "step-1"), "data": "heldout.jsonl", "split": None}})
    _write(tmp_path / "odd" / "thing.json", {"nothing": {"useful": [1, 2]}})
    (tmp_path / "odd" / "broken.json").write_text("{not json")
    return tmp_path


def test_report_shows_every_known_record_and_is_self_contained(runs, tmp_path):
    out = write_html_report([runs / "main", runs / "sweep", runs / "ablation", runs / "odd", runs / "plan"],
                            tmp_path / "r" / "report.html")
    page = out.read_text()
    assert "31.41 (heldout, 40 utt.)" in page and "92.65 (heldout, 40 utt.)" in page  # each eval beside its recipe
    for number in ("4.89", "8.41", "12.13", "23.17", "343", "223.7", "31,848,576", "77.7", "0.1234", "0.5678", "61,234,567"):
        assert number in page, number
    assert "encoder.2.self_attn" in page
    assert "Intel Xeon [AVX-512 (VNNI, BF16, AMX)]" in page and "int8 AMX (inferred)" in page  # what made the timings
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 3  # WER vs latency, vs size, vs sparsity
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    assert "http" not in page.lower() and "<script" not in page and "<link" not in page
    assert "thing.json: unknown record" in page and "broken.json: unreadable" in page
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["sweeps"][0]["points"]) == 3 and len(data["evals"]) == 3 and len(data["prunes"]) == 1
    assert len(data["plans"]) == 1


def test_missing_data_is_said_not_drawn(runs, tmp_path):
    col = collect([runs / "ablation"])
    assert not col.main and not col.sweeps and len(col.tables) == 1
    out = write_html_report([runs / "ablation"], tmp_path / "a.html")
    page = out.read_text()
    assert "no sensitivity sweep" in page and "data:image/png" not in page


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        collect([tmp_path / "nope"])


def _sparsity_point(method, target, wer, sparsity):
    return {"name": f"{method}-{target}", "method": method, "target": target, "split": "test", "limit": None,
            "wer": wer, "sparsity": sparsity, "params": 37.8e6, "nonzero_params": 37.8e6 * (1 - sparsity / 2),
            "disk": {"dense_bytes": 151e6, "sparse_bytes": 151e6 * (1 - sparsity / 3), "sparse_fp16_bytes": 70e6,
                     "layouts": {"dense": 10, "bitmask": 48}}, "latency_ms": 301.0, "latency_ms_dense": 299.0}


def _lowrank_point(name, params, wer, ratio):
    return {"name": name, "method": "activation", "split": "test", "limit": None, "ranks": {"encoder.0.ffn.in": 200},
            "n_factorized": 24, "n_dense": 40, "site_weights": 12e6, "site_weights_dense": 16.5e6,
            "dense": {"params": 37.76e6, "flops_encoder": 36.9e9, "flops_decoder_per_token": 65.6e6},
            "params": params, "flops_encoder": 30e9, "flops_decoder_per_token": 60e6, "wer_dense": 0.0489,
            "wer_factorized": wer, "wer_recovered": None, "latency_ms": 250.0, "latency_ms_dense": 300.0,
            "latency_ratio": ratio, "encoder_ms": 180.0, "encoder_ms_dense": 215.0, "decoder_ms_per_token": 8.5,
            "decoder_ms_per_token_dense": 8.7}


def test_report_shows_unstructured_and_lowrank_results(tmp_path):
    unstructured = tmp_path / "unstructured"
    unstructured.mkdir()
    pts = [_sparsity_point("dense", None, 0.0489, 0.0), _sparsity_point("wanda", 0.5, 0.2398, 0.5),
           _sparsity_point("wanda", 0.9, 6.8275, 0.9), _sparsity_point("magnitude-layer", 0.3, 0.0753, 0.3)]
    (unstructured / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts))
    rows = [{"sparsity": s, "dense": 151e6, "auto": 151e6 * (1.01 - 0.6 * s), "bitmask": 156e6 - 90e6 * s,
             "csr": 200e6 - 150e6 * s, "dense_fp16": 75.5e6, "auto_fp16": 76e6 - 30e6 * s} for s in (0.0, 0.5, 0.9)]
    _write(unstructured / "storage.json", {"rows": rows, "crossover": {"auto fp32": 0.0331, "csr fp32": None}})
    (unstructured / "dense" / "eval").mkdir(parents=True)  # hypotheses are JSONL too, and not results
    (unstructured / "dense" / "eval" / "hypotheses.jsonl").write_text('{"id": "a", "hyp": "yes"}\n')
    lowrank = tmp_path / "lowrank"
    lowrank.mkdir()
    (lowrank / "lowrank.jsonl").write_text(json.dumps(_lowrank_point("activation-p75", 31.2e6, 0.0712, 0.871)) + "\n")

    col = collect([tmp_path])
    assert len(col.sparsity) == 1 and len(col.sparsity[0]["points"]) == 4 and col.sparsity[0]["storage"]
    assert len(col.lowrank) == 1 and not col.tables and not col.skipped  # storage.json is read with its points
    page = write_html_report([tmp_path], tmp_path / "r.html").read_text()
    for text in ("23.98", "682.75", "7.53", "auto fp32 3.3 %", "csr fp32 never in range", "not a speed-up",
                 "activation-p75", "31.20 (37.76)", "7.12", "0.87"):
        assert text in page, text
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # WER vs size; unstructured WER, latency and disk against sparsity; low-rank WER vs params
    assert len(imgs) == 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)


def test_ablation_and_signature_folders_get_heatmaps_and_the_critical_ambient_table(tmp_path):
    from speechprune.analysis.ablation import Metric, summarize
    from speechprune.analysis.jobs import signatures_job
    from tiny_models import tiny_ctc

    targets = ["encoder.0", "encoder.1", "encoder.2"]
    loss = {"encoder.0": 1.05, "encoder.1": 3.0, "encoder.2": 1.5}
    recs = [{"target": "dense", "method": "dense", "seed": 0, "metric": "proxy", "value": 1.0}]
    recs += [{"target": t, "method": m, "seed": s, "metric": "proxy", "value": loss[t] + 0.01 * s}
             for t in targets for m in ("skip", "reinit") for s in (0, 1)]
    summary = summarize(recs, [Metric("proxy", None, relative=True, threshold=0.1)], targets, ["skip", "reinit"])
    _write(tmp_path / "abl" / "summary.json", summary)
    before, after = tiny_ctc("conformer", seed=0), tiny_ctc("conformer", seed=1)
    from speechprune.models.ctc import save_ctc

    save_ctc(before, tmp_path / "m0")
    save_ctc(after, tmp_path / "m1")
    signatures_job(str(tmp_path / "m0"), str(tmp_path / "m1"), tmp_path / "sig", ablation=tmp_path / "abl")

    col = collect([tmp_path / "abl", tmp_path / "sig"])
    assert len(col.ablations) == 1 and len(col.signatures) == 1 and not col.tables
    page = write_html_report([tmp_path / "abl", tmp_path / "sig"], tmp_path / "r.html").read_text()
    assert "critical and ambient" in page and "ambient (0.05" in page and "critical (2.005" in page
    assert "(value - dense) / dense &lt; 0.1 is ambient" in page
    assert "Weight-change signatures" in page and "Spearman with the signature" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 2  # the ablation heatmap and a signature one


def test_an_evaluation_shows_its_out_of_domain_twin_beside_it_and_gates_their_heatmap(tmp_path):
    from speechprune.report.html import gate_matrix, ood_pairs

    ev = tmp_path / "eval"
    _write(ev / "metrics.json", {"wer": 0.0612, "cer": 0.02, "n_utterances": 282, "settings": {
        "model": "m", "data": "asterisk", "split": "test"}})
    _write(ev / "ood" / "metrics.json", {"wer": 0.3456, "macro_wer": 0.4321, "n_utterances": 352, "settings": {
        "model": "m", "data": "english-ood"}})
    _write(tmp_path / "alone" / "metrics.json", {"wer": 0.2, "n_utterances": 10, "settings": {"data": "drascula"}})
    modules = ["encoder.0.self_attn", "encoder.0.ffn", "decoder.0.self_attn"]
    gates = {"skip_share": 0.25, "by_language_task": {
        "fr/translate": {"skip_share": 0.5, "n": 4, "keep": [1.0, 0.5, 0.0]},
        "es/transcribe": {"skip_share": 0.0, "n": 3, "keep": [1.0, 1.0, 1.0]}}}
    _write(tmp_path / "gated" / "metrics.json", {"wer": 0.3, "n_utterances": 7, "gates": gates, "settings": {
        "model": "base", "data": "asterisk-fr", "gates": {"modules": modules}}})
    col = collect([tmp_path])
    pairs = {str(e["source"]): o for e, o in ood_pairs(col.evals)}
    assert len(pairs) == 3 and pairs[str(ev / "metrics.json")]["metrics"]["wer"] == 0.3456  # the twin is not a row
    assert pairs[str(tmp_path / "alone" / "metrics.json")] is None
    assert gate_matrix(gates, modules) == (["es/transcribe", "fr/translate"], [[1.0, 1.0, 1.0], [1.0, 0.5, 0.0]])
    page = write_html_report([tmp_path], tmp_path / "r.html").read_text()
    row = next(r for r in re.findall(r"<tr>.*?</tr>", page) if str(ev / "metrics.json") in r)
    assert "6.12" in row and "34.56" in row and "43.21" in row  # in and out of domain in one row
    gates_part = page[page.index("Gates: mean skip share 25.0 %"):]
    assert "data:image/png" in gates_part  # the heatmap of keep shares per language/task
