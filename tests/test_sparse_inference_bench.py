"""``python -m benchmarks inference``: the quick mode runs, checks every format against dense,
and writes a report with one row per sparsity and batch."""

from __future__ import annotations

import json

from benchmarks import __main__ as cli
from benchmarks import inference


def test_quick_mode_writes_the_report(tmp_path):
    cli.main(["inference", "--quick", "--out", str(tmp_path)])
    raw = json.loads((tmp_path / "SPARSE_INFERENCE.json").read_text())
    assert [(r["sparsity"], r["batch"]) for r in raw["rows"]] == [
        (0.9, 1),
        (0.9, 128),
        (0.99, 1),
        (0.99, 128),
    ]
    for row in raw["rows"]:
        assert set(row["seconds"]) == {"dense", "ELL", "BCOO"}
        assert all(t > 0 for t in row["seconds"].values())
        assert row["compressed"] < row["dense"]
    report = (tmp_path / "SPARSE_INFERENCE.md").read_text()
    assert "python -m benchmarks inference --quick" in report
    assert report.count("| tiny |") == 4


def test_verdict_says_when_dense_wins():
    assert (
        inference.verdict({"dense": 1.0, "ELL": 2.0, "BCOO": 3.0})
        == "dense faster (2.00x ELL's time)"
    )
    assert (
        inference.verdict({"dense": 3.0, "ELL": 1.0, "BCOO": 2.0}) == "ELL 3.00x faster than dense"
    )
