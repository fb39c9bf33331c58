"""Shared pieces of the benchmark scripts: the real sample replicated with hard links,
peak-memory reading, and machine facts."""

from __future__ import annotations

import atexit
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import daskmri

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook"


def require_data(path: Path) -> Path:
    if not (path / "link.csv").is_file():
        sys.exit(
            f"no dataset at {path}: pass --data ROOT (the real sample lives in ../shared/data)"
        )
    return path


def replicate(source: Path, records: int, workdir: Path | None = None) -> Path:
    """Hard-link copies of every patient of ``source`` until ``records`` labelled records.

    Files are linked, not copied, so 2,000 records cost no disk; each copy gets new ids
    (``<id>-rNN``) in a new ``link.csv``.
    """
    base = daskmri.scan(source).table
    copies = max(1, -(-records // len(base)))
    if workdir is None:  # made here: removed at exit
        workdir = Path(tempfile.mkdtemp(prefix="daskmri-bench-"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir = Path(workdir)
    root = workdir / f"replicated-{copies}x"
    if (root / "link.csv").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    with open(source / "link.csv", encoding="utf-8-sig", newline="") as fh:
        pairs = [(r["patient_id"].strip(), r["original_id"].strip()) for r in csv.DictReader(fh)]
    rows = []
    for k in range(copies):
        for patient_id, original_id in pairs:
            new_p, new_o = f"{patient_id}-r{k:02d}", f"{original_id}-r{k:02d}"
            rows.append((new_p, new_o))
            _link_tree(source / "dicoms" / patient_id, root / "dicoms" / new_p)
            _link_tree(source / "contourfiles" / original_id, root / "contourfiles" / new_o)
    with open(root / "link.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["patient_id", "original_id"])
        writer.writerows(rows)
    return root


def bench_root(data: Path, synthetic: int | None, records: int, work: Path) -> tuple[Path, str]:
    """The dataset a benchmark runs on, made in ``work``, and a label for it: about
    ``synthetic`` synthetic records when given, else ``data`` replicated to about
    ``records`` (the script exits, saying why, when ``data`` is no dataset)."""
    if synthetic is not None:
        # Two thirds of synthetic slices carry a contour: 30 slices give 20 records.
        patients = max(1, round(synthetic / 20))
        root = daskmri.synth.make_dataset(work / "synthetic", patients=patients, slices=30)
        return root, "synthetic"
    if not (data / "link.csv").is_file():
        sys.exit(f"no dataset at {data} (no link.csv); pass --data ROOT or --synthetic N")
    return replicate(data, records, work / "real"), f"{data.name} replicated"


def bench_dataset(args, prefix: str) -> tuple[Path, Path, str, int]:
    """A work folder made for this run (removed at exit), the dataset made in it from
    ``args.data`` / ``args.synthetic`` / ``args.records`` (see :func:`bench_root`), its
    label and its number of records."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    root, label = bench_root(args.data, args.synthetic, args.records, work)
    return work, root, label, len(daskmri.scan(root).table)


def _link_tree(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stall(it, step: float = 0.010) -> tuple[float, float]:
    """Share of an epoch of ``it`` spent waiting for batches with a simulated training
    step of ``step`` seconds after each, and the wait for the first batch (seconds)."""
    waited, first = 0.0, None
    started = time.perf_counter()
    batches = iter(it)
    while True:
        t = time.perf_counter()
        try:
            next(batches)
        except StopIteration:
            break
        wait = time.perf_counter() - t
        first = wait if first is None else first
        waited += wait
        time.sleep(step)
    return waited / (time.perf_counter() - started), first or 0.0


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
