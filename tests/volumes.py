"""The real Sunnybrook sample converted into the volume layouts of issue 25 (ACDC,
M&Ms, MSD Task02_Heart), with the records the volume path must give.

A module of its own, like ``rtstructs.py`` and ``hostile.py``, so that the tests and a
benchmark can build the same datasets. Everything here is computed from the DICOM
path's own readers (:func:`daskmri.dicom.read_slice`, :func:`daskmri.contours.read_contour`
and :func:`daskmri.contours.polygon_mask`) and from nibabel, never from
:mod:`daskmri.sources.nifti`, so the volume path is checked against an independent
answer.

How a Sunnybrook series becomes a 4D cine
-----------------------------------------
Each patient's DICOMs are one series (one ImageOrientationPatient) of slices at several
positions along the slice normal (``n = row cosines x column cosines``), each position
holding a run of trigger times. Files are grouped by ``ImagePositionPatient . n``
(rounded to 0.01 mm, well under the 8-10 mm slice gap) and, within a position, ordered
by TriggerTime (then InstanceNumber): the f-th trigger time of every position is frame
f. Positions with unequal frame counts cannot all stay: :func:`complete_block` keeps the
block of positions x frames with the most images (a position with fewer frames than
the block is dropped, and frames past the block's count are dropped). The sample has
no gap: 12 x 20, 13 x 20 and 10 x 20 (positions x frames), 700 files, all kept.

The NIfTI voxel axes are (DICOM column, DICOM row, position, frame), positions in
increasing ``IPP . n``; the affine is the DICOM geometry (PixelSpacing, the cosines, the
step between positions) taken from DICOM's LPS to NIfTI's RAS (x and y negated), so
every voxel sits where its DICOM pixel does in patient space.

Pixels: the sample's float32 DICOM values (``read_slice``) are integers within int16
and are stored as int16 without scaling, which nibabel gives back exactly; values that
are not would be stored as float32 (exact too), never rounded.

Labels: ``lv`` = the i-contour's polygon mask, ``myo`` = the o-contour's minus the
i-contour's. Contours lie on two frames per patient (the sample's ED and ES), every
other frame holds none; the two frames with the most contoured slices become ED and
ES, ED being the one with the larger LV cavity. A slice of those frames without a
contour gets label 0, where the DICOM path has no record: :attr:`Cine.contoured` says
which (frame, position) pairs carry which contour, so a test can compare those only.
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from daskmri import synth
from daskmri.contours import polygon_mask, read_contour
from daskmri.dicom import read_slice

#: The real sample, beside the checkout (as conftest.REAL_DATA).
SUNNYBROOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook"

#: The label value of each kind in each layout (ACDC: 1 RV, 2 MYO, 3 LV; M&Ms the
#: other way round; MSD Task02: 1 left atrium, here the i-contour).
LABELS = {
    "acdc": {"lv": 3, "myo": 2, "rv": 1},
    "mnms": {"lv": 1, "myo": 2, "rv": 3},
    "msd": {"la": 1},
}
MNMS_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"

# Positions closer than this along the normal are one position (mm).
_POSITION_DECIMALS = 2


@dataclass(frozen=True)
class PlaneTransform:
    """How a DICOM image ``[row, column]`` becomes the volume path's plane: transpose
    first (if at all), then flip the rows and/or the columns of the result."""

    transpose: bool
    flip_rows: bool
    flip_columns: bool

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` (2D, or any ``(..., rows, columns)``) in the volume path's order."""
        out = np.swapaxes(image, -1, -2) if self.transpose else image
        if self.flip_rows:
            out = out[..., ::-1, :]
        if self.flip_columns:
            out = out[..., :, ::-1]
        return out

    def __str__(self) -> str:
        steps = [
            name
            for name, on in (
                ("transpose", self.transpose),
                ("flip rows", self.flip_rows),
                ("flip columns", self.flip_columns),
            )
            if on
        ]
        return ", then ".join(steps) or "identity"


#: The 8 flips and transposes of a 2D image.
ALL_TRANSFORMS = tuple(PlaneTransform(*bits) for bits in itertools.product((False, True), repeat=3))


@dataclass(frozen=True)
class Variant:
    """Another voxel order of the same physical volume: ``flips`` of the voxel axes
    (x, y, z) and an in-plane ``transpose`` (x <-> y), the affine adjusted to match."""

    flips: tuple[bool, bool, bool] = (False, False, False)
    transpose: bool = False

    def ornt(self) -> np.ndarray:
        """nibabel's orientation array of this reordering."""
        axes = (1, 0, 2) if self.transpose else (0, 1, 2)
        return np.array([[axes[k], -1 if self.flips[k] else 1] for k in range(3)])

    def apply(self, data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(data, affine)`` in this voxel order (trailing frame axis kept), as
        nibabel's ``apply_orientation`` and ``inv_ornt_aff`` do it."""
        from nibabel.orientations import apply_orientation, inv_ornt_aff

        ornt = self.ornt()
        return apply_orientation(data, ornt), affine @ inv_ornt_aff(ornt, data.shape[:3])

    def __str__(self) -> str:
        flips = "".join(a for a, f in zip("xyz", self.flips, strict=True) if f)
        return f"flip[{flips or '-'}]{'+T' if self.transpose else ''}"


#: The identity and the 15 other voxel orders of a volume (8 flips x transpose).
VARIANTS = tuple(
    Variant(flips, transpose)
    for transpose in (False, True)
    for flips in itertools.product((False, True), repeat=3)
)


@dataclass(frozen=True, eq=False)
class Cine:
    """One Sunnybrook patient as a 4D cine, in NIfTI voxel order's building blocks.

    ``images``, ``inner`` and ``outer`` are ``(frames, positions, rows, columns)`` in
    the DICOM pixel order; position k is the k-th in increasing ``IPP . n``.
    """

    patient_id: str
    original_id: str
    paths: tuple[tuple[str, ...], ...]  # [frame][position]: the DICOM file
    images: np.ndarray  # float32, read_slice's values
    inner: np.ndarray  # bool, the i-contour's polygon mask (False without one)
    outer: np.ndarray  # bool, the o-contour's polygon mask (False without one)
    contoured: dict[tuple[int, int], frozenset[str]]  # (frame, position) -> {"i", "o"}
    affine: np.ndarray  # RAS, (column, row, position) -> mm
    ed: int
    es: int
    dropped: tuple[str, ...] = field(default=())  # DICOMs outside the complete block

    @property
    def frames(self) -> int:
        return self.images.shape[0]

    @property
    def positions(self) -> int:
        return self.images.shape[1]

    @property
    def lv(self) -> np.ndarray:
        """The LV cavity: the i-contour."""
        return self.inner

    @property
    def myo(self) -> np.ndarray:
        """The myocardium: the o-contour minus the i-contour."""
        return self.outer & ~self.inner

    def voxels(self, array: np.ndarray) -> np.ndarray:
        """``(frames, positions, rows, columns)`` as NIfTI's ``(x, y, z, t)``."""
        return np.ascontiguousarray(array.transpose(3, 2, 1, 0))

    def label_map(self, values: dict[str, int], frames: Iterable[int]) -> np.ndarray:
        """uint8 ``(frames, positions, rows, columns)``: the kinds' values on ``frames``,
        0 elsewhere (``la`` is the i-contour)."""
        out = np.zeros(self.images.shape, np.uint8)
        masks = {"lv": self.lv, "myo": self.myo, "la": self.inner}
        for frame in frames:
            for kind, value in values.items():
                if kind in masks:
                    out[frame][masks[kind][frame]] = value
        return out

    def transform(self) -> PlaneTransform:
        """The DICOM image -> volume plane transform, by the orientation rule."""
        return plane_rule(self.affine)[0]

    def slice_number(self, position: int) -> int:
        """The volume path's slice number of ``position``, by the orientation rule."""
        return position if not plane_rule(self.affine)[1] else self.positions - 1 - position


def plane_rule(affine: np.ndarray) -> tuple[PlaneTransform, bool]:
    """The documented convention, worked out with nibabel alone: the transform of a
    DICOM image (voxel axes x = column, y = row) and whether slices run backwards.

    Columns take the in-plane world axis that comes first in L-R, A-P, S-I order;
    every index runs toward L, P or I (nibabel's ``io_orientation`` names each voxel
    axis's closest world axis and whether it runs toward R, A or S).
    """
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    world, toward_ras = ornt[:, 0].astype(int), ornt[:, 1] > 0
    transpose = world[1] < world[0]  # DICOM rows (y) hold the earlier world axis
    row_axis, column_axis = (0, 1) if transpose else (1, 0)
    return (
        PlaneTransform(transpose, bool(toward_ras[row_axis]), bool(toward_ras[column_axis])),
        bool(toward_ras[2]),
    )


def planes_by_rule(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A NIfTI array ``(x, y, z[, t])`` as ``(frames, slices, rows, columns)`` by
    :func:`plane_rule`: each ``(x, y)`` plane seen as a DICOM image ``[y, x]``."""
    transform, reversed_slices = plane_rule(affine)
    volume = data if data.ndim == 4 else data[..., np.newaxis]
    images = volume.transpose(3, 2, 1, 0)  # frames, z, y (rows), x (columns)
    if reversed_slices:
        images = images[:, ::-1]
    return transform.apply(images)


# -- reading the DICOMs ----------------------------------------------------------------


def _header(path: Path) -> tuple[np.ndarray, np.ndarray, float, int, tuple[float, float]]:
    """IOP (6), IPP (3), TriggerTime, InstanceNumber and PixelSpacing of one file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        np.array([float(v) for v in ds.ImageOrientationPatient]),
        np.array([float(v) for v in ds.ImagePositionPatient]),
        float(ds.get("TriggerTime", 0.0)),
        int(ds.InstanceNumber),
        (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
    )


def complete_block(counts: dict[float, int]) -> tuple[list[float], int]:
    """The positions and frame count of the largest complete block: the frame count F
    (and the positions with at least F frames) that maximises positions x F; on a tie
    the larger F. ``counts`` is the number of frames at each position.

    >>> complete_block({0.0: 20, 10.0: 20, 20.0: 3})
    ([0.0, 10.0], 20)
    """
    best = max(
        sorted(set(counts.values())), key=lambda f: (sum(c >= f for c in counts.values()) * f, f)
    )
    return sorted(p for p, c in counts.items() if c >= best), best


def _group(files: Sequence[Path]) -> tuple[list[list[Path]], np.ndarray, dict, list[str]]:
    """Files as ``[frame][position]``, the first file's header and the dropped ones."""
    headers = {path: _header(path) for path in files}
    iop = next(iter(headers.values()))[0]
    # The written cosines differ in their last digits from file to file.
    if not all(np.allclose(h[0], iop, atol=1e-4, rtol=0) for h in headers.values()):
        raise ValueError("more than one ImageOrientationPatient in a series: not one stack")
    normal = np.cross(iop[:3], iop[3:])
    by_position: dict[float, list[Path]] = defaultdict(list)
    for path, (_, ipp, *_rest) in headers.items():
        by_position[round(float(ipp @ normal), _POSITION_DECIMALS)].append(path)
    for paths in by_position.values():
        paths.sort(key=lambda p: (headers[p][2], headers[p][3]))  # trigger time, instance
    positions, frames = complete_block({p: len(v) for p, v in by_position.items()})
    kept = [[by_position[p][f] for p in positions] for f in range(frames)]
    used = {path for row in kept for path in row}
    dropped = sorted(str(p) for p in files if p not in used)
    return kept, iop, headers, dropped


def _affine(grid: list[list[Path]], iop: np.ndarray, headers: dict) -> np.ndarray:
    """The RAS affine of ``(column, row, position)`` voxels, checked to hold every
    position within 0.01 mm."""
    first = grid[0]
    ipps = np.array([headers[p][1] for p in first])
    row_mm, column_mm = headers[first[0]][4]
    step = (ipps[-1] - ipps[0]) / max(len(ipps) - 1, 1)
    if len(ipps) == 1:  # one position: any unit normal keeps the affine invertible
        step = np.cross(iop[:3], iop[3:])
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * column_mm  # x: along a row, to the next column
    lps[:3, 1] = iop[3:] * row_mm  # y: down a column, to the next row
    lps[:3, 2] = step
    lps[:3, 3] = ipps[0]
    expected = ipps[0] + np.outer(np.arange(len(ipps)), step)
    if not np.allclose(ipps, expected, atol=0.01, rtol=0):
        raise ValueError("positions are not evenly spaced: no single affine holds them")
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def _contour_paths(root: Path, original_id: str) -> dict[str, dict[int, Path]]:
    """``{"i": {instance: path}, "o": {...}}`` of one patient's contour files."""
    found: dict[str, dict[int, Path]] = {"i": {}, "o": {}}
    for kind in found:
        folder = root / "contourfiles" / original_id / f"{kind}-contours"
        for path in folder.glob(f"IM-0001-*-{kind}contour-manual.txt"):
            found[kind][int(path.name.split("-")[2])] = path
    return found


def read_cine(root: Path, patient_id: str, original_id: str) -> Cine:
    """One patient of a Sunnybrook-layout folder as a :class:`Cine` (see the module
    docstring for the grouping, the affine and the labels)."""
    files = sorted((root / "dicoms" / patient_id).glob("*.dcm"))
    grid, iop, headers, dropped = _group(files)
    contours = _contour_paths(root, original_id)
    frames, positions = len(grid), len(grid[0])
    images = inner = outer = None
    contoured: dict[tuple[int, int], frozenset[str]] = {}
    for f, k in itertools.product(range(frames), range(positions)):
        pixels, _ = read_slice(grid[f][k])
        if images is None:
            images = np.zeros((frames, positions, *pixels.shape), np.float32)
            inner, outer = np.zeros(images.shape, bool), np.zeros(images.shape, bool)
        images[f, k] = pixels
        instance = headers[grid[f][k]][3]
        kinds = frozenset(kind for kind in ("i", "o") if instance in contours[kind])
        for kind, masks in (("i", inner), ("o", outer)):
            if kind in kinds:
                points = read_contour(contours[kind][instance], shape=pixels.shape)
                masks[f, k] = polygon_mask(points, pixels.shape)
        if kinds:
            contoured[(f, k)] = kinds
    ed, es = _ed_es(contoured, inner)
    return Cine(
        patient_id=patient_id,
        original_id=original_id,
        paths=tuple(tuple(str(p) for p in row) for row in grid),
        images=images,
        inner=inner,
        outer=outer,
        contoured=contoured,
        affine=_affine(grid, iop, headers),
        ed=ed,
        es=es,
        dropped=tuple(dropped),
    )


def _ed_es(contoured: dict[tuple[int, int], frozenset[str]], inner: np.ndarray) -> tuple[int, int]:
    """The two frames with the most contoured slices (the earlier on a tie); ED is
    the one with the larger LV cavity (i-contour area), ES the other."""
    per_frame: dict[int, int] = defaultdict(int)
    for frame, _ in contoured:
        per_frame[frame] += 1
    two = sorted(per_frame, key=lambda f: (-per_frame[f], f))[:2]
    if len(two) < 2:
        raise ValueError(f"contours on {len(two)} frame(s): ED and ES need two")
    areas = [int(inner[f].sum()) for f in two]
    return (two[0], two[1]) if areas[0] >= areas[1] else (two[1], two[0])


def read_cines(root: Path = SUNNYBROOK, patients: int | None = None) -> list[Cine]:
    """The first ``patients`` patients of ``root``'s link.csv (all by default)."""
    with open(root / "link.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:patients]
    return [read_cine(root, row["patient_id"], row["original_id"]) for row in rows]


# -- writing the layouts -----------------------------------------------------------------


def exact_storage(images: np.ndarray) -> np.ndarray:
    """int16 where that holds every value exactly (nibabel then gives them back as
    they are), else float32: exact either way."""
    info = np.iinfo(np.int16)
    integral = np.all(images == np.round(images))
    if integral and images.min() >= info.min and images.max() <= info.max:
        return images.astype(np.int16)
    return images.astype(np.float32)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, variant: Variant) -> Path:
    """``data`` (``x, y, z[, t]``) at ``path`` in ``variant``'s voxel order."""
    import nibabel

    data, affine = variant.apply(data, affine)
    image = nibabel.Nifti1Image(np.ascontiguousarray(data), affine)
    # Both forms, 'scanner', as converters write them; no scaling (slope 1, inter 0).
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_xyzt_units("mm", "msec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, str(path))
    return path


def acdc_id(n: int) -> str:
    """The ACDC patient folder of the n-th (1-based) patient."""
    return f"patient{n:03d}"


def msd_id(n: int) -> str:
    """The MSD case name of the n-th (1-based) patient."""
    return f"la_{n:03d}"


def write_acdc(cines: Sequence[Cine], root: Path, variant: Variant = Variant()) -> Path:
    """``root/patientNNN/`` with Info.cfg, the 4D cine and the ED/ES frames and labels."""
    for n, cine in enumerate(cines, start=1):
        name = acdc_id(n)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Info.cfg").write_text(
            f"ED: {cine.ed + 1}\nES: {cine.es + 1}\nGroup: MINF\nHeight: 170.0\n"
            f"NbFrame: {cine.frames}\nWeight: 70.0\n"
        )
        images = exact_storage(cine.images)
        _save(cine.voxels(images), cine.affine, folder / f"{name}_4d.nii.gz", variant)
        labels = cine.label_map(LABELS["acdc"], (cine.ed, cine.es))
        for frame in (cine.ed, cine.es):
            stem = folder / f"{name}_frame{frame + 1:02d}"
            _save(
                cine.voxels(images[frame : frame + 1])[..., 0],
                cine.affine,
                Path(f"{stem}.nii.gz"),
                variant,
            )
            label = cine.voxels(labels[frame : frame + 1])[..., 0]
            _save(label, cine.affine, Path(f"{stem}_gt.nii.gz"), variant)
    return root


def write_mnms(cines: Sequence[Cine], root: Path, variant: Variant = Variant()) -> Path:
    """``root/Training/Labeled/<code>/<code>_sa(_gt).nii.gz`` and the info CSV (the
    code is the Sunnybrook patient_id; ED and ES 0-based)."""
    rows = []
    for cine in cines:
        code = cine.patient_id
        folder = root / "Training" / "Labeled" / code
        _save(
            cine.voxels(exact_storage(cine.images)),
            cine.affine,
            folder / f"{code}_sa.nii.gz",
            variant,
        )
        labels = cine.label_map(LABELS["mnms"], (cine.ed, cine.es))
        _save(cine.voxels(labels), cine.affine, folder / f"{code}_sa_gt.nii.gz", variant)
        rows.append([code, "Siemens", "A", 1, cine.ed, cine.es, 60, "HCM", "M", 170.0, 70.0])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / MNMS_CSV, "w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Age"]
        writer.writerow([*header, "Pathology", "Sex", "Height", "Weight"])
        writer.writerows(rows)
    return root


def write_msd(cines: Sequence[Cine], root: Path, variant: Variant = Variant()) -> Path:
    """``root/imagesTr/la_NNN.nii.gz`` (3D, the ED frame), ``labelsTr/la_NNN.nii.gz``
    (1 = the i-contour) and ``dataset.json``."""
    training = []
    for n, cine in enumerate(cines, start=1):
        name = f"{msd_id(n)}.nii.gz"
        ed = slice(cine.ed, cine.ed + 1)
        images = cine.voxels(exact_storage(cine.images[ed]))[..., 0]
        _save(images, cine.affine, root / "imagesTr" / name, variant)
        labels = cine.voxels(cine.label_map(LABELS["msd"], (cine.ed,))[ed])[..., 0]
        _save(labels, cine.affine, root / "labelsTr" / name, variant)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    synth.write_msd_json(root, training, "Sunnybrook i-contours standing in for the left atrium")
    return root


WRITERS = {"acdc": write_acdc, "mnms": write_mnms, "msd": write_msd}


def write_layout(
    cines: Sequence[Cine], root: Path, layout: str, variant: Variant = Variant()
) -> Path:
    """The cines written in ``layout`` ("acdc", "mnms" or "msd"), in ``variant``."""
    return WRITERS[layout](cines, Path(root), variant)


# -- what the volume path must give ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Expected:
    """One record the volume path must give, from the DICOM path: the image and masks
    in the volume path's plane order (``transform`` applied), and what the DICOM path
    had there (``contours``: the contour kinds of its DICOM, empty without one)."""

    patient_id: str
    frame: int
    slice: int
    phase: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    contours: frozenset[str]
    dicom_path: str
    transform: PlaneTransform


def patient_ids(cines: Sequence[Cine], layout: str) -> list[str]:
    """Each cine's patient_id in ``layout``."""
    if layout == "acdc":
        return [acdc_id(n) for n in range(1, len(cines) + 1)]
    if layout == "msd":
        return [msd_id(n) for n in range(1, len(cines) + 1)]
    return [cine.patient_id for cine in cines]


def _frames(cine: Cine, layout: str, labels: str) -> list[tuple[int, int, str]]:
    """``(frame in the cine, frame in the record, phase)`` of the records."""
    if layout == "msd":
        return [(cine.ed, 0, "")]
    phases = {cine.ed: "ED", cine.es: "ES"}
    frames = range(cine.frames) if labels == "all" else sorted(phases)
    return [(f, f, phases.get(f, "")) for f in frames]


def expected_records(
    cines: Sequence[Cine], layout: str, labels: str = "any"
) -> dict[tuple[str, int, int], Expected]:
    """Every record of ``layout``'s dataset, keyed ``(patient_id, frame, slice)``.

    ``labels="any"``: every slice of ED and ES (MSD: of its one 3D frame);
    ``labels="all"``: every frame, masks all False on the unlabelled ones.
    """
    kinds = list(LABELS[layout])
    out = {}
    for cine, patient_id in zip(cines, patient_ids(cines, layout), strict=True):
        transform = cine.transform()
        labelled = {cine.ed, cine.es} if layout != "msd" else {cine.ed}
        for (f, frame, phase), k in itertools.product(
            _frames(cine, layout, labels), range(cine.positions)
        ):
            empty = np.zeros_like(cine.inner[f, k])
            # No RV contour in Sunnybrook: rv is all False, as on an unlabelled frame.
            masks = {
                "lv": cine.lv[f, k],
                "myo": cine.myo[f, k],
                "la": cine.inner[f, k],
                "rv": empty,
            }
            slice_number = cine.slice_number(k)
            out[(patient_id, frame, slice_number)] = Expected(
                patient_id=patient_id,
                frame=frame,
                slice=slice_number,
                phase=phase,
                image=transform.apply(cine.images[f, k]),
                masks={
                    kind: transform.apply(masks[kind] if f in labelled else empty) for kind in kinds
                },
                contours=cine.contoured.get((f, k), frozenset()),
                dicom_path=cine.paths[f][k],
                transform=transform,
            )
    return out


def empirical_transforms(dicom_image: np.ndarray, plane: np.ndarray) -> list[PlaneTransform]:
    """Which of the 8 flips and transposes take ``dicom_image`` to ``plane``."""
    return [
        t
        for t in ALL_TRANSFORMS
        if t.apply(dicom_image).shape == plane.shape and np.array_equal(t.apply(dicom_image), plane)
    ]
