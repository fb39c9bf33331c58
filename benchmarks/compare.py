"""Compare scheduler configurations and peer loaders, in one run, with one command::

    python benchmarks/compare.py --data ROOT | --synthetic N
                                 [--records 2000] [--scheduler-address ADDR]
                                 [--repeat K] [--out DIR]

It measures, on the same files:

* **Build**: ``load_dataset`` and ``build`` (to a Zarr store) under "sync",
  "threads" (2), "processes" (2), a LocalCluster of 2 workers x 1 thread, one of
  1 worker x 2 threads, and a remote scheduler when ``--scheduler-address`` is given.
* **Epochs** of ``BatchIterator`` in batches of 8, from the dataset built in local
  memory, from the Zarr store, and persisted on a LocalCluster of 2 workers x 1
  thread: records/s, and the stall fraction with a simulated 10 ms training step.
* **Peer loaders**, each parsing every item every epoch: a plain loop; the original
  design (one producer process, ``Queue(maxsize=2)``, random batches of 8);
  ``multiprocessing.Pool(2)``; ``torch.utils.data.DataLoader(num_workers=2)`` when
  torch is installed.

Every row runs in a fresh process (so its peak memory is its own): a warm-up run
whose records and pixels must match the plain loop's (a checksum), then ``K``
timed runs; it reports the median, min and max. A row that fails is shown as
failed. Output: a Markdown table on stdout, ``compare.json`` (raw samples and
machine information) and ``compare.png`` (with matplotlib) in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import bench_dataset, pyplot, stall  # noqa: E402

RESULTS = HERE / "results"
STEP = 0.010

PEERS = {
    "plain loop": "run_plain",
    "original design: producer process + Queue(2)": "run_producer",
    "multiprocessing.Pool(2)": "run_pool",
    "torch DataLoader(num_workers=2)": "run_torch",
}
CONFIGS = [
    "sync",
    "threads (2)",
    "processes (2)",
    "LocalCluster 2 workers x 1 thread",
    "LocalCluster 1 worker x 2 threads",
]
EPOCH_SOURCES = ["built in local memory", "Zarr store", "persisted on a LocalCluster 2x1"]


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def _checksum(keys, total: float) -> list:
    return [sorted([str(p), int(i)] for p, i in keys), round(float(total), 1)]


def _dataset_checksum(ds) -> list:
    keys = zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True)
    return _checksum(keys, float(ds.image.sum(dtype=np.float64).compute()))


# -- one row, in its own process ----------------------------------------------------


def _workers_rss(client) -> float | None:
    if client is None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return _mib(usage) if usage else None
    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return _mib(max(peaks.values())) if peaks else None


def _row_peer(name: str, root: str, repeat: int) -> dict:
    import peers

    import daskmri

    items = peers.items_of(daskmri.scan(root).table)
    run = getattr(peers, PEERS[name])
    if PEERS[name] == "run_torch":
        import torch  # noqa: F401  (a missing torch fails this row, visibly)
    served = _checksum(*run(items, seed=0))
    samples = []
    for k in range(repeat):
        started = time.perf_counter()
        run(items, seed=k + 1)
        samples.append(time.perf_counter() - started)
    return {"samples": samples, "checksum": served, "workers_rss_mib": _workers_rss(None)}


def _where(config: str, address: str | None):
    """(client, scheduler, cleanup) for a configuration."""
    import dask

    if config == "sync":
        return None, "sync", []
    if config in ("threads (2)", "processes (2)"):
        # Two workers, as on a 2-core machine, whatever this machine has.
        dask.config.set(num_workers=2)
        return None, config.split()[0], []
    from distributed import Client, LocalCluster

    if config == "remote scheduler":
        client = Client(address, timeout="30s")
        return client, None, [client.close]
    workers, threads = (2, 1) if config.startswith("LocalCluster 2") else (1, 2)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = Client(cluster)
    return client, None, [client.close, cluster.close]


def _row_build(config: str, op: str, root: str, store: str, repeat: int, address) -> dict:
    import daskmri

    client, scheduler, cleanup = _where(config, address)
    try:
        where = {"client": client} if client is not None else {"scheduler": scheduler}

        def run():
            if op == "load_dataset":
                return daskmri.load_dataset(root, **where)
            daskmri.build(root, store, mode="overwrite", **where)
            return daskmri.open_dataset(store)

        served = _dataset_checksum(run())
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            run()
            samples.append(time.perf_counter() - started)
        workers = _workers_rss(client) if scheduler != "sync" and scheduler != "threads" else None
        return {"samples": samples, "checksum": served, "workers_rss_mib": workers}
    finally:
        for close in cleanup:
            close()


def _row_epoch(source: str, root: str, store: str, repeat: int) -> dict:
    import daskmri

    cleanup = []
    if source == "Zarr store":
        daskmri.build(root, store, mode="overwrite")
        ds = daskmri.open_dataset(store)
    elif source == "persisted on a LocalCluster 2x1":
        client, _, cleanup = _where("LocalCluster 2 workers x 1 thread", None)
        ds = daskmri.load_dataset(root, client=client)  # held by the workers
    else:
        ds = daskmri.load_dataset(root, scheduler="processes")
    try:
        return _epochs(ds, repeat)
    finally:
        for close in cleanup:
            close()


def _epochs(ds, repeat: int) -> dict:
    import daskmri

    it = daskmri.BatchIterator(ds, batch_size=8, seed=0)
    keys, total = [], 0.0
    for batch in it:  # the warm-up epoch, checked
        keys.extend(zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True))
        total += float(batch["image"].sum(dtype=np.float64))
    served = _checksum(keys, total)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for batch in it:
            del batch
        samples.append(time.perf_counter() - started)
    waiting, _ = stall(it, STEP)
    it.close()
    return {"samples": samples, "checksum": served, "stall": waiting, "workers_rss_mib": None}


def one(argv: list[str]) -> None:
    print("ROW " + json.dumps(measure(*argv)))


def measure(kind: str, name: str, root: str, store: str, repeat, address=None) -> dict:
    """One row of the table, measured in this process; an error becomes the row."""
    try:
        if kind == "peer":
            row = _row_peer(name, root, int(repeat))
        elif kind == "epoch":
            row = _row_epoch(name, root, store, int(repeat))
        else:
            row = _row_build(name, kind, root, store, int(repeat), address)
        row["client_rss_mib"] = _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except Exception as exc:
        row = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    return row


# -- the whole comparison -----------------------------------------------------------


def run_row(section, kind, name, root, store, repeat, address=None, *, isolated=True) -> dict:
    """A row measured in a process of its own (so that its peak RSS is its own), or,
    not ``isolated``, in this one: to check quickly that every row runs."""
    row = {"section": section, "configuration": name}
    if not isolated:
        return row | measure(kind, name, str(root), str(store), repeat, address)
    argv = [sys.executable, __file__, "--one", kind, name, str(root), str(store), str(repeat)]
    if address:
        argv.append(address)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        lines = [x for x in out.stdout.splitlines() if x.startswith("ROW ")]
        if not lines:
            raise RuntimeError(f"no result (exit {out.returncode}): {out.stderr[-500:]}")
        row |= json.loads(lines[-1][4:])
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _rates(rows: list[dict], n: int) -> None:
    """Each row's median, records/s and ratios, in place; a row that served other
    records or pixels than the plain loop (the first row) is marked failed."""
    truth = rows[0].get("checksum")
    for row in rows:
        if "error" not in row and truth is not None and row["checksum"] != truth:
            row["error"] = "served other records or pixels than the plain loop"
    plain = rows[0]
    plain_rate = n / statistics.median(plain["samples"]) if "samples" in plain else None
    peer_rates = [
        n / statistics.median(r["samples"])
        for r in rows
        if r["section"] == "peers" and "error" not in r
    ]
    for row in rows:
        if "error" in row:
            continue
        row["median_s"] = statistics.median(row["samples"])
        row["records_per_s"] = n / row["median_s"]
        row["x_plain"] = row["records_per_s"] / plain_rate if plain_rate else None
        row["x_best_peer"] = row["records_per_s"] / max(peer_rates) if peer_rates else None


def _table(rows: list[dict]) -> None:
    """The rows as a Markdown table on stdout."""
    print(
        "| section | configuration | median s | min s | max s | records/s | x plain loop "
        "| x best peer | stall at 10 ms | client peak RSS MiB | worker peak RSS MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['section']} | {row['configuration']} | **failed**: {row['error']} "
                  "| | | | | | | | |")  # fmt: skip
            continue

        def fmt(value, spec):
            return "-" if value is None else format(value, spec)

        print(
            f"| {row['section']} | {row['configuration']} | {row['median_s']:.3f} | "
            f"{min(row['samples']):.3f} | {max(row['samples']):.3f} | "
            f"{row['records_per_s']:,.0f} | {fmt(row['x_plain'], '.2f')}x | "
            f"{fmt(row['x_best_peer'], '.2f')}x | {fmt(row.get('stall'), '.1%')} | "
            f"{fmt(row.get('client_rss_mib'), '.0f')} | {fmt(row.get('workers_rss_mib'), '.0f')} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a dataset folder (replicated to --records)")
    source.add_argument("--synthetic", type=int, metavar="N", help="a synthetic set of ~N records")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--scheduler-address", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every row in this process (a quick check that they run: the RSS "
        "columns are then not per row)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from daskmri.versions import versions

    work, root, label, n = bench_dataset(args, "daskmri-compare-")
    store = work / "ds.zarr"
    print(f"{n} records ({label}) in {root}; {args.repeat} timed runs after a warm-up\n")

    plan = [("peers", "peer", name) for name in PEERS]
    configs = CONFIGS + (["remote scheduler"] if args.scheduler_address else [])
    plan += [(f"build: {op}", op, config) for op in ("load_dataset", "build") for config in configs]
    plan += [("epochs: BatchIterator", "epoch", source) for source in EPOCH_SOURCES]
    rows = []
    for section, kind, name in plan:
        row = run_row(
            section,
            *(kind, name, root, store, args.repeat, args.scheduler_address),
            isolated=not args.in_process,
        )
        rows.append(row)
        status = row.get("error") or f"median {statistics.median(row['samples']):.3f} s"
        print(f"  {section} | {name}: {status}", flush=True)

    _rates(rows, n)
    info = versions()
    print(
        f"\n{n:,} records ({label}), {datetime.date.today()}, {info['cpu_count']} cores, "
        f"{(info['memory_bytes'] or 0) / 2**30:.0f} GiB, Python {info['python']}, "
        f"dask {info['dask']}, distributed {info['distributed']}, zarr {info['zarr']}\n"
    )
    _table(rows)
    for row in rows:
        row.pop("checksum", None)
        row.pop("traceback", None)
    (args.out / "compare.json").write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "data": label,
                "records": n,
                "repeat": args.repeat,
                "machine": info,
                "rows": rows,
            },
            indent=2,
            default=str,
        )
    )
    plotted = _plot(rows, n, args.out / "compare.png", label)
    print(f"\nwrote {args.out / 'compare.json'}" + (" and compare.png" if plotted else ""))


def _plot(rows: list[dict], n: int, path: Path, label: str) -> bool:
    """Draw the table at ``path``; False (and no file) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    colours = {"peers": "grey", "epochs: BatchIterator": "tab:green"}
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.5))
    y = np.arange(len(rows))[::-1]
    for k, row in zip(y, rows, strict=True):
        if "error" in row:
            ax.text(1, k, "failed", va="center", color="tab:red")
            continue
        rate = row["records_per_s"]
        low, high = n / max(row["samples"]), n / min(row["samples"])
        colour = colours.get(row["section"], "tab:blue")
        ax.barh(k, rate, xerr=[[rate - low], [high - rate]], color=colour)
    ax.set_yticks(list(y), [f"{r['section']}: {r['configuration']}" for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("records per second (median; bars: min to max)")
    ax.set_title(f"daskmri vs peer loaders, {n:,} records ({label})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(sys.argv[2:])
    else:
        main()
