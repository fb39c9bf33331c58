"""What reading contours from an RTSTRUCT costs per slice, against the same contours
as text files::

    python benchmarks/rtstruct.py [--data ROOT] [--repeat 7] [--out DIR]

The real sample's labelled slices are copied to a work dir (removed at exit) with
their text contours and, per patient, one RTSTRUCT holding the same polygons in
patient coordinates (written as ``tests/rtstructs.py`` writes them for the tests).
Each row is the median of ``--repeat`` passes from the page cache, after a warm-up,
per slice (per record):

- scan: the text layout lists files; the RTSTRUCT layout also reads each patient's
  structure set and every slice's header (its plane) to give each contour its slice;
- the pieces of that: a slice's plane (``read_plane``), the structure set parsed
  (``read_structure_set``, shared by the patient's slices);
- masks: both kinds of one slice, rasterised (text: read and parse the files; RTSTRUCT:
  map the polygons from patient space, the structure set already read in the process);
- ``read_record`` (pixels and masks) and ``load_dataset(scheduler="sync")`` end to end.

Both layouts must give identical masks (checked). Saves ``rtstruct.json``.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import REAL_DATA, require_data

import daskmri
from daskmri.contours import polygon_mask, read_contour
from daskmri.plan import plan_chunks
from daskmri.rtstruct import Plane, read_plane, read_structure_set, structure_mask
from daskmri.versions import versions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.rtstructs import RT_LAYOUT, real_as_rtstruct

RESULTS = Path(__file__).resolve().parent / "results"


def _median(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _roots(data: Path, work: Path) -> tuple[Path, list, list]:
    """The copy (DICOMs, text contours, RTSTRUCTs) and the records of both layouts."""
    table = daskmri.scan(data).table
    root = real_as_rtstruct(table, work / "data")
    for row in table.itertuples():
        for path in (row.icontour_path, row.ocontour_path):
            if path is not None:
                target = root / Path(path).relative_to(data)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    text = [r for c in plan_chunks(daskmri.scan(root)).chunks for r in c]
    rt = [r for c in plan_chunks(daskmri.scan(root, layout=RT_LAYOUT)).chunks for r in c]
    return root, text, rt


def _text_masks(record) -> list:
    return [
        None if path is None else polygon_mask(read_contour(path, shape=(256, 256)), (256, 256))
        for _, path in record.contours
    ]


def _rt_masks(record) -> list:
    plane = Plane(*record.rtstruct.plane)
    return [
        None if path is None else structure_mask(record.rtstruct.of(kind), plane, shape=(256, 256))
        for kind, path in record.contours
    ]


def measure(data: Path, repeat: int, work: Path) -> list[dict]:
    root, text, rt = _roots(data, work)
    n = len(text)
    assert n == len(rt) and [r.key for r in text] == [r.key for r in rt]
    for a, b in zip(text, rt, strict=True):  # the same masks, or the timing means nothing
        for x, y in zip(_text_masks(a), _rt_masks(b), strict=True):
            assert (x is None and y is None) or np.array_equal(x, y), a.key
    files = sorted((root / "rtstruct").glob("*/*.dcm"))
    steps = [
        ("scan", lambda: daskmri.scan(root), lambda: daskmri.scan(root, layout=RT_LAYOUT)),
        ("slice plane (read_plane)", None, lambda: [read_plane(r.image_path) for r in rt]),
        ("structure set parsed", None, lambda: [read_structure_set(f) for f in files]),
        (
            "masks of both kinds",
            lambda: [_text_masks(r) for r in text],
            lambda: [_rt_masks(r) for r in rt],
        ),
        (
            "read_record",
            lambda: [daskmri.read_record(r) for r in text],
            lambda: [daskmri.read_record(r) for r in rt],
        ),
        (
            "load_dataset(sync)",
            lambda: daskmri.load_dataset(root, scheduler="sync"),
            lambda: daskmri.load_dataset(root, layout=RT_LAYOUT, scheduler="sync"),
        ),
    ]
    rows = []
    for name, plain, structure in steps:
        a = None if plain is None else 1000 * _median(plain, repeat) / n
        b = 1000 * _median(structure, repeat) / n
        rows.append({"step": name, "text_ms": a, "rtstruct_ms": b})
    return rows, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = require_data(args.data)
    work = Path(tempfile.mkdtemp(prefix="daskmri-rtstruct-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    rows, n = measure(data, args.repeat, work)
    print(f"{n} labelled real slices, median of {args.repeat} passes, ms per slice")
    print("| step | text files | RTSTRUCT | x text |")
    print("|---|---:|---:|---:|")
    for row in rows:
        a, b = row["text_ms"], row["rtstruct_ms"]
        shown = "-" if a is None else f"{a:.3f}"
        ratio = "-" if a is None else f"{b / a:.2f}"
        print(f"| {row['step']} | {shown} | {b:.3f} | {ratio} |")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "slices": n,
        "repeat": args.repeat,
        "rows": rows,
        "machine": versions(),
    }
    (args.out / "rtstruct.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
