"""Time ``daskmri.report`` and measure the client's peak memory as the store grows.

The real Sunnybrook sample is replicated (hard links, ``common.replicate``) to each
size, built once into a store (``daskmri.build``), and reported from
``daskmri.open_dataset`` in a fresh process per size, so that each peak is its own::

    python benchmarks/report.py [--sizes 2016,20000] [--data ROOT] [--window N]
                                [--out benchmarks/results] [--plot docs/images/...]

Memory: the resident set size (RSS) of the process running the report, sampled
every 20 ms by a thread with psutil; the table shows its peak during the report
and the growth over the RSS just before it (the dataset opened, imports done).
It prints a Markdown table and writes ``report.json`` in ``--out`` and a plot of
time and memory against records (with matplotlib).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REAL_DATA, pyplot, replicate, require_data

import daskmri
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"
PLOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "report-benchmark.png"


class PeakRss:
    """The peak RSS of this process while the block runs, sampled in a thread."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self.process, self.every = psutil.Process(), every
        self.start = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()

    def sample(self) -> None:
        while not self.stop.wait(self.every):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def one(store: str, out: str, window: int | None) -> dict:
    """One report of the store, in this process; returns its figures."""
    ds = daskmri.open_dataset(store)
    with PeakRss() as rss:
        started = time.perf_counter()
        summary = daskmri.report(ds, out, window=window)
        seconds = time.perf_counter() - started
    pngs = sum(p.stat().st_size for p in Path(out, "img").rglob("*.png"))
    return {
        "records": summary.records,
        "patients": summary.patients,
        "chunks": len(ds.chunks["record"]),
        "seconds": seconds,
        "records_per_s": summary.records / seconds,
        "rss_before_mib": rss.start / 2**20,
        "rss_peak_mib": rss.peak / 2**20,
        "rss_growth_mib": (rss.peak - rss.start) / 2**20,
        "png_mib": pngs / 2**20,
    }


def in_subprocess(store: Path, out: Path, window: int | None) -> dict:
    argv = [sys.executable, __file__, "--one", str(store), str(out)]
    if window:
        argv += ["--window", str(window)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=7200)
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path, cores: int) -> None:
    plt = pyplot()
    if plt is None:
        print("no plot: pip install 'daskmri[plot]'")
        return
    records = [r["records"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(records, [r["seconds"] for r in rows], "o-", color="#4477aa")
    left.set(xlabel="records", ylabel="seconds", title="daskmri.report wall time")
    right.plot(records, [r["rss_peak_mib"] for r in rows], "o-", color="#aa3377", label="peak")
    right.plot(records, [r["rss_before_mib"] for r in rows], "o--", color="#999", label="before")
    right.set(xlabel="records", ylabel="MiB", title="client RSS (psutil, sampled)")
    right.legend()
    for ax in (left, right):
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"QC report of the real sample replicated, {cores} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2016,20000", help="records, comma-separated")
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--window", type=int, help="chunks in flight (default: report's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--one", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.window)))
        return
    work = Path(tempfile.mkdtemp(prefix="daskmri-report-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    data, rows = require_data(args.data), []
    for size in (int(s) for s in args.sizes.split(",")):
        root = replicate(data, size, work / "real")
        store = work / f"{size}.zarr"
        started = time.perf_counter()
        daskmri.build(root, store)
        built = time.perf_counter() - started
        row = {"asked": size, "build_s": built} | in_subprocess(
            store, work / f"qc-{size}", args.window
        )
        rows.append(row)
        print(f"  {row['records']} records: {row['seconds']:.1f} s", flush=True)
        shutil.rmtree(work / f"qc-{size}")  # made by this run's report
    info = versions()
    print(
        f"\n{datetime.date.today()}, {info['cpu_count']} cores, "
        f"{info['memory_bytes'] / 2**30:.0f} GiB, Python {info['python']}, dask {info['dask']}\n"
    )
    print("| records | patients | chunks | report s | records/s | RSS before MiB | RSS peak MiB "
          "| growth MiB | PNGs MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['records']} | {r['patients']} | {r['chunks']} | {r['seconds']:.1f} "
            f"| {r['records_per_s']:.0f} | {r['rss_before_mib']:.0f} | {r['rss_peak_mib']:.0f} "
            f"| {r['rss_growth_mib']:.0f} | {r['png_mib']:.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": str(datetime.date.today()), "machine": info, "rows": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.plot, info["cpu_count"])
    print(f"wrote {args.out / 'report.json'} and {args.plot}")


if __name__ == "__main__":
    main()
