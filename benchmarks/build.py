"""Time ``daskmri.load_dataset`` against a plain one-record-at-a-time loop.

Both run in one process invocation, on the real Sunnybrook sample replicated (hard
links) to about 2,000 labelled records::

    python benchmarks/build.py [--data ROOT] [--records 2000] [--repeat 3] [--profile]

It prints a Markdown table and writes ``benchmarks/results/build.json`` (and
``build.png`` when matplotlib is installed). Every configuration must produce the
same records and pixels as the plain loop (a checksum) before its speed is shown.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import pstats
import statistics
import time
from pathlib import Path

import numpy as np
from common import REAL_DATA, pyplot, replicate, require_data

import daskmri
from daskmri.testing import eager_load
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"


def checksum(ds) -> tuple:
    """Records and content of a dataset, cheap to compare."""
    ds = ds.compute()
    return (
        tuple(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True)),
        float(ds.image.values.astype(np.float64).sum()),
        int(ds.icontour.values.sum()),
        int(ds.ocontour.values.sum()),
    )


def run_plain(root):

    return eager_load(root)


def make_local(scheduler):
    def run(root):
        return daskmri.load_dataset(root, scheduler=scheduler)

    return run


def run_default(root):
    return daskmri.load_dataset(root)


def make_cluster_run(client):
    def run(root):
        # load_dataset returns once the pixels are persisted on the workers.
        return daskmri.load_dataset(root, client=client)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true", help="cProfile one sync load")
    args = parser.parse_args()

    root = replicate(require_data(args.data), args.records, args.workdir)
    n = len(daskmri.scan(root).table)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(daskmri.load_dataset, root, scheduler="sync")
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return

    configs = {
        "plain loop (pydicom pixel_array, file by file)": run_plain,
        'load_dataset scheduler="sync"': make_local("sync"),
        'load_dataset scheduler="threads"': make_local("threads"),
        'load_dataset scheduler="processes" (default)': run_default,
    }
    from distributed import Client, LocalCluster

    def measure(name, run):
        status = "ok"
        digest = checksum(run(root))  # the warm-up run: page cache, imports
        if rows and digest != reference[0]:
            status = "FAILED: different records or pixels than the plain loop"
        reference[:] = reference or [digest]
        samples = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            run(root)
            samples.append(time.perf_counter() - started)
        rows.append({"configuration": name, "status": status, "seconds": samples})
        print(f"  {name}: {statistics.median(samples):.2f} s", flush=True)

    reference: list = []
    rows: list = []
    for name, run in configs.items():
        measure(name, run)
    # The cluster starts only now: while it exists its client is the default one,
    # which load_dataset() with no arguments would use.
    started = time.perf_counter()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster_start = time.perf_counter() - started
        measure("LocalCluster 2 workers x 1 thread (start-up not timed)", make_cluster_run(client))
    print(f"  (LocalCluster start-up: {cluster_start:.2f} s)")
    plain = statistics.median(rows[0]["seconds"])
    info = versions()
    print(
        f"\n{n} records, {datetime.date.today()}, {info['cpu_count']} cores, "
        f"{info['memory_bytes'] / 2**30:.0f} GiB, Python {info['python']}, "
        f"dask {info['dask']}, pydicom {info['pydicom']}\n"
    )
    print("| configuration | median s | min s | max s | records/s | x plain loop |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s = row["seconds"]
        med = statistics.median(s)
        if row["status"] != "ok":
            print(f"| {row['configuration']} | {row['status']} | | | | |")
            continue
        print(
            f"| {row['configuration']} | {med:.2f} | {min(s):.2f} | {max(s):.2f} "
            f"| {n / med:.0f} | {plain / med:.2f}x |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build.json").write_text(
        json.dumps(
            {
                "records": n,
                "date": str(datetime.date.today()),
                "machine": info,
                "rows": rows,
                "cluster_start_s": cluster_start,
            },
            indent=2,
        )
    )
    plt = pyplot()
    if plt is None:
        print("no plot: pip install 'daskmri[plot]'")
        return
    names = [r["configuration"].replace("load_dataset ", "").split(" (")[0] for r in rows]
    rates = [n / statistics.median(r["seconds"]) for r in rows]
    low = [rate - n / max(r["seconds"]) for rate, r in zip(rates, rows, strict=True)]
    high = [n / min(r["seconds"]) - rate for rate, r in zip(rates, rows, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, rates, xerr=[low, high], color="#4477aa")
    ax.set_xlabel("records per second (median, min-max)")
    ax.set_title(f"load_dataset vs a plain loop, {n} real records, {info['cpu_count']} cores")
    fig.tight_layout()
    fig.savefig(args.out / "build.png", dpi=120)
    print(f"wrote {args.out / 'build.json'} and {args.out / 'build.png'}")


if __name__ == "__main__":
    main()
