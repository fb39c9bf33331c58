"""A hostile-input corpus: a synthetic dataset with one record broken in each of the
ways real folders break, and valid but unusual variants that must be kept exactly.
A module of its own so that the tests and a benchmark-free script can build it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from daskmri import synth

# Non-square, as in conftest, so that a row/column swap shows up.
SHAPE = (48, 64)
PATIENTS = 3
SLICES = 24
SEED = 11


def contour(root: Path, patient: int, instance: int, kind: str = "i") -> Path:
    return (
        root
        / "contourfiles"
        / f"SYN-C-{patient}"
        / f"{kind}-contours"
        / f"IM-0001-{instance:04d}-{kind}contour-manual.txt"
    )


def dicom(root: Path, patient: int, instance: int) -> Path:
    return root / "dicoms" / f"SYN{patient:04d}" / f"{instance}.dcm"


def rewrite(src: Path, dst: Path, **changes) -> Path:
    """``src`` with its DICOM elements changed (None deletes one), saved at ``dst``."""
    ds = pydicom.dcmread(src)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def with_syntax(src: Path, dst: Path, syntax) -> Path:
    """``src`` re-encoded in the transfer syntax ``syntax``, saved at ``dst``."""
    ds = pydicom.dcmread(src)
    if syntax == RLELossless:
        ds.compress(RLELossless)  # pydicom's own encoder: no extra needed
        ds.save_as(dst, enforce_file_format=True)
        return dst
    stored = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian:
        # pydicom writes PixelData bytes as given: swap them for big endian.
        ds.PixelData = stored.astype(">i2").tobytes()
        pydicom.dcmwrite(dst, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(dst, enforce_file_format=True)
    return dst


def make_corpus(root: Path) -> tuple[Path, dict[tuple[str, int], tuple[Path, str]]]:
    """Write the corpus at ``root``. Returns the root and, for every record that must
    be dropped, ``(patient_id, instance) -> (path dropped() must name, reason fragment)``.
    Every other record must be kept with the pixels and masks of the pristine
    dataset that ``synth.make_dataset(..., seed=SEED)`` writes."""
    synth.make_dataset(root, patients=PATIENTS, slices=SLICES, shape=SHAPE, seed=SEED)
    bad: dict[tuple[str, int], tuple[Path, str]] = {}

    # Patient 1: broken DICOM files.
    def broken(instance: int, fragment: str) -> Path:
        path = dicom(root, 1, instance)
        bad[("SYN0001", instance)] = (path, fragment)
        return path

    path = broken(2, "truncated")
    path.write_bytes(path.read_bytes()[:-700])
    broken(3, "empty file").write_bytes(b"")
    broken(4, "not a DICOM file").write_text("patient_id,original_id\n" * 40)
    path = broken(6, "no PixelData")
    rewrite(path, path, PixelData=None)
    path = broken(8, "needs")
    rewrite(path, path, Rows=96)  # declared 96 rows, bytes for 48
    path = broken(9, "65535x65535")
    rewrite(path, path, Rows=65535, Columns=65535)
    path = broken(10, "is a directory")
    path.unlink()
    path.mkdir()
    path = broken(12, "does not exist")
    path.unlink()
    # Still listed (a dangling link inside the root), so the record is planned and
    # its DICOM is found missing when parsed.
    os.symlink(root / "dicoms" / "SYN0001" / "gone.dcm", path)

    # Patient 2: broken contour files.
    def broken_contour(instance: int, fragment: str, kind: str = "i") -> Path:
        path = contour(root, 2, instance, kind)
        bad[("SYN0002", instance)] = (path, fragment)
        return path

    path = broken_contour(2, "'12.5 oops'")
    path.write_text(path.read_text().replace("\n", "\n12.5 oops\n", 1))
    broken_contour(4, "empty contour").write_text("")
    broken_contour(6, "only 2 point(s)").write_text("10.0 10.0\n20.0 20.0\n")
    path = broken_contour(8, "non-finite")
    path.write_text(path.read_text() + "nan 12.0\n")
    path = broken_contour(9, "non-finite", kind="o")
    path.write_text("inf 3.0\n" + path.read_text())
    path = broken_contour(10, "lies outside the 48x64 image")
    path.write_text(path.read_text() + "1e9 -1e9\n")
    broken_contour(12, "UTF-8").write_bytes(b"10.0 10.0\n\xff\xfe 20.0\n30.0 5.0\n")
    path = broken_contour(14, "has no DICOM")
    dicom(root, 2, 14).unlink()

    # Patient 3: valid variants, kept with exact pixels and masks.
    for instance, change in ((2, b"\r\n"), (4, b"\t")):
        path = contour(root, 3, instance)
        text = path.read_bytes()
        path.write_bytes(text.replace(b"\n", change if change == b"\r\n" else b"\n"))
        if change == b"\t":
            path.write_bytes(text.replace(b" ", b"\t"))
    path = contour(root, 3, 6)
    path.write_bytes(b"\n\n" + path.read_bytes().replace(b"\n", b"\n\n") + b"\n  \n")
    for instance, syntax in (
        (8, ImplicitVRLittleEndian),
        (9, ExplicitVRBigEndian),
        (10, DeflatedExplicitVRLittleEndian),
        (12, RLELossless),
    ):
        path = dicom(root, 3, instance)
        with_syntax(path, path, syntax)
    # A byte-order mark and CRLF line ends in link.csv.
    link = root / "link.csv"
    link.write_bytes(b"\xef\xbb\xbf" + link.read_bytes().replace(b"\n", b"\r\n"))
    return root, bad


def pristine(root: Path) -> Path:
    """The same dataset, unbroken."""
    if root.exists():
        shutil.rmtree(root)
    return synth.make_dataset(root, patients=PATIENTS, slices=SLICES, shape=SHAPE, seed=SEED)


# -- RTSTRUCT files -------------------------------------------------------------


def make_rtstruct_corpus(root: Path) -> tuple[Path, object, dict[str, tuple[Path, str]]]:
    """One oblique series whose contours come in five RTSTRUCT files: a good one, a
    truncated one, one whose ContourData is damaged, one with a NaN coordinate and one
    that is an MR image. Returns the root, its layout, and for each problem the
    file and reason fragment the scan must report (by a key naming the case). Slices
    1 and 2 keep their masks; slice 3's contour is in the truncated file and is lost;
    slice 4 keeps one good contour beside a damaged one; slice 5's only contour is NaN.
    """
    import numpy as np

    from daskmri import Layout, RTStruct

    from .rtstructs import Drawn, Roi, oblique_series, slice_header, to_patient, write_rtstruct

    oblique_series(root, slices=6)
    square = np.array([[10.5, 8.5], [30.5, 8.5], [30.5, 20.5], [10.5, 20.5]])

    def drawn(instance: int) -> Drawn:
        ds = slice_header(root, instance)
        return Drawn(to_patient(square, ds), str(ds.SOPInstanceUID))

    folder = root / "rt" / "SYN0001"
    write_rtstruct(folder / "good.dcm", [Roi(1, "LV Endo", [drawn(1), drawn(2)])])
    truncated = write_rtstruct(folder / "truncated.dcm", [Roi(1, "LV Endo", [drawn(3)])])
    truncated.write_bytes(truncated.read_bytes()[:-120])
    marked = drawn(4)
    marked.points[1] = [123.25, 456.5, 789.75]
    damaged = write_rtstruct(folder / "damaged.dcm", [Roi(1, "LV Endo", [marked, drawn(4)])])
    damaged.write_bytes(damaged.read_bytes().replace(b"456.5", b"4x6.5", 1))
    nan = drawn(5)
    nan.points[0] = [111.25, 222.5, 333.75]
    nan_file = write_rtstruct(folder / "nan.dcm", [Roi(1, "LV Endo", [nan])])
    nan_file.write_bytes(nan_file.read_bytes().replace(b"222.5", b"nan  ", 1))
    mr = write_rtstruct(folder / "mr.dcm", [Roi(1, "LV Endo", [drawn(6)])], modality="MR")
    problems = {
        "truncated": (truncated, "truncated"),
        "damaged": (damaged, "contour 0 of ROI 'LV Endo': damaged ContourData"),
        "nan": (nan_file, "contour 0 of ROI 'LV Endo': non-finite coordinates"),
        "not an RTSTRUCT": (mr, "Modality is 'MR', not 'RTSTRUCT'"),
    }
    layout = Layout(
        name="hostile-rt",
        contours=(),
        rtstruct=RTStruct(glob="rt/{patient_id}/*.dcm", rois={"icontour": "lv endo"}),
    )
    return root, layout, problems
