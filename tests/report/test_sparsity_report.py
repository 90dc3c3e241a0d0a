"""Sparsity tables and plots from benchmark records."""

from __future__ import annotations

import json

import pytest

from speechprune.io import append_jsonl
from speechprune.report.sparsity import crossover, wer_table, write_sparsity_report


def test_crossover_interpolates_where_sparse_falls_below_dense():
    xs = [0.0, 0.02, 0.04, 0.1]
    assert crossover(xs, [101, 100.5, 99, 95], [100] * 4) == pytest.approx(0.02 + 0.02 * 0.5 / 1.5)
    assert crossover(xs, [101] * 4, [100] * 4) is None
    assert crossover(xs, [99] * 4, [100] * 4) == 0.0


def _point(method, target, wer, sparsity=None):
    return {"name": f"{method}-{target}", "method": method, "target": target, "split": "dev", "limit": 8,
            "wer": wer, "sparsity": target if sparsity is None else sparsity, "params": 37.8e6,
            "nonzero_params": 30e6, "disk": {"dense_bytes": 151e6, "sparse_bytes": 120e6, "sparse_fp16_bytes": 60e6,
                                             "layouts": {"dense": 10, "bitmask": 48, "csr": 0}},
            "latency_ms": 300.0, "latency_ms_dense": 290.0}


def test_wer_table_places_each_point_under_its_sparsity():
    points = [{**_point("dense", None, 0.05), "sparsity": 0.0}, _point("wanda", 0.5, 0.12),
              _point("wanda", 0.9, 1.5), _point("taylor", 0.3, 0.07)]
    table = wer_table(points)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert rows["wanda"] == ["-", "12.00", "-", "150.00", "5.00"]
    assert rows["taylor"] == ["7.00", "-", "-", "-", "5.00"]


def test_report_writes_tables_and_plots(tmp_path):
    append_jsonl(tmp_path / "points.jsonl", {**_point("dense", None, 0.05), "sparsity": 0.0})
    for t, w in ((0.3, 0.06), (0.5, 0.12)):
        append_jsonl(tmp_path / "points.jsonl", _point("wanda", t, w))
    rows = [{"sparsity": s, "dense": 100, "auto": 100 - 40 * s, "bitmask": 103 - 40 * s, "csr": 150 - 100 * s,
             "dense_fp16": 50, "auto_fp16": 50 - 20 * s} for s in (0.0, 0.5, 0.9)]
    (tmp_path / "storage.json").write_text(json.dumps({"rows": rows, "crossover": {"auto fp32": 0.03, "csr fp32": None}}))
    md = write_sparsity_report(tmp_path).read_text()
    assert "| wanda | 6.00 | 12.00 | - | - | 5.00 |" in md
    assert "auto fp32 3.0 %" in md and "csr fp32 never in range" in md
    assert "no speed-up" in md or "not a speed-up" in md
    for name in ("wer_vs_sparsity.png", "disk_vs_sparsity.png", "latency_vs_sparsity.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_lowrank_markdown_has_one_row_per_point():
    from speechprune.report.sparsity import lowrank_markdown

    rec = {"name": "svd-p60", "method": "svd", "split": "test", "limit": None, "ranks": {}, "n_factorized": 30,
           "n_dense": 34, "site_weights": 9.9e6, "site_weights_dense": 16.5e6,
           "dense": {"params": 37.76e6, "flops_encoder": 36.94e9, "flops_decoder_per_token": 65.58e6},
           "params": 31.1e6, "flops_encoder": 27.1e9, "flops_decoder_per_token": 59.0e6, "wer_dense": 0.0489,
           "wer_factorized": 0.512, "wer_recovered": 0.09, "latency_ms": 250.0, "latency_ms_dense": 300.0,
           "latency_ratio": 0.833, "encoder_ms": 160.0, "encoder_ms_dense": 215.0}
    md = lowrank_markdown([rec])
    row = next(line for line in md.splitlines() if line.startswith("| svd-p60"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[:10] == ["svd-p60", "svd", "0.60", "30 of 64", "31.10 (37.76)", "27.10 (36.94)", "59.0 (65.6)",
                          "51.20", "9.00", "4.89"]
    assert cells[10:13] == ["-", "-", "-"]  # a record from before out-of-domain scoring
    assert cells[14] == "0.83" and "dec ms/token" in md and "asterisk test" in md
    ood = {"wer_ood_factorized": 0.9, "macro_wer_ood_factorized": 0.8, "wer_ood_recovered": 0.3,
           "wer_ood_dense": 0.28, "macro_wer_ood_dense": 0.34}
    row = next(line for line in lowrank_markdown([{**rec, **ood}]).splitlines() if line.startswith("| svd-p60"))
    assert [c.strip() for c in row.split("|")[1:-1]][10:13] == ["90.00 (80.00)", "30.00", "28.00 (34.00)"]


def test_out_of_domain_wer_gets_its_own_table_when_scored(tmp_path):
    append_jsonl(tmp_path / "points.jsonl", {**_point("dense", None, 0.05), "sparsity": 0.0, "wer_ood": 0.28,
                                             "macro_wer_ood": 0.34})
    append_jsonl(tmp_path / "points.jsonl", {**_point("wanda", 0.5, 0.12), "wer_ood": 0.6, "macro_wer_ood": 0.7})
    md = write_sparsity_report(tmp_path).read_text()
    assert "| wanda | - | 12.00 | - | - | 5.00 |" in md  # in domain
    assert "| wanda | - | 60.00 | - | - | 28.00 |" in md and "Out of domain" in md
    assert "| 12.00 | 60.00 (70.00) |" in md  # every point: in and out of domain side by side
    (tmp_path / "points.jsonl").unlink()
    append_jsonl(tmp_path / "points.jsonl", _point("wanda", 0.5, 0.12))
    assert "Out of domain" not in write_sparsity_report(tmp_path).read_text()
