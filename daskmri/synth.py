"""Synthetic Sunnybrook-layout datasets with a known ground truth.

Every file is a function of ``(seed, patient, instance)``: the same arguments
give the same bytes, and tests can recompute the exact pixels
(:func:`slice_pixels`, :func:`patient_rescale`) and polygons
(:func:`slice_contours`) that were written.

Each patient gets slices ``1..slices``. A slice has an inner contour when its
instance is even and an outer contour when it is a multiple of 3, so a dataset
holds i-only, o-only, both and unlabelled slices. Even-numbered patients carry a
RescaleSlope/RescaleIntercept; odd ones do not.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .errors import DaskmriError

__all__ = [
    "file_dataset",
    "make_dataset",
    "patient_ids",
    "patient_rescale",
    "patient_shape",
    "patient_spacing",
    "slice_contours",
    "slice_pixels",
]

# Contour vertices lie on a 1/64-pixel grid: exactly representable in binary and
# in six-decimal text, so what is written is exactly what is read back.
_GRID = 64
_VERTICES = 48


def patient_ids(patients: int) -> list[tuple[str, str]]:
    """``(patient_id, original_id)`` of each synthetic patient, in order.

    Examples
    --------
    >>> patient_ids(2)
    [('SYN0001', 'SYN-C-1'), ('SYN0002', 'SYN-C-2')]
    """
    return [(f"SYN{k:04d}", f"SYN-C-{k}") for k in range(1, patients + 1)]


def patient_rescale(patient: int) -> tuple[float, float] | None:
    """``(slope, intercept)`` written on every slice of 1-based ``patient``, or None."""
    return (0.5, -1024.0) if patient % 2 == 0 else None


def _geometry(seed: int, patient: int, instance: int, shape: tuple[int, int]):
    height, width = shape
    rng = np.random.default_rng([seed, patient, instance, 1])
    size = min(height, width)
    cy = height / 2 + rng.uniform(-0.05, 0.05) * height
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    r_in = size * (0.10 + 0.04 * np.sin(instance / 3.0) ** 2)
    r_out = r_in * rng.uniform(1.35, 1.6)
    return cx, cy, r_in, r_out, rng.uniform(0, 2 * np.pi)


def _on_grid_polygon(cx, cy, rx, ry, phase) -> np.ndarray:
    """Polygon on the quarter grid with no integer pixel point exactly on an edge,
    so that the even-odd mask has one unambiguous answer."""
    theta = phase + np.linspace(0, 2 * np.pi, _VERTICES, endpoint=False)
    for nudge in range(_GRID * 4):
        x = np.round((cx + nudge / 7 + rx * np.cos(theta)) * _GRID).astype(np.int64)
        y = np.round((cy + nudge / 11 + ry * np.sin(theta)) * _GRID).astype(np.int64)
        if not _integer_point_on_edge(x, y):
            return np.column_stack([x, y]).astype(np.float64) / _GRID
    raise AssertionError("could not place a polygon off the pixel grid")  # pragma: no cover


def _integer_point_on_edge(x: np.ndarray, y: np.ndarray) -> bool:
    # Exact integer arithmetic in units of 1/_GRID pixel, over the polygon's box only.
    rr, cc = np.mgrid[
        y.min() // _GRID : -(-y.max() // _GRID) + 1, x.min() // _GRID : -(-x.max() // _GRID) + 1
    ]
    px, py = (cc.ravel() * _GRID)[:, None], (rr.ravel() * _GRID)[:, None]
    x0, y0, x1, y1 = x, y, np.roll(x, -1), np.roll(y, -1)
    cross = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    within = (
        (px >= np.minimum(x0, x1))
        & (px <= np.maximum(x0, x1))
        & (py >= np.minimum(y0, y1))
        & (py <= np.maximum(y0, y1))
    )
    return bool(((cross == 0) & within).any())


def slice_contours(
    *, seed: int, patient: int, instance: int, shape: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The inner and outer polygons written for one slice (None where there is none).

    Examples
    --------
    >>> inner, outer = slice_contours(seed=0, patient=1, instance=2, shape=(64, 64))
    >>> inner.shape, outer is None
    ((48, 2), True)
    """
    cx, cy, r_in, r_out, phase = _geometry(seed, patient, instance, shape)
    inner = outer = None
    if instance % 2 == 0:
        inner = _on_grid_polygon(cx, cy, r_in, r_in * 0.9, phase)
    if instance % 3 == 0:
        outer = _on_grid_polygon(cx, cy, r_out, r_out * 0.9, phase)
    return inner, outer


def slice_pixels(*, seed: int, patient: int, instance: int, shape: tuple[int, int]) -> np.ndarray:
    """The stored (before rescale) int16 pixels of one slice: a bright blood pool,
    a darker myocardial ring and noise, like a short-axis cine frame.

    Examples
    --------
    >>> slice_pixels(seed=0, patient=1, instance=1, shape=(8, 8)).dtype
    dtype('int16')
    """
    height, width = shape
    cx, cy, r_in, r_out, _ = _geometry(seed, patient, instance, shape)
    rng = np.random.default_rng([seed, patient, instance, 2])
    rr, cc = np.mgrid[0:height, 0:width]
    radius = np.hypot(cc - cx, (rr - cy) / 0.9)
    image = 120 + 25 * rng.standard_normal(shape)
    image += np.where(radius < r_in, 700, np.where(radius < r_out, 260, 0))
    return np.clip(image, -32768, 32767).astype(np.int16)


def patient_shape(shape, patient: int) -> tuple[int, int]:
    """The image size of 1-based ``patient`` for :func:`make_dataset`'s ``shape``:
    one ``(rows, columns)`` for all, or a list of them taken in turn.

    Examples
    --------
    >>> [patient_shape([(32, 32), (40, 24)], p) for p in (1, 2, 3)]
    [(32, 32), (40, 24), (32, 32)]
    """
    shapes = [shape] if np.ndim(shape) == 1 else list(shape)
    rows, columns = shapes[(patient - 1) % len(shapes)]
    return int(rows), int(columns)


def patient_spacing(spacing, patient: int) -> tuple[float, float] | None:
    """The PixelSpacing (mm) written for 1-based ``patient``: ``spacing`` is one number,
    one ``(row, column)`` pair, None (no PixelSpacing written), or a list of these
    taken in turn.

    Examples
    --------
    >>> [patient_spacing([1.25, (0.8, 1.0), None], p) for p in (1, 2, 3)]
    [(1.25, 1.25), (0.8, 1.0), None]
    """
    choices = [spacing] if _one_spacing(spacing) else list(spacing)
    value = choices[(patient - 1) % len(choices)]
    if value is None:
        return None
    return (float(value), float(value)) if np.isscalar(value) else tuple(map(float, value))


def _one_spacing(value) -> bool:
    pair = isinstance(value, tuple) and len(value) == 2 and all(map(np.isscalar, value))
    return value is None or np.isscalar(value) or pair


def file_dataset(sop_class_uid: str, sop_instance_uid: str) -> pydicom.Dataset:
    """An empty DICOM file dataset of one SOP class and instance, with the file meta
    information (explicit VR little endian) and preamble that a DICOM file needs.

    Examples
    --------
    >>> from pydicom.uid import MRImageStorage
    >>> ds = file_dataset(MRImageStorage, "1.2.3")
    >>> ds.SOPInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID
    ('1.2.3', '1.2.3')
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, sop_instance_uid
    return ds


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    instance: int,
    uid_seed: list[str],
    rescale,
    spacing: tuple[float, float] | None,
) -> None:
    ds = file_dataset(MRImageStorage, generate_uid(entropy_srcs=[*uid_seed, str(instance)]))
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[*uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*uid_seed, "series"])
    ds.Modality = "MR"
    ds.PatientID = patient_id
    ds.PatientName = f"Synthetic^{patient_id}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 8.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_contour(path: Path, points: np.ndarray) -> None:
    path.write_text("".join(f"{x:.6f} {y:.6f}\n" for x, y in points))


def make_dataset(
    root: str | os.PathLike[str],
    *,
    patients: int = 3,
    slices: int = 20,
    shape: tuple[int, int] | list[tuple[int, int]] = (256, 256),
    seed: int = 0,
    spacing: float | tuple[float, float] | list | None = 1.25,
) -> Path:
    """Write a complete synthetic dataset in the Sunnybrook layout.

    The tree is ``link.csv``, ``dicoms/<patient_id>/<N>.dcm`` and
    ``contourfiles/<original_id>/{i,o}-contours/IM-0001-<NNNN>-{i,o}contour-manual.txt``.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into: created if needed; if it exists it must be empty.
    patients, slices : int
        How many patients, and how many slices each.
    shape : (rows, columns), or a list of them
        Image size; a list gives the patients their sizes in turn (mixed sizes,
        see :func:`patient_shape`).
    seed : int
        Same seed, same bytes.
    spacing : float, (row_mm, column_mm), None, or a list of these
        PixelSpacing, in turn per patient with a list; None writes none
        (:func:`patient_spacing`).

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    DaskmriError
        If ``root`` is a file or a folder that is not empty (nothing is written).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = make_dataset(tempfile.mkdtemp(), patients=2, slices=6, shape=(32, 32))
    >>> len(daskmri.scan(root, labels="all").table)
    12
    """
    if patients < 1 or slices < 1:
        raise ValueError(f"need at least one patient and one slice, got {patients=}, {slices=}")
    shapes = [patient_shape(shape, p) for p in range(1, patients + 1)]
    if min(min(s) for s in shapes) < 16:
        raise ValueError(f"shape {shape} is too small for the phantom; use at least 16x16")
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # It writes link.csv and dicoms/: never over someone's dataset or files.
        raise DaskmriError(
            f"{root} is not an empty folder; make_dataset writes only into a new or "
            "empty folder, so pass one"
        )
    root.mkdir(parents=True, exist_ok=True)
    ids = patient_ids(patients)
    with open(root / "link.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["patient_id", "original_id"])
        writer.writerows(ids)
    for patient, (patient_id, original_id) in enumerate(ids, start=1):
        shape = shapes[patient - 1]
        dicom_dir = root / "dicoms" / patient_id
        dicom_dir.mkdir(parents=True, exist_ok=True)
        contour_dir = root / "contourfiles" / original_id
        (contour_dir / "i-contours").mkdir(parents=True, exist_ok=True)
        (contour_dir / "o-contours").mkdir(parents=True, exist_ok=True)
        for instance in range(1, slices + 1):
            pixels = slice_pixels(seed=seed, patient=patient, instance=instance, shape=shape)
            _write_dicom(
                dicom_dir / f"{instance}.dcm",
                pixels,
                patient_id=patient_id,
                instance=instance,
                uid_seed=[str(seed), patient_id],
                rescale=patient_rescale(patient),
                spacing=patient_spacing(spacing, patient),
            )
            inner, outer = slice_contours(
                seed=seed, patient=patient, instance=instance, shape=shape
            )
            stem = f"IM-0001-{instance:04d}"
            if inner is not None:
                _write_contour(contour_dir / "i-contours" / f"{stem}-icontour-manual.txt", inner)
            if outer is not None:
                _write_contour(contour_dir / "o-contours" / f"{stem}-ocontour-manual.txt", outer)
    return root
