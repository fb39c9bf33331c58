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
    assert objects["chunks 64 (today)"] == objects["shards 64 / inner 1"] == 94_450
    assert objects["shards 256 / inner 64"] == objects["chunks 256"] < 94_450 / 3
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


COMPACT = COMPARE.with_name("compact.py")
REPO = COMPARE.parents[1]


def load_benchmark(path: Path):
    """A benchmark script as a module (it imports benchmarks/common.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.mark.slow
def test_compact_benchmark_runs_old_against_new(real_root, tmp_path):
    """benchmarks/compact.py --quick with this checkout on both sides: every row
    measured, the same bytes and checksums on both sides (the same code)."""
    out = run_script(
        COMPACT,
        *("--quick", "--old", str(REPO), "--new", str(REPO), "--data", str(real_root)),
        *("--out", str(tmp_path), "--plot", str(tmp_path / "compact.png")),
        timeout=900,
    )
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| records | row | runs | old wall s | new wall s | old CPU s")
    report = json.loads((tmp_path / "compact.json").read_text())
    bench = load_benchmark(COMPACT)
    assert report["repeats"] == {"60": 1} and len(report["rows"]) == len(bench.ROWS)
    for side in report["raw"]["60"].values():
        for kind, rows in side.items():
            assert len(rows) == 1 and "error" not in rows[0], (kind, rows)
            assert Path(rows[0]["daskmri"]).is_relative_to(REPO)
    by = {row["row"]: row for row in report["rows"]}
    # The same code on both sides: the same stored and held bytes, to the byte.
    assert by["store bytes per record (du)"]["ratio"] == 1.0
    assert by["in-memory dataset bytes per record"]["ratio"] == 1.0
    assert by["build CPU per record"]["old"]["cpu"] > 0
    for row in report["rows"]:
        if row["row"].endswith("default"):
            assert row["old"]["per_record"] > 0 and row["new"]["per_record"] > 0
    checks = [c for c in report["checksums"] if c["checksum"] is not None]
    assert {c["what"] for c in checks} >= {"load_dataset", "open_dataset"}
    assert all(c["verdict"] == "equal" for c in checks), checks
    assert checks[0]["checksum"]["records"] == by["build CPU per record"]["old"]["records"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "compact.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compact_benchmark_refuses_a_side_that_is_not_imported(tmp_path):
    """A child whose PYTHONPATH holds no daskmri must not be measured as that side."""
    bench = load_benchmark(COMPACT)
    row = bench.run_child(tmp_path, ["store", str(tmp_path / "none.zarr"), "0"], timeout=120)
    assert "error" in row and ("not from" in row["error"] or "daskmri" in row["error"])


def test_compact_benchmark_counts_the_cpu_of_child_processes():
    """Timed: a child's CPU counts once it is reaped, as local worker processes do."""
    bench = load_benchmark(COMPACT)
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    with bench.Timed() as timed:
        subprocess.run([sys.executable, "-c", spin], check=True)
    assert timed.cpu >= 0.35 and timed.wall >= 0.35


def test_compact_benchmark_checksum_sees_one_changed_value(tmp_path):
    """The checksum covers every float32 value and mask: one flipped bit changes it,
    and a compact batch widened with the contract's formula hashes like today's."""
    import numpy as np

    bench = load_benchmark(COMPACT)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(3, 8, 8), dtype=np.uint16)
    slope, intercept = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1024.0, 3.0])
    image = (pixels.astype(np.float64) * slope[:, None, None] + intercept[:, None, None]).astype(
        np.float32
    )
    masks = {"a": rng.random((3, 8, 8)) > 0.5, "b": rng.random((3, 8, 8)) > 0.5}
    labels = (masks["a"].astype(np.uint8) << 1) | masks["b"].astype(np.uint8)  # order (b, a)
    batch = {"pixels": pixels, "slope": slope, "intercept": intercept, "labels": labels}
    wide, unpacked = bench.widen_batch(batch, ["a", "b"], ("b", "a"))
    assert np.array_equal(wide.view(np.uint32), image.view(np.uint32))
    assert all(np.array_equal(u, masks[k]) for u, k in zip(unpacked, "ab", strict=True))

    def digest(img, a, b):
        records = {("p", i): bench.record_digest(img[i], [a[i], b[i]]) for i in range(3)}
        return bench.final_digest(records)

    reference = digest(image, masks["a"], masks["b"])
    assert digest(wide, *unpacked) == reference
    flipped = image.copy()
    flipped.view(np.uint32)[2, 7, 7] ^= 1
    assert digest(flipped, masks["a"], masks["b"]) != reference
    other = masks["b"].copy()
    other[0, 0, 0] = ~other[0, 0, 0]
    assert digest(image, masks["a"], other) != reference


GPU = COMPARE.with_name("gpu.py")


@pytest.mark.slow
def test_gpu_benchmark_runs_a_tiny_cpu_version(tmp_path):
    pytest.importorskip("torch")
    out = run_script(
        GPU,
        *("--device", "cpu", "--data", str(tmp_path / "none"), "--synthetic", "20"),
        *("--shape", "32", "--steps", "3", "--warmup", "1", "--batch-size", "4"),
        *("--width", "4", "--out", str(tmp_path)),
    )
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| mode | transfer | images/s | stall")
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["device"] == "CPU" and len(table) - 1 == len(report["rows"]) >= 1
    assert report["rows"][0]["mode"] == "compact=False"
    for row in report["rows"]:
        assert row["steps"] == 3 and 3 <= row["images"] <= 12 and row["images_per_s"] > 0
        assert 0 <= row["stall"] <= 1 and row["step_ms_mean"] > 0


def test_gpu_benchmark_exits_cleanly_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run")
    out = run_script(GPU, "--out", str(tmp_path))
    assert "no CUDA device" in out.stdout and not (tmp_path / "gpu.json").exists()


def test_gpu_benchmark_widens_a_compact_batch_like_the_contract():
    """benchmarks/gpu.py's own widening (used until TorchBatches takes device=): the
    float32 image bit for bit as the contract's numpy formula, and the bits as masks."""
    torch = pytest.importorskip("torch")
    import numpy as np

    bench = load_benchmark(GPU)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, size=(2, 8, 8), dtype=np.uint16)
    slope, intercept = np.array([0.7, 2.0]), np.array([-1024.0, 3.5])
    masks = {"a": rng.random((2, 8, 8)) > 0.5, "b": rng.random((2, 8, 8)) > 0.5}
    labels = masks["a"].astype(np.uint8) | (masks["b"].astype(np.uint8) << 1)
    batch = {
        name: torch.from_numpy(value)
        for name, value in (
            ("pixels", pixels), ("slope", slope), ("intercept", intercept), ("labels", labels)
        )
    }  # fmt: skip
    image, target = bench.widen_on_device(batch, ["b", "a"], ("a", "b"))
    wide = (pixels.astype(np.float64) * slope[:, None, None] + intercept[:, None, None]).astype(
        np.float32
    )
    assert image.shape == (2, 1, 8, 8) and target.shape == (2, 2, 8, 8)
    assert np.array_equal(image[:, 0].numpy().view(np.uint32), wide.view(np.uint32))
    assert np.array_equal(target[:, 0].numpy(), masks["b"].astype(np.float32))
    assert np.array_equal(target[:, 1].numpy(), masks["a"].astype(np.float32))
    today = {"image": torch.from_numpy(wide), "a": torch.from_numpy(masks["a"]),
             "b": torch.from_numpy(masks["b"])}  # fmt: skip
    image2, target2 = bench.widen_on_device(today, ["b", "a"], ("a", "b"))
    assert torch.equal(image2, image) and torch.equal(target2, target)


def test_compact_benchmark_checksums_agree_across_batch_kinds(tmp_path):
    """compact.py's checksums of a dataset, of today's batches and of compact batches
    (made here from today's, as the contract defines them) are one and the same."""
    import numpy as np

    import daskmri

    bench = load_benchmark(COMPACT)
    root = daskmri.synth.make_dataset(tmp_path / "data", patients=2, slices=9, shape=(16, 16))
    ds = daskmri.load_dataset(root, scheduler="sync", chunk_size=4)
    kinds = bench.kinds_of(ds)

    class Compact:
        """Today's batches as compact ones: float32 pixels, slope 1, intercept 0, and
        the kinds' bits in reverse order (so the order is followed, not assumed)."""

        def __init__(self, it) -> None:
            self.it, self.kinds = it, tuple(reversed(kinds))

        def __iter__(self):
            for batch in self.it:
                n = len(batch["image"])
                labels = np.zeros(batch["image"].shape, np.uint8)
                for bit, kind in enumerate(self.kinds):
                    labels |= batch[kind].astype(np.uint8) << bit
                yield {"pixels": batch["image"], "slope": np.ones(n), "labels": labels,
                       "intercept": np.zeros(n), "patient_id": batch["patient_id"],
                       "instance": batch["instance"], "padding": batch["padding"]}  # fmt: skip

    it = daskmri.BatchIterator(ds, batch_size=3, seed=0)
    reference = bench.dataset_checksum(ds)
    assert reference["records"] == ds.sizes["record"] > 0
    assert bench.served_checksum(it, kinds, False) == reference
    assert bench.served_checksum(Compact(it), kinds, True) == reference
    it.close()
    # A compact dataset holds pixels, rescale and labels; image and masks are derived.
    derived = {"image", *kinds}
    held = sum(v.nbytes for name, v in ds.variables.items() if name not in derived)
    assert "pixels" in ds and bench.held_bytes(ds) == held
    assert bench.held_bytes(ds[["image", *kinds]]) == sum(
        ds[name].nbytes for name in ("image", *kinds)
    ) + sum(c.nbytes for c in ds.coords.values())


def test_codecs_benchmark_prints_every_codec_and_checks_round_trips(real_root):
    """benchmarks/codecs.py on the sample itself: a row per candidate, sorted by bytes,
    the default's row among them (each round trip is checked inside the script)."""
    out = run_script(
        REPO / "benchmarks" / "codecs.py",
        *("--records", "56", "--repeats", "1", "--data", str(real_root)),
        timeout=600,
    )
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 8
    sizes = [float(line.split("|")[2]) for line in rows]
    assert sizes == sorted(sizes) and all(s > 0 for s in sizes)
    assert any("(blosc-lz4, the default)" in line for line in rows)


def test_compact_benchmark_measures_only_the_kinds_asked(real_root, tmp_path):
    """--kinds build: the build rows only, each side once; store needs build."""
    args = ("--old", str(REPO), "--new", str(REPO), "--data", str(real_root))
    run_script(
        COMPACT,
        *args,
        *("--sizes", "60:1", "--kinds", "build", "--out", str(tmp_path)),
        *("--plot", str(tmp_path / "compact.png")),
        timeout=600,
    )
    raw = json.loads((tmp_path / "compact.json").read_text())["raw"]["60"]
    for side in raw.values():
        assert len(side["build"]) == 1 and not side["store"] and not side["memory"]
    refused = subprocess.run(
        [sys.executable, str(COMPACT), *args, "--kinds", "store"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2 and "store needs build" in refused.stderr
