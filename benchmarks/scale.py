"""Build Zarr stores of growing size, and compare compressors.

Part 1 (scale): synthetic 64x64 datasets of 1k, 10k and 100k records (a base set
written once, then replicated with hard links so the disk holds them) are built
to a store, each in a fresh process so that its peak memory is its own. For each
size it reports wall time, records per second, the client's peak RSS, the number
of tasks, the store's size and its compression ratio.

Part 2 (compressors): the real sample replicated to about 2,000 records (or the
synthetic 10k set without it) is built once per compressor; it reports the ratio,
the build time and the read speed of the whole store through ``open_dataset``.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--data ROOT] [--out DIR]
                               [--no-compressors]

The million-record run (``--sizes 100000,1000000 --no-compressors``) is a benchmark
run once, with its figures in docs/performance.md; it is not part of the tests.

Writes ``scale.json`` and ``scale.png`` (with matplotlib) in ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REAL_DATA, peak_rss_mib, pyplot, replicate

import daskmri
from daskmri.store import COMPRESSORS, DEFAULT_COMPRESSOR
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"


def files(path: Path):
    """The store's files, streamed (``Path.rglob`` of Python 3.11 keeps a set of every
    path it yields: 78k paths of a 1M-record store, tens of MiB in this process)."""
    for folder, _, names in os.walk(path):
        for name in names:
            yield os.path.join(folder, name)


def du(path: Path) -> int:
    """Bytes the store's files hold (apparent sizes, as an object store would bill)."""
    return sum(os.stat(p).st_size for p in files(path))


def raw_bytes(store: Path) -> int:
    """Bytes of the store's arrays uncompressed (every slot, as stored)."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    return sum(a.nbytes for _, a in group.arrays() if np.dtype(a.dtype).kind in "fbiu")


def one(root: str, store: str, chunk_size: int, compressor: str, scheduler: str | None) -> dict:
    """One build, in this process; returns its figures."""
    started = time.perf_counter()
    report = daskmri.build(
        root,
        store,
        chunk_size=chunk_size,
        compressor=compressor,
        mode="overwrite",
        **({"scheduler": scheduler} if scheduler else {}),
    )
    seconds = time.perf_counter() - started
    # The build's peak, before this script walks the store.
    peak = peak_rss_mib()
    stored = du(Path(store))
    raw = raw_bytes(Path(store))
    # What an object store would hold: one object per file of the store.
    objects = sum(1 for _ in files(Path(store)))
    return {
        "records": report.records,
        "dropped": report.dropped,
        "seconds": seconds,
        "records_per_s": report.records / seconds,
        "client_peak_rss_mib": peak,
        "tasks": report.parsed_chunks,
        "store_bytes": stored,
        "objects": objects,
        "raw_bytes": raw,
        "ratio": raw / stored,
    }


def in_subprocess(root, store, chunk_size, compressor, scheduler) -> dict:
    argv = [sys.executable, __file__, "--one", str(root), str(store), str(chunk_size), compressor]
    if scheduler:
        argv.append(scheduler)
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_speed(store: Path, repeat: int = 3) -> float:
    """Seconds to read every record of the store (pixels and masks) through open_dataset,
    best of ``repeat``, with the threaded scheduler (decompression releases the GIL)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        ds = daskmri.open_dataset(store)
        ds[["image", "icontour", "ocontour"]].compute(scheduler="threads")
        best = min(best, time.perf_counter() - started)
    return best


def compressors(args, base: Path, work: Path) -> tuple[str, list[dict]]:
    """Part 2: one build per compressor, on real data where there is some; prints the
    table and returns ``(what was built, rows)``."""
    if (args.data / "link.csv").is_file():
        source, label = replicate(args.data, args.records, work / "real"), "real sample"
    else:
        source, label = replicate(base, 10000, work / "synthetic"), "synthetic"
    codecs = []
    for compressor in COMPRESSORS:
        store = work / f"codec-{compressor}.zarr"
        row = {"compressor": compressor} | in_subprocess(
            source, store, args.chunk_size, compressor, args.scheduler
        )
        row["read_seconds"] = read_speed(store)
        row["read_mib_per_s"] = row["raw_bytes"] / 2**20 / row["read_seconds"]
        codecs.append(row)
        shutil.rmtree(store)
    print(f"\n## Compressors ({label}, {codecs[0]['records']:,} records)\n")
    print("| compressor | store MiB | ratio | build s | read all s | read MiB/s (raw) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in codecs:
        print(
            f"| {r['compressor']} | {r['store_bytes'] / 2**20:.1f} | {r['ratio']:.1f} | "
            f"{r['seconds']:.2f} | {r['read_seconds']:.2f} | {r['read_mib_per_s']:.0f} |"
        )
    return label, codecs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--records", type=int, default=2000, help="real records, part 2")
    parser.add_argument("--scheduler", default=None, help="local scheduler (default: daskmri's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-compressors", action="store_true", help="skip part 2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="daskmri-scale-"))
    if args.workdir is None:  # made here: removed here
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    sizes = [int(s) for s in args.sizes.split(",")]

    # A base of about 1,000 labelled records (two thirds of synthetic slices carry a
    # contour), then hard-linked copies of it.
    base = daskmri.synth.make_dataset(work / "base", patients=15, slices=100, shape=(64, 64))
    print(f"base set: {len(daskmri.scan(base).table)} records in {base}", flush=True)

    rows = []
    for size in sizes:
        root = replicate(base, size, work / f"n{size}")
        store = work / f"n{size}.zarr"
        row = {"size": size} | in_subprocess(
            root, store, args.chunk_size, DEFAULT_COMPRESSOR, args.scheduler
        )
        rows.append(row)
        print(
            f"{row['records']:>7} records  {row['seconds']:7.1f} s  "
            f"{row['records_per_s']:6.0f} rec/s  client {row['client_peak_rss_mib']:5.0f} MiB  "
            f"{row['tasks']:5d} tasks  store {row['store_bytes'] / 2**20:7.1f} MiB  "
            f"ratio {row['ratio']:5.1f}",
            flush=True,
        )
        shutil.rmtree(store)
        shutil.rmtree(root.parent)

    print("\n## Scale (synthetic 64x64)\n")
    print(
        "| records | wall s | records/s | s per 1k records | client peak RSS MiB | tasks | "
        "records/task | store MiB | objects | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['records']:,} | {r['seconds']:.1f} | {r['records_per_s']:.0f} | "
            f"{1000 * r['seconds'] / r['records']:.2f} | {r['client_peak_rss_mib']:.0f} | "
            f"{r['tasks']:,} | {r['records'] / r['tasks']:.1f} | {r['store_bytes'] / 2**20:.1f} | "
            f"{r['objects']:,} | {r['ratio']:.1f} |"
        )
    per_record = {r["size"]: r["seconds"] / r["records"] for r in rows}
    for small, large in ((10_000, 100_000), (100_000, 1_000_000)):
        if small in per_record and large in per_record:
            change = per_record[large] / per_record[small] - 1
            print(f"\ntime per record, {small:,} -> {large:,}: {change:+.0%} (goal: within +/-25%)")

    label, codecs = ("skipped", []) if args.no_compressors else compressors(args, base, work)

    info = versions()
    (args.out / "scale.json").write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": {"cores": os.cpu_count(), **info},
                "scale": rows,
                "compressors": {"data": label, "rows": codecs},
            },
            indent=2,
            default=str,
        )
    )
    plt = pyplot()
    if plt is None:
        print(f"wrote {args.out / 'scale.json'} (no plot: matplotlib is not installed)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    n = np.array([r["records"] for r in rows])
    per_k = [1000 * r["seconds"] / r["records"] for r in rows]
    axes[0].semilogx(n, per_k, "o-")
    for x, y, r in zip(n, per_k, rows, strict=True):
        axes[0].annotate(f"{r['seconds']:.1f} s", (x, y), textcoords="offset points", xytext=(0, 6))
    axes[0].set(xlabel="records", ylabel="seconds per 1,000 records", title="Time per record")
    axes[0].set_ylim(0, max(per_k) * 1.25)
    axes[1].semilogx(n, [r["client_peak_rss_mib"] for r in rows], "o-")
    axes[1].set(xlabel="records", ylabel="client peak RSS (MiB)", title="Client memory")
    axes[1].set_ylim(bottom=0)
    names = [r["compressor"] for r in codecs]
    axes[2].bar(names, [r["ratio"] for r in codecs])
    for k, r in enumerate(codecs):
        axes[2].text(k, r["ratio"], f"{r['read_mib_per_s']:.0f} MiB/s", ha="center", va="bottom")
    axes[2].set(ylabel="compression ratio", title=f"Compressors ({label})")
    axes[2].set_ylim(0, max((r["ratio"] for r in codecs), default=1) * 1.2)
    fig.tight_layout()
    fig.savefig(args.out / "scale.png", dpi=120)
    print(f"wrote {args.out / 'scale.json'} and {args.out / 'scale.png'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        root, store, chunk_size, compressor, *rest = sys.argv[2:]
        print(json.dumps(one(root, store, int(chunk_size), compressor, rest[0] if rest else None)))
    else:
        main()
