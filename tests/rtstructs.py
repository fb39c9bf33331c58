"""RTSTRUCT files for the tests, written with pydicom: from the real sample's text
contours (each polygon taken into patient coordinates with its slice's own
geometry), and small synthetic series with oblique planes.

Independent of daskmri's own geometry: points go from pixels to patient space by
the DICOM formula written out here, never by :mod:`daskmri.rtstruct`."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from daskmri import Layout, RTStruct, synth

RT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def to_patient(points: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Pixel ``(x, y)`` points of a slice in patient coordinates (mm), by the DICOM
    formula (PS3.3 C.7.6.2.1.1): P = IPP + x * dc * row_dir + y * dr * col_dir."""
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    cosines = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    x, y = np.asarray(points, dtype=np.float64).T
    return origin + np.outer(x * dc, cosines[:3]) + np.outer(y * dr, cosines[3:])


@dataclass
class Drawn:
    """One contour to write: patient points, and the slice it names (or None)."""

    points: np.ndarray
    uid: str | None
    kind: str = "CLOSED_PLANAR"


@dataclass
class Roi:
    number: int
    name: str
    contours: list[Drawn] = field(default_factory=list)


def write_rtstruct(path: Path, rois: Sequence[Roi], *, modality: str = "RTSTRUCT") -> Path:
    """An RTSTRUCT file holding ``rois``, its ContourData written as real files
    write it: decimal strings of at most 16 characters."""
    ds = synth.file_dataset(RT_STORAGE, generate_uid())
    ds.Modality = modality
    ds.StructureSetLabel = "test"
    ds.StructureSetROISequence = [_roi_item(roi) for roi in rois]
    ds.ROIContourSequence = [_contour_item(roi) for roi in rois]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _roi_item(roi: Roi) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ROINumber, item.ROIName = roi.number, roi.name
    return item


def _contour_item(roi: Roi) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedROINumber = roi.number
    item.ContourSequence = []
    for drawn in roi.contours:
        contour = pydicom.Dataset()
        contour.ContourGeometricType = drawn.kind
        contour.NumberOfContourPoints = len(drawn.points)
        contour.ContourData = [format_number_as_ds(float(v)) for v in drawn.points.ravel()]
        if drawn.uid is not None:
            image = pydicom.Dataset()
            image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = MR_STORAGE, drawn.uid
            contour.ContourImageSequence = [image]
        item.ContourSequence.append(contour)
    return item


#: The real sample's two kinds as ROI names, and the layout that reads them.
REAL_ROIS = {"icontour": "LV Endocardium", "ocontour": "LV Epicardium"}
RT_LAYOUT = Layout(
    name="rtstruct",
    contours=(),
    rtstruct=RTStruct(
        glob="rtstruct/{patient_id}/*.dcm",
        rois={"icontour": r"lv endo(cardium)?", "ocontour": r"lv epi(cardium)?"},
    ),
)


def real_as_rtstruct(table, root: Path) -> Path:
    """The labelled slices of the real sample (a :func:`daskmri.scan` table) copied to
    ``root``, with one RTSTRUCT per patient holding their text contours."""
    (root / "link.csv").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(table.attrs["root"]) / "link.csv", root / "link.csv")
    with warnings.catch_warnings():  # the real files' UIDs, which pydicom warns about
        warnings.simplefilter("ignore")
        _write_real(table, root)
    return root


def _write_real(table, root: Path) -> None:
    for patient, rows in table.groupby("patient_id"):
        rois = [Roi(1, REAL_ROIS["icontour"]), Roi(2, REAL_ROIS["ocontour"])]
        for row in rows.itertuples():
            target = root / "dicoms" / patient / Path(row.image_path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(row.image_path, target)
            ds = pydicom.dcmread(row.image_path, stop_before_pixels=True)
            for roi, path in zip(rois, (row.icontour_path, row.ocontour_path), strict=True):
                if path is not None:
                    points = np.loadtxt(path, ndmin=2)
                    roi.contours.append(Drawn(to_patient(points, ds), str(ds.SOPInstanceUID)))
        write_rtstruct(root / "rtstruct" / patient / "rt.dcm", rois)


# -- a synthetic oblique series -------------------------------------------------

#: Oblique direction cosines, rounded to 6 digits as real files store them (so not
#: exactly orthonormal).
_A, _B, _T = np.array([0.8, 0.36, -0.48]), np.array([0.6, -0.48, 0.64]), 0.3
ROW_DIR = np.round(np.cos(_T) * _A + np.sin(_T) * _B, 6)
COL_DIR = np.round(-np.sin(_T) * _A + np.cos(_T) * _B, 6)
SPACING = (1.3671875, 1.25)  # between rows, between columns (mm)
GAP = 8.0
SHAPE = (40, 48)


def oblique_series(root: Path, *, slices: int = 6, same_plane: Sequence[int] = ()) -> Path:
    """A one-patient synthetic dataset whose slices lie in parallel oblique planes,
    ``GAP`` mm apart (instances in ``same_plane`` share the plane of instance 1)."""
    synth.make_dataset(root, patients=1, slices=slices, shape=SHAPE, seed=5)
    normal = np.cross(ROW_DIR, COL_DIR)
    normal /= np.linalg.norm(normal)
    for path in sorted((root / "dicoms" / "SYN0001").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        step = 0 if ds.InstanceNumber in same_plane else ds.InstanceNumber - 1
        origin = np.array([-40.25, 12.5, 30.0]) + step * GAP * normal
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in origin]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*ROW_DIR, *COL_DIR)]
        ds.PixelSpacing = list(SPACING)
        ds.SpacingBetweenSlices = GAP
        ds.save_as(path, enforce_file_format=True)
    return root


def slice_header(root: Path, instance: int) -> pydicom.Dataset:
    return pydicom.dcmread(root / "dicoms" / "SYN0001" / f"{instance}.dcm", stop_before_pixels=True)
