"""What a record that kills its worker process costs a build.

The real sample replicated to about 2,000 records is built into a Zarr store with a
reader that calls ``os._exit`` on ``k`` records (standing in for a segfault in a C
decoder), spread over different chunks, for k = 0, 1 and 4:

- on local worker processes (``scheduler="processes"``), and
- on a LocalCluster of 2 worker processes, with Dask's default
  ``distributed.scheduler.allowed-failures`` (3) and with 1.

It prints, per row, the build time, the time spent isolating (from the report),
the records dropped, and the extra time over k = 0; and checks that exactly the
killers were dropped.

    python benchmarks/isolate.py [--data ROOT] [--records 2000] [--out DIR]

Writes ``isolate.json`` in ``benchmarks/results`` (or DIR).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import REAL_DATA, replicate, require_data

import daskmri
from daskmri.parse import read_record
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"


class Killer:
    """The default reader, except that it kills its process on the ``keys`` records."""

    def __init__(self, keys: frozenset) -> None:
        self.keys = keys

    def __call__(self, record):
        if (record.patient_id, record.instance) in self.keys:
            os._exit(17)
        return read_record(record)


def killers(root: Path, k: int, chunk_size: int) -> frozenset:
    """``k`` records in ``k`` different chunks, spread over the dataset."""
    table = daskmri.scan(root).table
    chunks = -(-len(table) // chunk_size)
    picks = [int((j + 0.5) * chunks / k) * chunk_size + 7 for j in range(k)]
    return frozenset(
        (table.patient_id.iloc[i], int(table.instance.iloc[i])) for i in picks if i < len(table)
    )


def one(root: Path, where: str, k: int, chunk_size: int, workdir: Path) -> dict:
    keys = killers(root, k, chunk_size)
    store = workdir / f"{where}-{k}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    if where == "processes":
        report = daskmri.build(
            root, store, chunk_size=chunk_size, scheduler="processes", reader=Killer(keys)
        )
    else:
        import dask
        from distributed import Client, LocalCluster

        allowed = int(where.rsplit("=", 1)[1])
        options = {"distributed.scheduler.allowed-failures": allowed}
        cluster = {"n_workers": 2, "threads_per_worker": 1, "processes": True}
        with (
            dask.config.set(options),
            LocalCluster(**cluster, host="127.0.0.1", dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            started = time.perf_counter()  # the cluster's start-up is not the build's
            report = daskmri.build(
                root, store, chunk_size=chunk_size, client=client, reader=Killer(keys)
            )
    seconds = time.perf_counter() - started
    assert set(report.isolated) == set(keys), (report.isolated, keys)
    assert report.dropped >= len(keys)
    return {
        "where": where,
        "killers": len(keys),
        "records": report.records,
        "seconds": seconds,
        "isolation_seconds": report.isolation_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--where",
        default="processes,3,1",
        help="rows to run: 'processes', and LocalCluster allowed-failures values",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="daskmri-isolate-"))
    try:
        root = replicate(require_data(args.data), args.records, workdir)
        rows = []
        wheres = [
            w if w == "processes" else f"LocalCluster allowed-failures={w}"
            for w in args.where.split(",")
        ]
        for where in wheres:
            base = None
            for k in (0, 1, 4):
                row = one(root, where, k, args.chunk_size, workdir)
                base = row["seconds"] if base is None else base
                row["extra_seconds"] = row["seconds"] - base
                rows.append(row)
                print(
                    f"{where:<34} killers {row['killers']}  records {row['records']:>5}  "
                    f"build {row['seconds']:6.1f} s  isolating {row['isolation_seconds']:5.1f} s  "
                    f"extra {row['extra_seconds']:5.1f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "isolate.json").write_text(
        json.dumps(
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "versions": versions(),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
