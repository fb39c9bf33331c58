"""Does daskmri's own DICOM header walk (``daskmri/dicom.py``: ``_fast_header``) earn
its place against plain pydicom? Per slice, on the same files, from the page cache::

    python benchmarks/header.py [--data ROOT] [--files N] [--repeat 7] [--out DIR]

Rows: ``read_dicom`` (walk + pixels + rescale to float32); ``pydicom.dcmread`` +
``apply_modality_lut(ds.pixel_array, ds)``; pydicom 3's ``pixel_array(path)``, which
still needs a ``stop_before_pixels`` header for the rescale; the header alone
(``read_dicom_shape`` against ``dcmread(stop_before_pixels=True)`` + Rows/Columns); and
the floor, reading the bytes. Each is the median of ``--repeat`` interleaved passes over
all files (or ``--files`` spread evenly), after a warm-up pass. Readers 1-3 must give
identical float32 arrays on every file; a sha256 of the arrays lets a later run show the
pixels are unchanged. Without the real sample it says so and uses a synthetic
``make_dataset`` in a work dir removed at exit. Saves ``header.json`` and ``header.png``.

What the walk buys: pydicom builds an element object for each of the ~95 elements of a
real file; the walk jumps from element header to element header, keeps the raw bytes of
the ~14 tags that describe the pixels and views the pixels with ``np.frombuffer``. It
never touches the UIDs (so pydicom's "Invalid value for VR UI" warnings about the real
files cannot arise) and lets workers that read plain slices skip importing pydicom. It
falls back to pydicom (``dcmread`` with ``specific_tags``, the whole file for the pixels
when needed) on anything it does not fully understand: no "DICM" marker, a transfer
syntax other than explicit/implicit VR little endian (big endian, deflated, compressed),
an unknown VR, UN or encapsulated data of undefined length, a truncated element, a
wanted tag with an unexpected VR, size or several values, a Modality LUT Sequence, or
BitsAllocated not 8/16/32; such files cost pydicom's time plus the failed walk. The
pydicom calls timed here touch no UID either: the warning filter only guards the output.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import gc
import hashlib
import json
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from common import REAL_DATA, pyplot
from pydicom.pixels import apply_modality_lut, pixel_array

import daskmri
from daskmri.dicom import _fast_header, read_dicom, read_dicom_shape
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"
warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)


def pydicom_full(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def pydicom_by_path(path: Path) -> np.ndarray:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return apply_modality_lut(pixel_array(path), header).astype(np.float32)


def pydicom_shape(path: Path) -> tuple[int, int]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def raw_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


#: (label, reader), in table order; the first row is the reference of the ratios.
METHODS: list[tuple[str, Callable]] = [
    ("1. daskmri read_dicom (walk + pixels + rescale)", read_dicom),
    ("2. pydicom dcmread + pixel_array + apply_modality_lut", pydicom_full),
    ("3. pydicom pixel_array(path) + rescale (needs a dcmread header too)", pydicom_by_path),
    ("3a. pydicom pixel_array(path) only (int16, no rescale: not comparable)", pixel_array),
    ("4a. header: daskmri read_dicom_shape", read_dicom_shape),
    ("4b. header: pydicom dcmread(stop_before_pixels=True) + Rows/Columns", pydicom_shape),
    ("5. floor: read the file bytes", raw_bytes),
]


def dataset(data: Path) -> tuple[Path, str]:
    """The real sample, or a synthetic one in a work dir removed at exit."""
    if (data / "link.csv").is_file():
        return data, f"real sample {data}"
    workdir = Path(tempfile.mkdtemp(prefix="daskmri-bench-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    root = daskmri.synth.make_dataset(workdir / "synth", patients=3, slices=100)
    print(f"no real sample at {data}: using a SYNTHETIC dataset (make_dataset, 3 x 100)")
    return root, "synthetic make_dataset(patients=3, slices=100, shape=(256, 256))"


def pick(root: Path, files: int) -> list[Path]:
    """All DICOMs in sorted order, or ``files`` of them spread evenly over the list."""
    paths = sorted((root / "dicoms").glob("*/*.dcm"))
    if 0 < files < len(paths):
        paths = [paths[k * len(paths) // files] for k in range(files)]
    return paths


def verify(paths: list[Path]) -> tuple[str, int]:
    """Check that the full readers and the header readers agree on every file (this is
    also the warm-up pass); the sha256 of the arrays and the count on the walk's path."""
    digest, fast = hashlib.sha256(), 0
    for path in paths:
        ours = read_dicom(path)
        for other in (pydicom_full(path), pydicom_by_path(path)):
            if other.dtype != np.float32 or not np.array_equal(ours, other):
                raise SystemExit(f"MISMATCH: the readers disagree on {path}")
        if read_dicom_shape(path) != pydicom_shape(path) or pixel_array(path).shape != ours.shape:
            raise SystemExit(f"MISMATCH: the shapes disagree on {path}")
        digest.update(np.ascontiguousarray(ours).tobytes())
        fast += _fast_header(raw_bytes(path)) is not None
    return digest.hexdigest()[:12], fast


def measure(paths: list[Path], repeat: int) -> dict[str, list[float]]:
    """Seconds per slice of each method, one sample per pass; methods interleaved."""
    samples: dict[str, list[float]] = {label: [] for label, _ in METHODS}
    for _ in range(repeat):
        for label, reader in METHODS:
            gc.collect()
            started = time.perf_counter()
            for path in paths:
                reader(path)
            samples[label].append((time.perf_counter() - started) / len(paths))
    return samples


def report(samples: dict[str, list[float]], context: str) -> None:
    ref = statistics.median(samples[METHODS[0][0]])
    print(f"\n{context}\n")
    print("| method | ms/slice | min-max ms | slices/s | x read_dicom |")
    print("|---|---:|---:|---:|---:|")
    for label, s in samples.items():
        med = statistics.median(s)
        print(
            f"| {label} | {med * 1e3:.3f} | {min(s) * 1e3:.3f}-{max(s) * 1e3:.3f} "
            f"| {1 / med:,.0f} | {med / ref:.2f} |"
        )
    ours, theirs = (statistics.median(samples[METHODS[k][0]]) for k in (4, 5))
    print(f"\nheader only: pydicom takes {theirs / ours:.2f}x as long as read_dicom_shape")


def plot(samples: dict[str, list[float]], out: Path, title: str) -> None:
    plt = pyplot()
    if plt is None:
        print("no plot: pip install 'daskmri[plot]'")
        return
    labels = [label.split(" (")[0] for label in samples][::-1]
    values = [statistics.median(s) * 1e3 for s in samples.values()][::-1]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(labels, values, color="#4477aa")
    ax.set_xlabel("ms per slice (median; page cache)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "header.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--files", type=int, default=0, help="files spread evenly; 0 = all")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root, source = dataset(args.data)
    paths = pick(root, args.files)
    checksum, fast = verify(paths)  # also the warm-up: every file into the page cache
    print(f"{len(paths)} files of the {source}; {fast} of them on the header walk's path")
    print(f"methods 1-3 give identical float32 arrays on all {len(paths)}; sha256 {checksum}")
    samples = measure(paths, args.repeat)
    info = versions()
    context = (
        f"{len(paths)} slices, median of {args.repeat} passes, {datetime.date.today()}, "
        f"{info['cpu_count']} cores, Python {info['python']}, pydicom {pydicom.__version__}, "
        f"numpy {np.__version__}"
    )
    report(samples, context)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"source": source, "files": len(paths), "fast_path": fast, "sha256_12": checksum}
    record |= {"date": str(datetime.date.today()), "machine": info, "seconds_per_slice": samples}
    (args.out / "header.json").write_text(json.dumps(record, indent=1))
    plot(samples, args.out, f"DICOM read per slice, {len(paths)} slices ({source.split(' ')[0]})")


if __name__ == "__main__":
    main()
