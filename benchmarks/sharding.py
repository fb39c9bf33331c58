"""Measure Zarr v3 sharding against today's chunking (issue 13), on real data::

    python benchmarks/sharding.py [--data ROOT] [--records 2000] | --synthetic N
                                  [--repeat K] [--singles 200] [--batches 25] [--out DIR]

The sample is replicated to about ``--records`` records and loaded once
(``load_dataset(..., scheduler="sync")``); its image (float32) and icontour and
ocontour (bool) arrays are then written with zarr-python directly, once per layout:

* today's: chunks of 64 records, no shards;
* shards of 64 records (one per task, as today's chunks) with inner chunks of
  16, 8 and 1 record(s), so that a reader can fetch one inner chunk of a shard;
* shards of 256 records with inner chunks of 64 (fewer objects, today's reads);
* chunks of 256 records, no shards, for contrast.

For each layout, the median of ``K`` repeats of: writing every shard (or chunk) in
its own call, as a build task does; reading every shard (or chunk) whole, as
``BatchIterator`` does; reading ``--singles`` random records one by one (image and
both masks), as a random-access user does; reading ``--batches`` random batches of
8 records. Each is timed in wall seconds and in CPU seconds of this process
(``time.process_time``, all threads): the machine may be shared, and CPU time is
the steadier figure when it is. The store stays on local disk, so reads hit the
page cache: the figures are decode and call costs, not network latency.

It also counts, from the layout alone, the objects a daskmri store of 1,000,000
records would hold with each layout (the arrays of ``daskmri.store.format``).

Output: a Markdown table on stdout, ``sharding.json`` (raw samples, machine facts)
and ``sharding.png`` (with matplotlib) in ``--out``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REAL_DATA, bench_root, pyplot  # noqa: E402

RESULTS = HERE / "results"
ARRAYS = ("image", "icontour", "ocontour")
BATCH = 8
MILLION = 1_000_000

#: (name, records per chunk, records per shard or None): the layouts measured.
LAYOUTS = (
    ("chunks 64 (today)", 64, None),
    ("shards 64 / inner 16", 16, 64),
    ("shards 64 / inner 8", 8, 64),
    ("shards 64 / inner 1", 1, 64),
    ("shards 256 / inner 64", 64, 256),
    ("chunks 256", 256, None),
)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def load(args, work: Path) -> tuple[dict[str, np.ndarray], str]:
    """The arrays to write, in memory, and a label for what they are."""
    import daskmri

    root, label = bench_root(args.data, args.synthetic, args.records, work)
    ds = daskmri.load_dataset(root, scheduler="sync")
    data = {name: np.ascontiguousarray(ds[name].values) for name in ARRAYS}
    return data, label


def units(n: int, chunk: int, shard: int | None) -> list[slice]:
    """The record ranges a task writes whole: one per shard, or per chunk unsharded."""
    step = shard or chunk
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def create(store: Path, data: dict[str, np.ndarray], chunk: int, shard: int | None) -> dict:
    """Empty arrays of ``data``'s shapes in a new group at ``store``, with daskmri's
    codec and ``write_empty_chunks`` (a task writes its chunks even when all zero)."""
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    arrays = {}
    for name, values in data.items():
        frame = values.shape[1:]
        arrays[name] = group.create_array(
            name,
            shape=values.shape,
            chunks=(chunk, *frame),
            shards=(shard, *frame) if shard else None,
            dtype=values.dtype,
            fill_value=False if values.dtype == bool else 0.0,
            compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
            config={"write_empty_chunks": True},
        )
    return arrays


def store_size(store: Path) -> tuple[int, int]:
    """(objects, bytes) of the store: one object per file, as an object store holds."""
    files = [p for p in store.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure(layout, data, store: Path, args, rng) -> dict:
    """One layout: the samples of ``args.repeat`` repeats of each operation."""
    name, chunk, shard = layout
    n = len(data["image"])
    ranges = units(n, chunk, shard)
    picks = [int(i) for i in rng.integers(0, n, args.singles)]
    # Sorted within a batch: the order zarr reads in anyway, and what a sampler can do.
    batches = [np.sort(rng.choice(n, min(BATCH, n), replace=False)) for _ in range(args.batches)]
    samples = {op: [] for op in ("write", "read_all", "singles", "batches")}
    for _ in range(args.repeat):
        shutil.rmtree(store, ignore_errors=True)
        arrays = create(store, data, chunk, shard)

        def write(arrays=arrays):
            """One call per shard (or chunk) and array, as a build task writes."""
            for r in ranges:
                for key, a in arrays.items():
                    a[r] = data[key][r]

        samples["write"].append(timed(write))
        arrays = create_reader(store)
        samples["read_all"].append(timed(lambda a=arrays: [a[k][r] for r in ranges for k in a]))
        samples["singles"].append(timed(lambda a=arrays: [a[k][i] for i in picks for k in a]))
        samples["batches"].append(
            timed(lambda a=arrays: [a[k].oindex[b] for b in batches for k in a])
        )
    objects, size = store_size(store)
    shutil.rmtree(store, ignore_errors=True)
    row = {"layout": name, "chunk": chunk, "shard": shard, "objects": objects, "bytes": size}
    row |= {"samples": samples, "tasks": len(ranges)}
    row |= {"n_singles": len(picks), "n_batches": len(batches)}
    for op, pairs in samples.items():
        row[f"{op}_s"] = statistics.median(w for w, _ in pairs)
        row[f"{op}_cpu_s"] = statistics.median(c for _, c in pairs)
    row["million_objects"] = million_objects(chunk, shard)
    return row


def create_reader(store: Path) -> dict:
    """The arrays of ``store`` opened afresh, read only: no state left by the writer."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    return {name: group[name] for name in ARRAYS}


def store_objects(slots: int, tasks: int, kinds=None) -> int:
    """Objects of a daskmri store of ``slots`` slots built by ``tasks`` tasks, each
    task writing one object (chunk or shard) per pixel array, rescale array and of
    ``geometry``.

    Counted from ``daskmri.store.format``: per pixel array and ``geometry``, one
    object per task; ``done``, one marker per task (chunks of 1); per-slot tables,
    one object per ``TABLE_CHUNK`` slots; one ``zarr.json`` per array and the group's.
    """
    import daskmri
    from daskmri.store.format import RESCALE, TABLE_CHUNK, per_slot, pixel_names

    kinds = daskmri.SUNNYBROOK.kinds if kinds is None else kinds
    # The pixel arrays and the rescale, each chunked as the pixels.
    pixels, tables = len(pixel_names(kinds)) + len(RESCALE), len(per_slot(kinds))
    per_task = pixels + 1 + 1  # those arrays, geometry, the done marker
    metadata = pixels + tables + 2 + 1  # arrays, geometry and done, then the group
    return per_task * tasks + tables * -(-slots // TABLE_CHUNK) + metadata


def million_objects(chunk: int, shard: int | None, records: int = MILLION) -> int:
    """Objects of a 1,000,000-record daskmri store (64x64 or any frame: the count does
    not depend on it) if every task wrote one shard, or one chunk unsharded, of
    records packed full; the inner chunks of a shard are not objects."""
    return store_objects(records, -(-records // (shard or chunk)))


def table(rows: list[dict], n: int, label: str) -> None:
    """The Markdown table of the results."""
    print(f"\n## Sharding ({label}, {n:,} records, 256x256; median of the repeats)\n")
    print(
        "| layout | objects | MiB | write s (CPU) | read all s (CPU) | "
        "single record ms (CPU) | batch of 8 ms (CPU) | objects at 1M records |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        singles, batches = 1000 / r["n_singles"], 1000 / r["n_batches"]
        print(
            f"| {r['layout']} | {r['objects']:,} | {r['bytes'] / 2**20:.1f} | "
            f"{r['write_s']:.2f} ({r['write_cpu_s']:.2f}) | "
            f"{r['read_all_s']:.2f} ({r['read_all_cpu_s']:.2f}) | "
            f"{r['singles_s'] * singles:.1f} ({r['singles_cpu_s'] * singles:.1f}) | "
            f"{r['batches_s'] * batches:.1f} ({r['batches_cpu_s'] * batches:.1f}) | "
            f"{r['million_objects']:,} |"
        )


def plot(rows: list[dict], path: Path) -> bool:
    """Bars of each operation's median wall (and CPU) time per layout; False without
    matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    panels = (
        ("write_s", 1.0, "write all (s)"),
        ("read_all_s", 1.0, "read every shard/chunk (s)"),
        ("singles_s", None, "one random record (ms)"),
        ("batches_s", None, "random batch of 8 (ms)"),
    )
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.5))
    names = [r["layout"] for r in rows]
    y = np.arange(len(rows))
    for ax, (key, scale, title) in zip(axes, panels, strict=True):
        per = [scale or 1000 / r["n_" + key.split("_")[0]] for r in rows]
        cpu = key.replace("_s", "_cpu_s")
        ax.barh(y + 0.2, [r[key] * p for r, p in zip(rows, per, strict=True)], 0.4, label="wall")
        ax.barh(y - 0.2, [r[cpu] * p for r, p in zip(rows, per, strict=True)], 0.4, label="CPU")
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set(title=title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    """Load the records once, measure every layout, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, default=REAL_DATA, help="replicated to --records")
    source.add_argument("--synthetic", type=int, metavar="N", help="a synthetic set of ~N records")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--singles", type=int, default=200, help="random records read one by one")
    parser.add_argument("--batches", type=int, default=25, help="random batches of 8 read")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="daskmri-sharding-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here

    from daskmri.versions import versions

    started = time.perf_counter()
    data, label = load(args, work)
    n = len(data["image"])
    print(f"{n} records ({label}) loaded in {time.perf_counter() - started:.1f} s", flush=True)
    load_avg = os.getloadavg()
    rows = []
    for layout in LAYOUTS:
        # The same random picks for every layout: one generator per layout, same seed.
        row = measure(layout, data, work / "s.zarr", args, np.random.default_rng(args.seed))
        rows.append(row)
        print(f"{layout[0]}: done ({row['objects']} objects)", flush=True)
    table(rows, n, label)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "records": n,
        "data": label,
        "repeat": args.repeat,
        "singles": args.singles,
        "batches": args.batches,
        "load_average": {"before": load_avg, "after": os.getloadavg()},
        "machine": versions(),
        "rows": rows,
    }
    (args.out / "sharding.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nload average (1, 5, 15 min): before {load_avg}, after {os.getloadavg()}")
    if plot(rows, args.out / "sharding.png"):
        print(f"wrote {args.out / 'sharding.json'} and {args.out / 'sharding.png'}")
    else:
        print(f"wrote {args.out / 'sharding.json'} (no plot: matplotlib is not installed)")


if __name__ == "__main__":
    main()
