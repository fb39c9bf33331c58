"""Epochs of random batches through ``BatchIterator``, against a plain parsing loop.

All in one run, on the real Sunnybrook sample replicated (hard links) to about
2,000 labelled records::

    python benchmarks/iterate.py [--data ROOT] [--records 2000] [--repeat 3]

For each source of a built dataset (in local memory from ``load_dataset``,
persisted on a ``LocalCluster``, and a Zarr store read locally and through the
cluster) it reports records per second for a full epoch in batches of 8, and the
stall fraction: the share of the time a simulated 10 ms training step spends
waiting for its next batch. Every epoch must serve each record exactly once with
the plain loop's pixels (a checksum) before its speed is shown. It also measures
the iterator's peak memory (tracemalloc) on the Zarr store and on one 4x larger.
A last row runs 2 ranks: two processes read one Zarr store at once, each its share
of every epoch (``BatchIterator(rank=r, world_size=2)``): aggregate records/s, the
stall of each rank, and the chunks each fetched. Writes ``iterate.json`` and
``iterate.png`` in ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from common import REAL_DATA, pyplot, replicate, require_data, stall

import daskmri
from daskmri.testing import eager_load
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"
STEP = 0.010  # the simulated training step, seconds


def checksum(records: list[tuple[str, int]], image_sum: float) -> tuple:
    return (tuple(sorted(records)), round(image_sum, 1))


def served(it) -> tuple:
    """What one epoch served (not timed: summing pixels is the consumer's work)."""
    keys, total = [], 0.0
    for batch in it:
        keys.extend(zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True))
        total += float(batch["image"].sum(dtype=np.float64))
    return checksum(keys, total)


def epoch(it) -> float:
    """Seconds for one epoch, taking each batch and doing nothing with it."""
    started = time.perf_counter()
    for batch in it:
        del batch
    return time.perf_counter() - started


def rank_worker(store: str, rank: int, world_size: int, repeat: int) -> None:
    """One rank of the 2-rank row, in its own process: a checked warm-up epoch, then
    (when the parent says go, so that the ranks run side by side) timed epochs and a
    stall epoch. Prints one JSON line."""
    ds = daskmri.open_dataset(store)
    it = daskmri.BatchIterator(ds, batch_size=8, seed=0, rank=rank, world_size=world_size)
    keys, total = [], 0.0
    for batch in it:
        real = ~batch["padding"]
        ids, instances = batch["patient_id"][real].tolist(), batch["instance"][real].tolist()
        keys.extend(zip(ids, instances, strict=True))
        total += float(batch["image"][real].sum(dtype=np.float64))
    print("ready", flush=True)
    sys.stdin.readline()
    samples, chunks = [], []
    for _ in range(repeat):
        before = it.chunks_fetched
        samples.append(epoch(it))
        chunks.append(it.chunks_fetched - before)
    stall_share, first = stall(it, STEP)
    it.close()
    out = {"keys": keys, "sum": total, "samples": samples, "chunks": chunks,
           "stall": stall_share, "first": first, "batches": len(it)}  # fmt: skip
    print(json.dumps(out), flush=True)


def two_ranks(store: Path, repeat: int, truth: tuple, n: int) -> dict:
    """The 2-rank row: both ranks' processes started, warmed up and checked, then timed
    together; aggregate records/s is the whole epoch over the slower rank's time."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank-worker", str(store), str(r), "2", str(repeat)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for r in range(2)
    ]  # fmt: skip
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a rank process failed before its first epoch")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        ranks = [json.loads(p.communicate(timeout=1800)[0].splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    keys = [tuple(k) for r in ranks for k in r["keys"]]
    if checksum(keys, sum(r["sum"] for r in ranks)) != truth or len(keys) != n:
        raise AssertionError("the 2 ranks did not serve the plain loop's records once")
    slowest = [max(a, b) for a, b in zip(ranks[0]["samples"], ranks[1]["samples"], strict=True)]
    return {
        "source": "Zarr store, 2 ranks (2 processes, each its share)",
        "samples": slowest,
        "stall": max(r["stall"] for r in ranks),
        "stall_per_rank": [r["stall"] for r in ranks],
        "first_batch_s": max(r["first"] for r in ranks),
        "chunks_per_rank": [r["chunks"][0] for r in ranks],
        "batches_per_rank": [r["batches"] for r in ranks],
    }


def iterator_peak(ds) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        for batch in daskmri.BatchIterator(ds, batch_size=8, seed=0):
            del batch
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def timed_sources(root: Path, store: Path, repeat: int, truth: tuple) -> list[dict]:
    """One row per source of the built dataset: a checked warm-up epoch, then timed
    epochs and a stall epoch."""
    from distributed import Client, LocalCluster

    rows = []
    sources = [
        # scheduler= explicitly: the cluster below becomes the default client.
        ("load_dataset, in local memory",
         lambda: daskmri.load_dataset(root, scheduler="processes"), None),
        ("Zarr store, local threads", lambda: daskmri.open_dataset(store), None),
    ]  # fmt: skip
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    )
    client = Client(cluster, set_as_default=False)
    sources += [
        ("load_dataset, persisted on a LocalCluster 2x1",
         lambda: daskmri.load_dataset(root, client=client), client),
        ("Zarr store, through a LocalCluster 2x1", lambda: daskmri.open_dataset(store), client),
    ]  # fmt: skip
    try:
        for name, make, where in sources:
            ds = make()
            it = daskmri.BatchIterator(ds, batch_size=8, seed=0, client=where)
            row = {"source": name}
            try:
                # Also the warm-up: every record once, with the plain loop's pixels.
                if served(it) != truth:
                    raise AssertionError("the epoch did not serve the plain loop's records")
                samples = [epoch(it) for _ in range(repeat)]
                row["samples"] = samples
                row["stall"], row["first_batch_s"] = stall(it, STEP)
            except Exception as exc:  # a failed configuration is shown, not left out
                row["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                it.close()
            rows.append(row)
            print(row, flush=True)
    finally:
        client.close()
        cluster.close()
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--rank-worker"]:
        store, rank, world, repeat = sys.argv[2:6]
        return rank_worker(store, int(rank), int(world), int(repeat))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="daskmri-iterate-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    root = replicate(require_data(args.data), args.records, work)

    # The plain loop: parse DICOM, contours and masks per item, every epoch.
    started = time.perf_counter()
    plain = eager_load(root)
    plain_s = time.perf_counter() - started
    n = plain.sizes["record"]
    truth = checksum(
        list(zip(plain.patient_id.values.tolist(), plain.instance.values.tolist(), strict=True)),
        float(plain.image.values.sum(dtype=np.float64)),
    )
    rows = [{"source": "plain loop (parse every item, every epoch)", "samples": [plain_s]}]
    print(f"plain loop: {n} records in {plain_s:.2f} s ({n / plain_s:.0f} records/s)", flush=True)

    store = work / "ds.zarr"
    daskmri.build(root, store)
    rows += timed_sources(root, store, args.repeat, truth)
    try:
        rows.append(two_ranks(store, args.repeat, truth, n))
    except Exception as exc:
        rows.append({"source": "Zarr store, 2 ranks", "error": f"{type(exc).__name__}: {exc}"})
    print(rows[-1], flush=True)
    n_chunks = len(daskmri.open_dataset(store).image.chunks[0])

    # Peak memory of the iterator: the store, and a store 4x larger.
    big_root = replicate(args.data, 4 * args.records, work / "big")
    big_store = work / "big.zarr"
    daskmri.build(big_root, big_store)
    memory = {
        "records": [n, daskmri.open_dataset(big_store).sizes["record"]],
        "peak_mib": [
            iterator_peak(daskmri.open_dataset(store)),
            iterator_peak(daskmri.open_dataset(big_store)),
        ],
    }

    report(rows, n, n / plain_s, memory, n_chunks)
    (args.out / "iterate.json").write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": versions(),
                "records": n,
                "rows": rows,
                "memory": memory,
            },
            indent=2,
            default=str,
        )
    )
    plot(rows, n, n / plain_s, args.out)


def report(rows: list[dict], n: int, plain_rate: float, memory: dict, n_chunks: int) -> None:
    """The table of one run, as Markdown."""
    print(f"\n## Epochs in batches of 8 ({n:,} real records, one run)\n")
    print("| source | median s | min s | max s | records/s | x plain loop | stall at 10 ms step "
          "| first batch s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['source']} | failed: {row['error']} | | | | | | |")
            continue
        med = statistics.median(row["samples"])
        stall_text = f"{row['stall']:.1%}" if "stall" in row else "-"
        first = f"{row['first_batch_s']:.3f}" if "first_batch_s" in row else "-"
        print(
            f"| {row['source']} | {med:.3f} | {min(row['samples']):.3f} | "
            f"{max(row['samples']):.3f} | {n / med:,.0f} | {n / med / plain_rate:.1f}x | "
            f"{stall_text} | {first} |"
        )
    if "chunks_per_rank" in rows[-1]:
        print(
            f"\n2 ranks: chunks fetched per epoch {rows[-1]['chunks_per_rank']} of {n_chunks}, "
            f"batches per rank {rows[-1]['batches_per_rank']}, stall per rank "
            + ", ".join(f"{s:.1%}" for s in rows[-1]["stall_per_rank"])
        )
    print(
        f"\niterator peak memory (tracemalloc): {memory['peak_mib'][0]:.0f} MiB for "
        f"{memory['records'][0]:,} records, {memory['peak_mib'][1]:.0f} MiB for "
        f"{memory['records'][1]:,}"
    )


def plot(rows: list[dict], n: int, plain_rate: float, out: Path) -> None:
    """records/s of each row, with the spread of the samples, on a log scale."""
    plt = pyplot()
    if plt is None:
        print(f"wrote {out / 'iterate.json'} (no plot: matplotlib is not installed)")
        return
    ok = [r for r in rows if "samples" in r]
    rates = [n / statistics.median(r["samples"]) for r in ok]
    low = [n / max(r["samples"]) for r in ok]
    high = [n / min(r["samples"]) for r in ok]
    fig, ax = plt.subplots(figsize=(9, 4))
    y = np.arange(len(ok))
    ax.barh(
        y,
        rates,
        xerr=[np.subtract(rates, low), np.subtract(high, rates)],
        color=["grey"] + ["tab:blue"] * (len(ok) - 1),
    )
    ax.set_yticks(y, [r["source"] for r in ok], fontsize=8)
    ax.set_xscale("log")
    ax.axvline(25 * plain_rate, color="tab:red", linestyle="--", label="goal: 25x plain loop")
    ax.set_xlabel("records per second (log)")
    ax.set_title(f"Epochs in batches of 8, {n:,} real records")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "iterate.png", dpi=120)
    print(f"wrote {out / 'iterate.json'} and {out / 'iterate.png'}")


if __name__ == "__main__":
    main()
