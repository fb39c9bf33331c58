"""Records a second from NIfTI volumes, against the same planes as per-slice DICOM and
against a plain nibabel loop::

    python benchmarks/volumes.py [--data ROOT] [--copies 3] [--repeat 3] [--out DIR]

The real sample's cines are converted once into the ACDC layout (``tests/volumes.py``,
the converter the tests use: a 4D cine per patient, its ED and ES frames and label maps),
``--copies`` times over with new patient ids, in a work dir removed at exit. The DICOM
side is the same sample hard-linked ``--copies`` times. Rows, each the median of
``--repeat`` runs from the page cache after a warm-up, in planes a second:

- ``nibabel loop``: one process, file by file: ``nibabel.load(f).get_fdata()`` of each
  4D cine, cut into planes by the orientation rule, masks from the label maps of its ED
  and ES frames, stacked into the arrays ``load_dataset`` gives;
- ``load_dataset`` and ``build`` with ``labels="all"`` (every frame of every cine), for
  the volumes (``layout=daskmri.ACDC``) and for the per-slice DICOMs (the same planes);
- ``load_dataset`` of the default records (the labelled ED and ES frames, read from the
  ``frameFF`` files).

Both paths must give the same number of planes (checked). Saves ``volumes.json`` and
``volumes.png``.
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
from common import REAL_DATA, pyplot, replicate, require_data

import daskmri
from daskmri.sources.nifti import plane_orientation, to_planes
from daskmri.versions import versions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import volumes  # the converter the tests check


def _median(run: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Median seconds of ``repeat`` runs after a warm-up, and the records of one run."""
    n = run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), n


def _nibabel_loop(root: Path) -> int:
    """What a user's loop would do with nibabel alone: the same arrays as
    ``load_dataset(labels="all")`` (every plane as float32, a bool mask per kind, all
    False outside ED and ES), stacked at the end."""
    import nibabel

    images, masks = [], []
    for folder in sorted(root.iterdir()):
        cine = nibabel.load(folder / f"{folder.name}_4d.nii.gz")
        orientation = plane_orientation(cine.affine)
        planes = to_planes(cine.get_fdata(dtype=np.float32), orientation)
        labels = {}
        for path in sorted(folder.glob("*_gt.nii.gz")):
            frame = int(path.name.split("_frame")[1][:2]) - 1
            labels[frame] = to_planes(np.asarray(nibabel.load(path).dataobj), orientation)[0]
        empty = np.zeros(planes.shape[2:], bool)
        for f, frame in enumerate(planes):
            for s, plane in enumerate(frame):
                images.append(plane)
                label = labels.get(f)
                masks.append([empty if label is None else label[s] == k for k in (3, 2, 1)])
    image, mask = np.stack(images), np.stack([np.stack(m) for m in masks])
    return len(image) if mask.size else 0


def _load(root: Path, **kwargs) -> Callable[[], int]:
    def run() -> int:
        ds = daskmri.load_dataset(root, **kwargs)
        ds = ds.compute()
        return ds.sizes["record"]

    return run


def _build(root: Path, work: Path, **kwargs) -> Callable[[], int]:
    def run() -> int:
        store = work / "store.zarr"
        report = daskmri.build(root, store, mode="overwrite", **kwargs)
        return report.records

    return run


def _datasets(data: Path, copies: int, work: Path) -> tuple[Path, Path, int]:
    cines = volumes.read_cines(data)
    acdc = volumes.write_acdc(list(cines) * copies, work / "acdc")
    planes = sum(c.frames * c.positions for c in cines) * copies
    dicoms = replicate(data, len(daskmri.scan(data).table) * copies, work / "dicom")
    return acdc, dicoms, planes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    require_data(args.data)
    work = Path(tempfile.mkdtemp(prefix="daskmri-volumes-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    acdc, dicoms, planes = _datasets(args.data, args.copies, work)
    runs = {
        "nibabel loop (1 process)": lambda: _nibabel_loop(acdc),
        "volumes: load_dataset, labels=all": _load(acdc, layout=daskmri.ACDC, labels="all"),
        "DICOM: load_dataset, labels=all": _load(dicoms, labels="all"),
        "volumes: build, labels=all": _build(acdc, work, layout=daskmri.ACDC, labels="all"),
        "DICOM: build, labels=all": _build(dicoms, work, labels="all"),
        "volumes: load_dataset, ED and ES": _load(acdc, layout=daskmri.ACDC),
    }
    rows = []
    for name, run in runs.items():
        seconds, n = _median(run, args.repeat)
        rows.append({"row": name, "records": n, "seconds": seconds, "records_s": n / seconds})
        print(f"{name:<38} {n:>6} records {seconds:8.3f} s {n / seconds:10,.0f} records/s")
    counted = {row["row"]: row["records"] for row in rows}
    if counted["volumes: load_dataset, labels=all"] != counted["DICOM: load_dataset, labels=all"]:
        sys.exit(f"the two paths gave different numbers of planes: {counted}")
    _save(args.out, rows, planes)
    return 0


def _save(out: Path, rows: list[dict], planes: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    facts = {
        "date": datetime.date.today().isoformat(),
        "planes": planes,
        "rows": rows,
        "versions": versions(),
    }
    (out / "volumes.json").write_text(json.dumps(facts, indent=1, default=str))
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.barh([r["row"] for r in rows][::-1], [r["records_s"] for r in rows][::-1])
    axis.set_xlabel("records (planes) a second")
    axis.set_title(f"NIfTI volumes against per-slice DICOM, {planes} planes")
    figure.tight_layout()
    figure.savefig(out / "volumes.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
