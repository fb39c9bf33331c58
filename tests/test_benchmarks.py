"""Smoke test of benchmarks/compare.py: it runs end to end on a tiny synthetic set and
writes well-formed outputs. No timing is asserted here; speed lives in the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


def run_script(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a benchmark script in a fresh interpreter; fail with its stderr."""
    out = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.mark.slow
def test_compare_runs_and_writes_a_table_json_and_plot(tmp_path):
    out = run_script(
        COMPARE,
        *("--synthetic", "30", "--repeat", "1", "--in-process", "--out", str(tmp_path)),
        timeout=900,
    )
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


def test_compare_measures_a_row_in_a_process_of_its_own(tmp_path):
    """The isolated path of compare.py (``--one``), that the smoke run above skips."""
    import daskmri

    root = daskmri.synth.make_dataset(tmp_path / "data", patients=1, slices=6, shape=(32, 32))
    argv = ["--one", "build", "sync", str(root), str(tmp_path / "ds.zarr"), "1"]
    out = run_script(COMPARE, *argv)
    row = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("ROW "))[4:])
    assert "error" not in row, row
    assert len(row["samples"]) == 1 and row["samples"][0] > 0 and row["client_rss_mib"] > 0


def test_header_benchmark_checks_the_readers_agree(tmp_path):
    """benchmarks/header.py on a synthetic fallback (no real sample at that path)."""
    header = COMPARE.with_name("header.py")
    argv = ["--data", str(tmp_path / "none"), "--files", "6", "--repeat", "1"]
    out = run_script(header, *argv, "--out", str(tmp_path))
    assert "synthetic" in out.stdout and "identical float32 arrays on all 6" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | ms/slice") and len(rows) == 8  # the header, 7 rows
    assert json.loads((tmp_path / "header.json").read_text())


SHARDING = COMPARE.with_name("sharding.py")


def test_sharding_benchmark_writes_a_table_json_and_plot(tmp_path):
    """benchmarks/sharding.py on a tiny synthetic set: every layout measured."""
    argv = ["--synthetic", "10", "--repeat", "1", "--singles", "4", "--batches", "2"]
    out = run_script(SHARDING, *argv, "--out", str(tmp_path))
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| layout | objects | MiB | write s")
    report = json.loads((tmp_path / "sharding.json").read_text())
    assert report["records"] > 0 and report["repeat"] == 1
    assert len(table) - 1 == len(report["rows"]) == 6  # the header, then one line per layout
    for row in report["rows"]:
        # Three arrays of one shard (or chunk) each, their zarr.json and the group's.
        assert row["objects"] == 3 * row["tasks"] + 4 and row["bytes"] > 0
        assert all(len(pairs) == 1 for pairs in row["samples"].values())
        assert row["write_s"] > 0 and row["singles_cpu_s"] >= 0
    objects = {row["layout"]: row["million_objects"] for row in report["rows"]}
    assert objects["chunks 64 (today)"] == objects["shards 64 / inner 1"] == 78_230
    assert objects["shards 256 / inner 64"] == objects["chunks 256"] < 78_230 / 3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "sharding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sharding_object_count_is_that_of_a_built_store(tmp_path):
    """The arithmetic behind the 1M-record counts, checked against a real build."""
    import importlib.util

    import zarr

    import daskmri

    spec = importlib.util.spec_from_file_location("sharding_bench", SHARDING)
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SHARDING.parent))  # it imports benchmarks/common.py
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(SHARDING.parent))
    root = daskmri.synth.make_dataset(tmp_path / "data", patients=2, slices=30, shape=(32, 32))
    store = tmp_path / "s.zarr"
    daskmri.build(root, store, chunk_size=8, scheduler="sync")
    group = zarr.open_group(str(store), mode="r")
    slots, tasks = group["status"].shape[0], group["done"].shape[0]
    files = sum(1 for p in store.rglob("*") if p.is_file())
    assert files == bench.store_objects(slots, tasks)


OBJECTSTORE = COMPARE.parent / "objectstore.py"


@pytest.mark.slow
def test_objectstore_benchmark_runs_against_the_s3_server(tmp_path):
    for module in ("moto", "s3fs", "boto3"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[test]'")
    out = run_script(
        OBJECTSTORE,
        *("--synthetic", "20", "--repeat", "1", "--latency-ms", "5", "--out", str(tmp_path)),
        timeout=600,
    )
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    report = json.loads((tmp_path / "objectstore.json").read_text())
    assert report["latency_ms"] == 5 and len(table) - 1 == len(report["rows"]) == 11
    for row in report["rows"]:
        # Every S3 row served the local run's records and pixels (the script checks).
        assert "error" not in row, row
        assert row["records_per_s"] > 0 and row["x_local"] > 0
    sections = {row["section"] for row in report["rows"]}
    assert {"scan", "load_dataset (sync)", "build (2 processes)"} <= sections


REPORT = COMPARE.with_name("report.py")


@pytest.mark.slow
def test_report_benchmark_runs_and_writes_a_table_json_and_plot(real_root, tmp_path):
    out = run_script(
        REPORT,
        *("--data", str(real_root), "--sizes", "60", "--out", str(tmp_path)),
        *("--plot", str(tmp_path / "report.png")),
    )
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| records | patients | chunks | report s")
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert rows[0]["records"] >= 60 and rows[0]["rss_peak_mib"] >= rows[0]["rss_before_mib"]
