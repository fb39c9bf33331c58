"""Synthetic datasets with a known ground truth.

Synthetic datasets with a known ground truth: Sunnybrook-layout DICOMs
(:func:`make_dataset`) and NIfTI volume datasets in the ACDC, M&Ms and MSD
Task02_Heart layouts (:func:`make_volume_dataset`).

Every file is a function of ``(seed, patient, instance)``: the same arguments
give the same bytes, and tests can recompute the exact pixels
(:func:`slice_pixels`, :func:`patient_rescale`) and polygons
(:func:`slice_contours`) that were written.

Each patient gets slices ``1..slices``. A slice has an inner contour when its
instance is even and an outer contour when it is a multiple of 3, so a dataset
holds i-only, o-only, both and unlabelled slices. Even-numbered patients carry a
RescaleSlope/RescaleIntercept; odd ones do not.

A volume dataset's patient is a 4D cine of a beating phantom heart: an LV disk, a
myocardial ring around it and an RV crescent beside it, shrinking toward the apex
and contracting from ED (frame 0) to ES (the middle frame). Every voxel is a function
of ``(seed, patient)``: :func:`volume_phantom` and :func:`volume_affine` give back
exactly what was written.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .errors import DaskmriError

__all__ = [
    "VOLUME_LABELS",
    "VOLUME_SPACING",
    "file_dataset",
    "make_dataset",
    "make_volume_dataset",
    "patient_ids",
    "patient_rescale",
    "patient_shape",
    "patient_spacing",
    "slice_contours",
    "slice_pixels",
    "volume_affine",
    "volume_ed_es",
    "volume_patient_ids",
    "volume_phantom",
    "volume_rescale",
    "write_msd_json",
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
    """The stored int16 pixels of one synthetic slice, before the rescale.

    The stored (before rescale) int16 pixels of one slice: a bright blood pool,
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
    """The image size of 1-based ``patient``, from :func:`make_dataset`'s ``shape``.

    The image size of 1-based ``patient`` for :func:`make_dataset`'s ``shape``:
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
    """The PixelSpacing (mm) written for 1-based ``patient``.

    The PixelSpacing (mm) written for 1-based ``patient``: ``spacing`` is one number,
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
    """An empty DICOM file dataset, ready to be filled and written.

    An empty DICOM file dataset of one SOP class and instance, with the file meta
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
    root = _new_folder(root, "make_dataset")
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


# -- NIfTI volume datasets (issue 25) ---------------------------------------------------

#: Voxel size (mm) along the file's x, y and z axes: anisotropic in the plane, so a
#: spacing that is not permuted along with the array shows.
VOLUME_SPACING = (1.25, 1.5, 8.0)

#: Each layout's label value of each kind (the MSD Task02 phantom's ``la`` is the LV
#: disk, standing in for the left atrium).
VOLUME_LABELS = {
    "acdc": {"rv": 1, "myo": 2, "lv": 3},
    "mnms": {"lv": 1, "myo": 2, "rv": 3},
    "msd-heart": {"la": 1},
}

_VOLUME_LAYOUTS = {"acdc": "acdc", "mnms": "mnms", "msd": "msd-heart", "msd-heart": "msd-heart"}
_MNMS_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
# As the real file's, whose columns a reader finds by name (ED and ES 0-based).
_MNMS_COLUMNS = (
    "External code",
    "VendorName",
    "Vendor",
    "Centre",
    "ED",
    "ES",
    "Age",
    "Pathology",
    "Sex",
    "Height",
    "Weight",
)


def _volume_layout(layout: str) -> str:
    try:
        return _VOLUME_LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"layout must be 'acdc', 'mnms' or 'msd-heart', not {layout!r}") from None


def volume_patient_ids(layout: str, patients: int) -> list[str]:
    """The patient_id (folder or file stem) of each patient of a volume dataset.

    Examples
    --------
    >>> volume_patient_ids("acdc", 2), volume_patient_ids("mnms", 1), volume_patient_ids("msd", 1)
    (['patient001', 'patient002'], ['SYN001'], ['la_001'])
    """
    layout = _volume_layout(layout)
    if layout == "acdc":
        return [f"patient{k:03d}" for k in range(1, patients + 1)]
    if layout == "mnms":  # six characters, as M&Ms' external codes
        return [f"SYN{k:03d}" for k in range(1, patients + 1)]
    return [f"la_{k:03d}" for k in range(1, patients + 1)]


def volume_ed_es(frames: int) -> tuple[int, int]:
    """The 0-based ED and ES frames of a cine of ``frames`` frames.

    Examples
    --------
    >>> volume_ed_es(10)
    (0, 5)
    """
    return 0, frames // 2


def volume_rescale(patient: int) -> tuple[float, float] | None:
    """``(scl_slope, scl_inter)`` of 1-based ``patient``'s image, or None (unscaled).

    Examples
    --------
    >>> volume_rescale(1), volume_rescale(2)
    (None, (0.5, -100.0))
    """
    return (0.5, -100.0) if patient % 2 == 0 else None


def volume_affine(patient: int, slices: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The RAS+ affine written for 1-based ``patient``'s volumes.

    The RAS+ affine written for 1-based ``patient``: :data:`VOLUME_SPACING`, tilted
    like a cardiac short-axis stack (no voxel axis along a world axis, each well
    within 45 degrees of one), centred near the world origin.

    Examples
    --------
    >>> a = volume_affine(1, 8)
    >>> np.round(np.linalg.norm(a[:3, :3], axis=0), 6).tolist()
    [1.25, 1.5, 8.0]
    """
    angles = np.radians([20.0 + patient % 5, -12.0, 15.0 - patient % 4])
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = c, -s, s, c
        rotation = rotation @ turn
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(VOLUME_SPACING)
    centre = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, (slices - 1) / 2])
    affine[:3, 3] = np.array([5.0 * patient, -20.0, 10.0]) - affine[:3, :3] @ centre
    return affine


def volume_phantom(
    *, seed: int, patient: int, frames: int, slices: int, shape: tuple[int, int]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The stored int16 image ``(x, y, z, t)`` of one patient and its kinds' masks.

    Returns
    -------
    (numpy.ndarray, dict)
        The raw int16 voxels (before :func:`volume_rescale`), and bool masks ``lv``,
        ``myo`` and ``rv`` of the same shape, on every frame (a layout writes the
        ED and ES frames' labels only).

    Examples
    --------
    >>> image, masks = volume_phantom(seed=0, patient=1, frames=4, slices=3, shape=(32, 32))
    >>> image.shape, image.dtype.name, sorted(masks)
    ((32, 32, 3, 4), 'int16', ['lv', 'myo', 'rv'])
    >>> bool(masks["lv"][..., 0].sum() > masks["lv"][..., 2].sum())  # ED larger than ES
    True
    """
    nx, ny = shape
    rng = np.random.default_rng([seed, patient, 25])
    cx = nx / 2 + rng.uniform(-0.05, 0.05) * nx
    cy = ny / 2 + rng.uniform(-0.05, 0.05) * ny
    x, y = np.mgrid[0:nx, 0:ny].astype(np.float64)
    out = {k: np.zeros((nx, ny, slices, frames), bool) for k in ("lv", "myo", "rv")}
    size = min(nx, ny)
    for t, z in np.ndindex(frames, slices):
        contraction = 0.5 * (1 - np.cos(2 * np.pi * t / frames))  # 0 at ED, 1 at ES
        taper = 1 - 0.5 * z / max(slices, 1)  # smaller toward the apex
        r_lv = size * 0.16 * taper * (1 - 0.3 * contraction)
        r_epi = r_lv + size * 0.06 * (1 + 0.4 * contraction)
        # Elliptic, so that a transpose of the plane shows.
        rho = np.hypot(x - cx, (y - cy) / 0.85)
        rv_rho = np.hypot(x - cx + 0.9 * r_epi, (y - cy) / 0.85)
        out["lv"][:, :, z, t] = rho < r_lv
        out["myo"][:, :, z, t] = (rho >= r_lv) & (rho < r_epi)
        out["rv"][:, :, z, t] = (rv_rho < 1.2 * r_epi) & (rho >= r_epi)
    image = 120 + 25 * rng.standard_normal(out["lv"].shape)
    image += 700 * out["lv"] + 260 * out["myo"] + 620 * out["rv"]
    return np.clip(image, -32768, 32767).astype(np.int16), out


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, rescale=None) -> None:
    import nibabel

    image = nibabel.Nifti1Image(data, affine)
    # Both forms, as scanners' converters write them; a scaled image exercises
    # scl_slope / scl_inter.
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_slope_inter(*(rescale or (1.0, 0.0)))
    image.header.set_xyzt_units("mm", "msec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, str(path))


def _label_map(masks: dict[str, np.ndarray], values: dict[str, int], frames) -> np.ndarray:
    """uint8 label map of ``masks`` on ``frames`` (0 elsewhere)."""
    labels = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for frame in frames:
        for kind, value in values.items():
            source = masks["lv" if kind == "la" else kind]
            labels[..., frame][source[..., frame]] = value
    return labels


def _write_acdc_patient(folder: Path, name: str, image, masks, affine, rescale, ext) -> None:
    """One ACDC patient: Info.cfg, the 4D cine, and the ED and ES frames and labels."""
    frames = image.shape[3]
    ed, es = volume_ed_es(frames)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(
        f"ED: {ed + 1}\nES: {es + 1}\nGroup: NOR\nHeight: 175.0\nNbFrame: {frames}\nWeight: 70.0\n"
    )
    _save_nifti(image, affine, folder / f"{name}_4d{ext}", rescale)
    labels = _label_map(masks, VOLUME_LABELS["acdc"], (ed, es))
    for frame in (ed, es):
        stem = f"{name}_frame{frame + 1:02d}"
        _save_nifti(image[..., frame], affine, folder / f"{stem}{ext}", rescale)
        _save_nifti(labels[..., frame], affine, folder / f"{stem}_gt{ext}")


def _write_volume_patient(root: Path, layout: str, name: str, phantom, affine, rescale, ext):
    """One patient of ``layout``; returns its M&Ms CSV row (None for the others)."""
    image, masks = phantom
    ed, es = volume_ed_es(image.shape[3])
    if layout == "acdc":
        _write_acdc_patient(root / name, name, image, masks, affine, rescale, ext)
        return None
    if layout == "mnms":
        folder = root / "Training" / "Labeled" / name
        _save_nifti(image, affine, folder / f"{name}_sa{ext}", rescale)
        labels = _label_map(masks, VOLUME_LABELS["mnms"], (ed, es))
        _save_nifti(labels, affine, folder / f"{name}_sa_gt{ext}")
        return [name, "Siemens", "A", 1, ed, es, 50, "NOR", "F", 165.0, 60.0]
    # MSD Task02_Heart: one 3D volume per case, the ED frame.
    _save_nifti(image[..., ed], affine, root / "imagesTr" / f"{name}{ext}", rescale)
    labels = _label_map(masks, VOLUME_LABELS["msd-heart"], (ed,))[..., ed]
    _save_nifti(labels, affine, root / "labelsTr" / f"{name}{ext}")
    return None


def _write_volume_index(root: Path, layout: str, names: list[str], rows: list, ext: str) -> None:
    """The M&Ms info CSV, or MSD's dataset.json (ACDC keeps its Info.cfg per patient)."""
    if layout == "mnms":
        with open(root / _MNMS_CSV, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(_MNMS_COLUMNS)
            writer.writerows(rows)
    elif layout == "msd-heart":
        training = [
            {"image": f"./imagesTr/{n}{ext}", "label": f"./labelsTr/{n}{ext}"} for n in names
        ]
        write_msd_json(root, training, "daskmri synthetic phantom (the LV disk as the atrium)")


def _new_folder(root: str | os.PathLike[str], who: str) -> Path:
    """``root``, made; refused unless it is new or empty: a synthetic dataset is never
    written over someone's dataset or files."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DaskmriError(
            f"{root} is not an empty folder; {who} writes only into a new or empty folder, "
            "so pass one"
        )
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_msd_json(root: Path, training: list[dict], description: str) -> None:
    """The ``dataset.json`` of an MSD Task02_Heart-shaped folder listing ``training``."""
    values = {
        "name": "LeftAtrium",
        "description": description,
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(values, indent=4))


def make_volume_dataset(
    root: str | os.PathLike[str],
    *,
    layout: str = "acdc",
    patients: int = 2,
    frames: int = 10,
    slices: int = 8,
    shape: tuple[int, int] = (64, 64),
    seed: int = 0,
    compress: bool = True,
) -> Path:
    """Write a synthetic NIfTI volume dataset in the ACDC, M&Ms or MSD Task02 layout.

    - ``"acdc"``: ``patientNNN/Info.cfg`` (``ED: 1``, ``ES: n``, 1-based),
      ``patientNNN_4d.nii.gz`` and ``patientNNN_frameFF[_gt].nii.gz`` for ED and ES
      (labels 1 RV, 2 MYO, 3 LV).
    - ``"mnms"``: ``Training/Labeled/<code>/<code>_sa[_gt].nii.gz`` (4D, labelled at
      ED and ES only: 1 LV, 2 MYO, 3 RV) and the root info CSV (``External code``,
      ``ED``, ``ES`` 0-based, ...).
    - ``"msd-heart"`` (or ``"msd"``): ``imagesTr/la_NNN.nii.gz`` (3D, the ED frame),
      ``labelsTr/la_NNN.nii.gz`` (1 = the LV disk, as the left atrium) and
      ``dataset.json``.

    Every image is int16 on the oblique grid of :func:`volume_affine`
    (:data:`VOLUME_SPACING`); even patients' carry ``scl_slope`` 0.5 and ``scl_inter``
    -100 (:func:`volume_rescale`). ED is frame 0, ES the middle frame
    (:func:`volume_ed_es`); the voxels are :func:`volume_phantom`'s.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into (the preset's root): created if needed; if it exists it
        must be empty.
    layout : str
        ``"acdc"``, ``"mnms"`` or ``"msd-heart"``.
    patients, frames, slices : int
        How many patients, cine frames (at least 2) and slices per volume.
    shape : (int, int)
        The in-plane voxel counts, along the file's x and y axes (at least 16 each).
    seed : int
        Same seed, same voxels.
    compress : bool
        ``.nii.gz`` files (True) or ``.nii``.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    ValueError
        An unknown layout, or too few patients, frames, slices or voxels.
    DaskmriError
        If ``root`` is a file or a folder that is not empty (nothing is written).

    Examples
    --------
    >>> import tempfile, nibabel
    >>> root = make_volume_dataset(tempfile.mkdtemp(), patients=1, frames=4, slices=3,
    ...                            shape=(32, 24))
    >>> sorted(p.name for p in (root / "patient001").iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['Info.cfg', 'patient001_4d.nii.gz', 'patient001_frame01.nii.gz',
     'patient001_frame01_gt.nii.gz', 'patient001_frame03.nii.gz',
     'patient001_frame03_gt.nii.gz']
    >>> nibabel.load(root / "patient001" / "patient001_4d.nii.gz").shape
    (32, 24, 3, 4)
    """
    layout = _volume_layout(layout)
    if patients < 1 or frames < 2 or slices < 1:
        raise ValueError(
            f"need a patient, 2 frames (ED and ES) and a slice, got {patients=}, {frames=}, "
            f"{slices=}"
        )
    if min(shape) < 16:
        raise ValueError(f"shape {shape} is too small for the phantom; use at least 16x16")
    root = _new_folder(root, "make_volume_dataset")
    ext = ".nii.gz" if compress else ".nii"
    names = volume_patient_ids(layout, patients)
    rows = []
    for patient, name in enumerate(names, start=1):
        phantom = volume_phantom(
            seed=seed, patient=patient, frames=frames, slices=slices, shape=tuple(shape)
        )
        affine = volume_affine(patient, slices, tuple(shape))
        rows.append(
            _write_volume_patient(root, layout, name, phantom, affine, volume_rescale(patient), ext)
        )
    _write_volume_index(root, layout, names, rows, ext)
    return root
