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
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests.s3: the server the tests use

from common import REAL_DATA, bench_dataset, pyplot  # noqa: E402

import daskmri  # noqa: E402
import daskmri.parse  # noqa: E402
import daskmri.sources.dicom_contours  # noqa: E402

RESULTS = HERE / "results"


class Latency:
    """A TCP proxy on 127.0.0.1 in front of the S3 server that holds every chunk of
    bytes a client sends for ``seconds`` before passing it on: a request then costs
    a round trip, as it does to a cloud store, which moto on loopback does not.
    Runs its own event loop in a thread; :meth:`close` stops it."""

    def __init__(self, upstream: str, seconds: float) -> None:
        import asyncio
        import threading

        host, port = upstream.removeprefix("http://").split(":")
        self.seconds, self.upstream = seconds, (host, int(port))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError("the latency proxy did not start")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _serve(self, started) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._pair, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        server.close()

    async def _pair(self, reader, writer) -> None:
        import asyncio

        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(
            self._pipe(reader, up_writer, self.seconds),
            self._pipe(up_reader, writer, 0.0),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(reader, writer, delay: float) -> None:
        import asyncio

        try:
            while data := await reader.read(1 << 16):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


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


def _one_at_a_time(name: str):
    """The concurrent fetch of a chunk's files, or the scan's listing of 64 patients'
    folders at once, turned off in this process (so in rows that parse here, sync);
    returns what turns it back on."""
    if "one request" in name:
        concurrent = daskmri.parse.fetched
        daskmri.parse.fetched = lambda records: records
        return lambda: setattr(daskmri.parse, "fetched", concurrent)
    if "patient by patient" in name:
        finder = daskmri.sources.dicom_contours._Finder
        ahead = finder.listed_ahead
        finder.listed_ahead = lambda self, patients: patients
        return lambda: setattr(finder, "listed_ahead", ahead)
    return lambda: None


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
        ("scan", "local", lambda: len(daskmri.scan(root).table)),
        (
            "scan",
            "S3, 64 patients listed at once",
            lambda: len(daskmri.scan(url, source_options=src).table),
        ),
        (
            "scan",
            "S3, patient by patient",
            lambda: len(daskmri.scan(url, source_options=src).table),
        ),
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
    restore = _one_at_a_time(name)
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
    ax.set_title(f"local disk vs S3 (moto), {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--synthetic", type=int, default=None, metavar="N")
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="added to every request (default 20)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from daskmri.versions import versions
    from tests.s3 import s3_server

    work, root, label, n = bench_dataset(args, "daskmri-objectstore-")
    with s3_server(work) as s3:
        url = s3.upload(root, "data")
        proxy = Latency(s3.endpoint, args.latency_ms / 1000)
        try:
            slow = dataclasses.replace(s3, endpoint=proxy.endpoint)
            print(
                f"{n} records ({label}); S3 at {s3.endpoint}, {args.latency_ms:g} ms added per "
                f"request; {args.repeat} runs after a warm-up\n"
            )
            rows = [_row(*row, args.repeat) for row in _plan(root, url, work, slow)]
        finally:
            proxy.close()
    _compare(rows, n)
    info = versions()
    print(
        f"\n{n:,} records ({label}), {datetime.date.today()}, {info['cpu_count']} cores, "
        f"{args.latency_ms:g} ms per S3 request\n"
    )
    _table(rows)
    report = {
        "records": n,
        "label": label,
        "repeat": args.repeat,
        "latency_ms": args.latency_ms,
        "machine": info,
        "rows": rows,
    }
    (args.out / "objectstore.json").write_text(json.dumps(report, indent=1, default=str))
    _plot(rows, args.out / "objectstore.png", f"{n:,} records")


if __name__ == "__main__":
    main()
