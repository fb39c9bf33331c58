"""The same data from local disk and from a local S3 server, in one run::

    python benchmarks/objectstore.py [--data ROOT | --synthetic N] [--records 500]
                                     [--repeat K] [--out DIR]

The S3 server is moto's server mode, started here on 127.0.0.1 (as the tests start
it: ``tests/s3.py``; ``pip install -e '.[test]'``). Rows, each the median of ``K``
runs after a warm-up whose records must match the local run's:

* **scan** of the dataset folder;
* **load_dataset** in one process (``scheduler="sync"``), with a chunk's files
  fetched concurrently (the default) and one request after another (the
  difference is the point of the concurrent fetch);
* **build** with two local worker processes: local folder to local store, S3 folder
  to local store, local folder to a store on S3;
* **an epoch** of ``BatchIterator`` (batches of 8) from the local store and from the
  store on S3.

Output: a Markdown table (records/s, and the ratio to the same work on local disk)
on stdout, ``objectstore.json`` and ``objectstore.png`` (with matplotlib) in ``--out``.
moto is a Python server on the same 2 cores: its latency is about a millisecond,
where a cloud store's is 10-100 ms, and its throughput is far lower.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests.s3: the server the tests use

from common import REAL_DATA, bench_root, pyplot  # noqa: E402

import daskmri  # noqa: E402
import daskmri.parse  # noqa: E402

RESULTS = HERE / "results"


def _checksum(ds) -> list:
    keys = sorted(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True))
    return [[str(p), int(i)] for p, i in keys] + [round(float(ds.image.sum().compute()), 1)]


def _timed(run, repeat: int) -> tuple[list[float], object]:
    result = run()  # the warm-up, checked by the caller
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples, result


def _sequential_fetch():
    """The chunk task's concurrent fetch turned off (in this process: the sync rows)."""
    concurrent = daskmri.parse.fetched
    daskmri.parse.fetched = lambda records: records
    return lambda: setattr(daskmri.parse, "fetched", concurrent)


def _epoch(store: str, options: dict | None) -> float:
    ds = daskmri.open_dataset(store, storage_options=options)
    it = daskmri.BatchIterator(ds, batch_size=8, seed=0)
    total = 0.0
    for batch in it:
        total += float(batch["image"].sum(dtype=np.float64))
    it.close()
    return round(total, 1)


def _build(root, store, source_options=None, storage_options=None):
    daskmri.build(
        root,
        store,
        mode="overwrite",
        scheduler="processes",
        source_options=source_options,
        storage_options=storage_options,
    )
    return daskmri.open_dataset(store, storage_options=storage_options)


def _plan(root: Path, url: str, work: Path, s3) -> list[tuple]:
    """``(section, configuration, run)``; the first row of a section is the local one."""
    src = s3.options()
    here, there = str(work / "ds.zarr"), f"s3://{s3.bucket}/bench/ds.zarr"
    return [
        ("scan", "local", lambda: len(daskmri.scan(root))),
        ("scan", "S3", lambda: len(daskmri.scan(url, source_options=src))),
        ("load_dataset (sync)", "local", lambda: daskmri.load_dataset(root, scheduler="sync")),
        (
            "load_dataset (sync)",
            "S3, a chunk's files fetched at once",
            lambda: daskmri.load_dataset(url, scheduler="sync", source_options=src),
        ),
        (
            "load_dataset (sync)",
            "S3, one request at a time",
            lambda: daskmri.load_dataset(url, scheduler="sync", source_options=src),
        ),
        ("build (2 processes)", "local folder to local store", lambda: _build(root, here)),
        ("build (2 processes)", "S3 folder to local store", lambda: _build(url, here, src)),
        (
            "build (2 processes)",
            "local folder to store on S3",
            lambda: _build(root, there, None, src),
        ),
        ("epoch (batches of 8)", "local store", lambda: _epoch(here, None)),
        ("epoch (batches of 8)", "store on S3", lambda: _epoch(there, src)),
    ]


def _row(section: str, name: str, run, repeat: int) -> dict:
    restore = _sequential_fetch() if "one request" in name else (lambda: None)
    row = {"section": section, "configuration": name}
    try:
        samples, result = _timed(run, repeat)
        row["samples"] = samples
        row["checksum"] = _checksum(result) if hasattr(result, "image") else result
    except Exception as exc:  # a failed row is shown, not hidden
        row["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        restore()
    return row


def _compare(rows: list[dict], n: int) -> None:
    """Records/s, and the ratio to the section's local row; a row that served other
    records or pixels than its local row failed."""
    local = {}
    for row in rows:
        if "error" in row:
            continue
        row["median_s"] = statistics.median(row["samples"])
        row["records_per_s"] = n / row["median_s"]
        base = local.setdefault(row["section"], row)
        if row["checksum"] != base["checksum"]:
            row["error"] = "served other records or pixels than the local run"
        row["x_local"] = row["records_per_s"] / base["records_per_s"]


def _table(rows: list[dict]) -> None:
    print("| section | configuration | median s | min s | max s | records/s | x local |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['section']} | {row['configuration']} | failed: {row['error']} |||||")
            continue
        print(
            f"| {row['section']} | {row['configuration']} | {row['median_s']:.3f} | "
            f"{min(row['samples']):.3f} | {max(row['samples']):.3f} | "
            f"{row['records_per_s']:,.0f} | {row['x_local']:.2f}x |"
        )


def _plot(rows: list[dict], path: Path, label: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ok) + 1.2))
    names = [f"{r['section']}: {r['configuration']}" for r in ok]
    ax.barh(names[::-1], [r["records_per_s"] for r in ok][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("records/s (log)")
    ax.set_title(f"local disk vs a local S3 server (moto), {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--synthetic", type=int, default=None, metavar="N")
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from daskmri.versions import versions
    from tests.s3 import s3_server

    work = Path(tempfile.mkdtemp(prefix="daskmri-objectstore-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    root, label = bench_root(args.data, args.synthetic, args.records, work)
    n = len(daskmri.scan(root))
    with s3_server(work) as s3:
        url = s3.upload(root, "data")
        print(f"{n} records ({label}); S3 at {s3.endpoint}; {args.repeat} runs after a warm-up\n")
        rows = [_row(*row, args.repeat) for row in _plan(root, url, work, s3)]
    _compare(rows, n)
    info = versions()
    print(f"\n{n:,} records ({label}), {datetime.date.today()}, {info['cpu_count']} cores\n")
    _table(rows)
    report = {"records": n, "label": label, "repeat": args.repeat, "machine": info, "rows": rows}
    (args.out / "objectstore.json").write_text(json.dumps(report, indent=1, default=str))
    _plot(rows, args.out / "objectstore.png", f"{n:,} records")


if __name__ == "__main__":
    main()
