"""Tiny NIfTI datasets in the ACDC, M&Ms and MSD Task02 layouts, written here with
nibabel (not with daskmri.synth), and the eager reference the volume tests compare
with: each file read whole by nibabel, cut into planes by the orientation convention,
masks by ``np.isin`` of the label values. Nothing here goes through daskmri's listing
or reading."""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import nibabel
import numpy as np

from daskmri.sources.nifti import plane_orientation, to_planes

#: Voxels of every test volume (x, y, z), and frames of a cine: x != y, so that a
#: row/column swap shows.
SHAPE = (20, 16, 5)
FRAMES = 6
#: Voxel sizes (mm) along x, y, z.
ZOOMS = (1.5, 1.25, 8.0)
ACDC_KINDS = {"lv": (3,), "myo": (2,), "rv": (1,)}
MNMS_KINDS = {"lv": (1,), "myo": (2,), "rv": (3,)}
MSD_KINDS = {"la": (1,)}
MNMS_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"

# Byte offsets of NIfTI-1 header fields (the standard's nifti1.h).
DIM_OFFSET = 40  # short dim[8]
QFORM_CODE_OFFSET = 252
SFORM_CODE_OFFSET = 254
QOFFSET_X_OFFSET = 268
SROW_X_OFFSET = 280  # float srow_x[4]; srow_y at 296, srow_z at 312
MAGIC_OFFSET = 344


def oblique_affine(angle: float = 0.2, tilt: float = 0.1, flip_x: bool = False) -> np.ndarray:
    """A short-axis-like affine: voxel x mostly toward A, y toward R, z toward S, turned
    by ``angle`` about S and ``tilt`` about R (radians); ``flip_x`` stores x reversed."""
    base = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    c, s = np.cos(angle), np.sin(angle)
    about_s = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    c, s = np.cos(tilt), np.sin(tilt)
    about_r = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = about_r @ about_s @ base @ np.diag(ZOOMS)
    affine[:3, 3] = (10.0, -20.0, 5.0)
    if flip_x:
        affine[:3, 3] += affine[:3, 0] * (SHAPE[0] - 1)
        affine[:3, 0] *= -1
    return affine


def save(path: Path, array: np.ndarray, affine: np.ndarray, dtype=np.int16, scaled=False):
    """Write ``array`` as a NIfTI-1 file (gzipped for ``.gz``). ``scaled``: float data
    stored as int16 with scl_slope/scl_inter, which nibabel computes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if scaled:
        image = nibabel.Nifti1Image(array.astype(np.float32), affine)
        image.set_data_dtype(np.int16)
    else:
        image = nibabel.Nifti1Image(array.astype(dtype), affine)
    nibabel.save(image, str(path))
    return path


def cine(rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
    return rng.integers(0, 500, (*SHAPE, frames)).astype(np.int16)


def label_map(rng: np.random.Generator, values=(1, 2, 3)) -> np.ndarray:
    """Blocks of each label value at random places, on a few slices."""
    label = np.zeros(SHAPE, np.uint8)
    for value in values:
        x, y = rng.integers(0, SHAPE[0] - 5), rng.integers(0, SHAPE[1] - 4)
        z = rng.integers(0, SHAPE[2] - 2)
        label[x : x + 5, y : y + 4, z : z + 2] = value
    return label


def make_acdc(root: Path, patients: int = 2, seed: int = 0) -> Path:
    """``patientNNN/`` folders: a 4D cine, ED (frame 1) and ES (frame 4) 3D images and
    label maps, and Info.cfg. patient002's images are scaled int16 (scl_slope)."""
    rng = np.random.default_rng(seed)
    for n in range(1, patients + 1):
        name = f"patient{n:03d}"
        folder = root / name
        affine = oblique_affine(angle=0.03 * n, flip_x=n % 2 == 0)
        frames = cine(rng)
        scaled = n == 2
        values = frames * 0.37 + 2.0 if scaled else frames
        save(folder / f"{name}_4d.nii.gz", values, affine, scaled=scaled)
        ed, es = 1, 4
        for number in (ed, es):
            image = values[..., number - 1]
            save(folder / f"{name}_frame{number:02d}.nii.gz", image, affine, scaled=scaled)
            save(folder / f"{name}_frame{number:02d}_gt.nii.gz", label_map(rng), affine, np.uint8)
        info = f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 184.0\nNbFrame: {FRAMES}\nWeight: 95\n"
        (folder / "Info.cfg").write_text(info)
    return root


def make_msd(root: Path, patients: int = 3, seed: int = 1, suffix: str = ".nii.gz") -> Path:
    """``imagesTr/la_NNN`` 3D images (float32) and ``labelsTr/la_NNN`` label maps."""
    rng = np.random.default_rng(seed)
    for n in range(1, patients + 1):
        affine = oblique_affine(angle=-0.15 * n, tilt=0.05 * n, flip_x=n == 2)
        image = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
        save(root / "imagesTr" / f"la_{n:03d}{suffix}", image, affine, np.float32)
        save(root / "labelsTr" / f"la_{n:03d}{suffix}", label_map(rng, (1,)), affine, np.uint8)
    (root / "dataset.json").write_text('{"name": "LeftAtrium", "labels": {"0": "bg", "1": "la"}}')
    return root


#: M&Ms patients of make_mnms: (code, folder, ED, ES); C3 has no label map.
MNMS_PATIENTS = (
    ("A0S9V9", "Training/Labeled", 0, 3),
    ("B1C2D3", "Validation", 1, 4),
    ("C3U4N5", "Training/Unlabeled", 2, 5),
)


def make_mnms(root: Path, seed: int = 2) -> Path:
    """The OpenDataset layout: 4D cines, 4D label maps labelled at ED and ES, one CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for n, (code, where, ed, es) in enumerate(MNMS_PATIENTS):
        folder = root / where / code
        affine = oblique_affine(angle=0.3 * n)
        save(folder / f"{code}_sa.nii.gz", cine(rng), affine)
        rows.append({"External code": code, "VendorName": "Siemens", "ED": ed, "ES": es})
        if "Unlabeled" in where:
            continue
        label = np.zeros((*SHAPE, FRAMES), np.uint8)
        label[..., ed], label[..., es] = label_map(rng), label_map(rng)
        save(folder / f"{code}_sa_gt.nii.gz", label, affine, np.uint8)
    with open(root / MNMS_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["External code", "VendorName", "ED", "ES"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# -- the eager reference -----------------------------------------------------------


def planes_of(path: Path, frame: int | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """``(slices, rows, columns)`` float32 planes of one frame of a file, by nibabel,
    and their pixel spacing."""
    image = nibabel.load(str(path))
    data = image.get_fdata().astype(np.float32)
    if data.ndim == 4:
        data = data[..., frame]
    orientation = plane_orientation(image.affine)
    return np.ascontiguousarray(to_planes(data, orientation)[0]), orientation.pixel_spacing


def expected_record(image, label, frame, kinds, phase, image_frame=None, label_frame=None):
    """The planes of one frame of a volume as the dataset should hold them:
    ``{slice: {"image", "masks", "spacing", "phase"}}``."""
    pixels, spacing = planes_of(image, image_frame)
    values = None if label is None else planes_of(label, label_frame)[0]
    out = {}
    for s in range(pixels.shape[0]):
        masks = {
            kind: None if values is None else np.isin(values[s], wanted)
            for kind, wanted in kinds.items()
        }
        out[s] = {"image": pixels[s], "masks": masks, "spacing": spacing, "phase": phase}
    return out


def _add(out: dict, patient: str, original: str, frame: int, planes: dict) -> None:
    for s, record in planes.items():
        record.update(original_id=original, instance=frame * len(planes) + s)
        out[(patient, frame, s)] = record


def acdc_reference(root: Path) -> dict:
    """``{(patient_id, frame, slice): record}`` of an ACDC root's ED and ES frames."""
    out: dict = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        info = dict(line.split(":", 1) for line in (folder / "Info.cfg").read_text().splitlines())
        ed, es = int(info["ED"]), int(info["ES"])
        for number, phase in ((ed, "ED"), (es, "ES")):
            image = folder / f"{folder.name}_frame{number:02d}.nii.gz"
            label = folder / f"{folder.name}_frame{number:02d}_gt.nii.gz"
            planes = expected_record(image, label, number - 1, ACDC_KINDS, phase)
            _add(out, folder.name, folder.name, number - 1, planes)
    return out


def msd_reference(root: Path, suffix: str = ".nii.gz") -> dict:
    out: dict = {}
    for image in sorted((root / "imagesTr").iterdir()):
        patient = image.name.removesuffix(suffix)
        label = root / "labelsTr" / image.name
        _add(out, patient, "imagesTr", 0, expected_record(image, label, 0, MSD_KINDS, ""))
    return out


def mnms_reference(root: Path) -> dict:
    """The labelled frames (ED, ES) of the M&Ms patients that have a label map."""
    out: dict = {}
    for code, where, ed, es in MNMS_PATIENTS:
        image = root / where / code / f"{code}_sa.nii.gz"
        label = root / where / code / f"{code}_sa_gt.nii.gz"
        if not label.exists():
            continue
        for frame, phase in ((ed, "ED"), (es, "ES")):
            planes = expected_record(image, label, frame, MNMS_KINDS, phase, frame, frame)
            _add(out, code, f"{where}/{code}", frame, planes)
    return out


# -- damage ------------------------------------------------------------------------


def _unpacked(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _repack(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def edit_header(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite header bytes at ``offset`` with ``struct.pack('<' + fmt, *values)``."""
    data = bytearray(_unpacked(path))
    packed = struct.pack("<" + fmt, *values)
    data[offset : offset + len(packed)] = packed
    _repack(path, bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file (its compressed bytes) to ``keep`` of its length."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def rewrite(path: Path, array: np.ndarray, like: Path, dtype=np.int16) -> None:
    """Write ``array`` at ``path`` on the grid of ``like`` (its mtime left as the
    write makes it: a rewrite within the same second must show too)."""
    save(path, array, nibabel.load(str(like)).affine, dtype)
