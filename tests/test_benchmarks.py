"""Smoke test of benchmarks/compare.py: it runs end to end on a tiny synthetic set and
writes well-formed outputs. No timing is asserted here; speed lives in the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


@pytest.mark.slow
def test_compare_runs_and_writes_a_table_json_and_plot(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(COMPARE),
            "--synthetic",
            "30",
            "--repeat",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| section | configuration | median s")
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["records"] > 0 and report["repeat"] == 1
    names = [(row["section"], row["configuration"]) for row in report["rows"]]
    assert len(table) - 1 == len(names)  # the header, then one line per row
    assert ("peers", "plain loop") in names
    assert ("build: load_dataset", "LocalCluster 1 worker x 2 threads") in names
    assert ("build: build", "processes (2)") in names
    assert ("epochs: BatchIterator", "Zarr store") in names
    assert report["machine"]["cpu_count"] >= 1 and "dask" in report["machine"]
    for row in report["rows"]:
        if row["configuration"].startswith("torch") and "error" in row:
            continue  # torch is optional: shown as failed where it is missing
        assert "error" not in row, row
        assert len(row["samples"]) == 1 and row["records_per_s"] > 0
        assert row["client_rss_mib"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_header_benchmark_checks_the_readers_agree(tmp_path):
    """benchmarks/header.py on a synthetic fallback (no real sample at that path)."""
    header = COMPARE.with_name("header.py")
    argv = [sys.executable, str(header), "--data", str(tmp_path / "none"), "--files", "6"]
    out = subprocess.run(
        [*argv, "--repeat", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "synthetic" in out.stdout and "identical float32 arrays on all 6" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | ms/slice") and len(rows) == 8  # the header, 7 rows
    assert json.loads((tmp_path / "header.json").read_text())
