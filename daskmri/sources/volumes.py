"""NIfTI volumes with integer label maps as a source: ACDC, M&Ms, MSD Task02_Heart, or
a :class:`VolumeLayout` of the user's own.

Two halves, as every source has:

- **List** (:func:`iter_records`, on the client): find each patient's image by the
  layout's globs, read which frames are end-diastole and end-systole (``Info.cfg`` or
  one CSV), read each image's header (never its voxels) for its number of slices and
  frames, and give one row per plane: ``patient_id``, ``frame``, ``slice``, ``phase``.
- **Read** (:func:`read_unit`, on the workers): one volume at a time. Its image is read
  once for all of its records in a chunk, each label map once, both checked against the
  :class:`~daskmri.limits.Limits` and against each other (:func:`.nifti.same_grid`), and
  cut into planes by the orientation convention of :mod:`daskmri.sources.nifti`.

A record's ``instance`` is ``frame * slices + slice``: its plane's number within its
patient, unique, as a record's identity needs.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compact import Compact, widen
from ..errors import DATA_ERRORS, LayoutError, RecordError, VolumeError
from ..filesystem import LOCAL, FileSystem
from ..fit import check_resampled, fit_compact, fit_image, fit_mask, place_in_frame
from ..limits import DEFAULT_LIMITS, Limits
from ..record import Fitted, Problem, Record, VolumePlane
from .names import check_contains, check_kind_name
from .nifti import (
    gunzip,
    header_of,
    integer_labels,
    open_image,
    plane_orientation,
    read_frames,
    read_raw_frames,
    same_grid,
    scaled,
    to_planes,
)
from .walk import walk

__all__ = [
    "ACDC",
    "MNMS",
    "MSD_HEART",
    "PRESETS",
    "Phases",
    "VolumeLayout",
    "iter_records",
    "read",
    "read_unit",
]

logger = logging.getLogger(__name__)

#: The largest Info.cfg or frames CSV read (M&Ms' is 40 kB).
PHASES_FILE_BYTES = 64 * 2**20
#: Compressed bytes read for a header at scan time: a gzip stream's first 1 kB
#: (a NIfTI-2 header is 540 bytes) comes from far fewer.
HEAD_BYTES = 64 * 2**10


@dataclass(frozen=True)
class Phases:
    """Where a dataset says which frames are end-diastole (ED) and end-systole (ES).

    Parameters
    ----------
    file : str
        Relative to the root. ``{folder}`` (the patient's folder) makes it one file
        per patient of ``key: value`` lines (ACDC's ``Info.cfg``); without it, one
        CSV for all patients.
    id_column : str
        The CSV's column that names the patient (the ``{patient_id}`` of the globs).
    ed, es : str
        The keys (or CSV columns) of the two frames.
    base : int
        The number the file gives the first frame: ACDC counts from 1, M&Ms from 0.

    Examples
    --------
    >>> Phases("{folder}/Info.cfg").per_patient
    True
    """

    file: str
    id_column: str = "patient_id"
    ed: str = "ED"
    es: str = "ES"
    base: int = 1

    @property
    def per_patient(self) -> bool:
        """Whether each patient has a file of its own."""
        return "{folder}" in self.file


@dataclass(frozen=True)
class VolumeLayout:
    """Where the NIfTI images and label maps of a dataset are, and what their labels mean.

    Templates are relative to the root. ``image`` globs find the patients: their
    ``{patient_id}`` matches any name, and the image's folder becomes the patient's
    ``{folder}`` (and its ``original_id``). The other templates are formatted with
    ``{patient_id}``, ``{folder}`` and ``{number}`` (a frame as ``phases`` numbers it).

    Parameters
    ----------
    name : str
        A label stored in dataset attributes (``--layout`` on the command line).
    image : str or tuple of str
        Globs of each patient's image: a 4D cine, or a 3D volume.
    label_values : dict or tuple of (kind, values)
        Each mask variable and the label values inside it, e.g. ``{"lv": 3}``. A label
        value that no kind maps drops its volume with a reason, never silently.
    label : str, optional
        The label map of the whole image (4D beside a 4D image, like M&Ms'; 3D beside
        a 3D one, like MSD's).
    frame_image, frame_label : str, optional
        A 3D image and label map per labelled frame (ACDC's ``frameFF`` files): the
        labelled records are read from these, the others (``labels="all"``) from
        ``image``.
    phases : Phases, optional
        Where the ED and ES frames are given. Without it, a 3D volume is frame 0 and
        a labelled 4D label map's frames are all labelled.
    unlabelled : str or tuple of str
        Those of the ``image`` globs whose patients have no label map (M&Ms'
        ``Training/Unlabeled``); a patient found by another glob without its label map
        is reported.
    contains : tuple of (str, str)
        Pairs ``(inner, outer)``: kind ``inner`` must lie inside kind ``outer`` with
        its holes filled, so a ring (the myocardium) contains what it encloses (the LV
        cavity); :mod:`daskmri.qc` flags what leaks out. :data:`ACDC` and :data:`MNMS`
        declare ``("lv", "myo")``.

    Raises
    ------
    LayoutError
        If a template is unusable, a kind's name or values are, or ``contains``
        names a kind the layout does not have.

    Examples
    --------
    >>> mine = VolumeLayout("mine", image="images/{patient_id}.nii.gz",
    ...                     label_values={"tumour": (1, 2)}, label="labels/{patient_id}.nii.gz")
    >>> mine.kinds, mine.label_choices()
    (('tumour',), ('any', 'all'))
    """

    name: str
    image: tuple[str, ...] | str
    label_values: tuple[tuple[str, tuple[int, ...]], ...] | dict
    label: str | None = None
    frame_image: str | None = None
    frame_label: str | None = None
    phases: Phases | None = None
    unlabelled: tuple[str, ...] | str = ()
    contains: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        image = (self.image,) if isinstance(self.image, str) else tuple(self.image)
        object.__setattr__(self, "image", image)
        unlabelled = self.unlabelled
        object.__setattr__(
            self, "unlabelled", (unlabelled,) if isinstance(unlabelled, str) else tuple(unlabelled)
        )
        object.__setattr__(self, "label_values", _label_values(self.label_values))
        object.__setattr__(self, "contains", check_contains(self.contains, self.kinds))
        for template in (*self.image, self.label, self.frame_image, self.frame_label):
            if template is not None and (os.path.isabs(template) or ".." in template.split("/")):
                raise LayoutError(f"VolumeLayout template {template!r} must stay inside the root")
        if not self.image or not all("{patient_id}" in glob for glob in self.image):
            raise LayoutError("VolumeLayout(image=...) globs must each contain '{patient_id}'")
        if self.label is None and self.frame_label is None:
            raise LayoutError("a VolumeLayout needs label= or frame_label= (where its labels are)")
        if (self.frame_image is None) != (self.frame_label is None) or (
            self.frame_image is not None and self.phases is None
        ):
            raise LayoutError(
                "frame_image= and frame_label= go together, with phases= to say which frames"
            )

    @property
    def kinds(self) -> tuple[str, ...]:
        """The mask variables, in order."""
        return tuple(name for name, _ in self.label_values)

    def label_choices(self) -> tuple[str, ...]:
        """What ``labels=`` accepts: ``"any"`` (the labelled frames) or ``"all"``."""
        return ("any", "all")

    def label_kind(self, labels: str) -> str:
        """``labels``, checked.

        Raises
        ------
        ValueError
            If ``labels`` is not ``"any"`` or ``"all"``.
        """
        if labels not in self.label_choices():
            raise ValueError(
                f"labels must be one of {self.label_choices()} for a volume layout (a kind's "
                f"mask is only known once its volume is read), got {labels!r}"
            )
        return labels

    def to_dict(self) -> dict:
        """Plain dict of the fields, for dataset attributes; :meth:`from_dict` inverts it.

        Examples
        --------
        >>> VolumeLayout.from_dict(ACDC.to_dict()) == ACDC
        True
        """
        values = dataclasses.asdict(self)
        values["image"] = list(self.image)
        values["label_values"] = [[k, list(v)] for k, v in self.label_values]
        values["unlabelled"] = list(self.unlabelled)
        values["contains"] = [list(pair) for pair in self.contains]
        return {"source": "volumes", **values}

    @classmethod
    def from_dict(cls, values: dict) -> VolumeLayout:
        """Inverse of :meth:`to_dict`."""
        values = {k: v for k, v in values.items() if k != "source"}
        phases = values.pop("phases", None)
        values["label_values"] = [(k, tuple(v)) for k, v in values["label_values"]]
        return cls(**values, phases=None if phases is None else Phases(**phases))


def _label_values(kinds) -> tuple[tuple[str, tuple[int, ...]], ...]:
    pairs = list(kinds.items() if isinstance(kinds, dict) else kinds)
    out, seen = [], set()
    for name, values in pairs:
        values = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
        check_kind_name(name)
        if not values or not all(isinstance(v, (int, np.integer)) and v != 0 for v in values):
            raise LayoutError(f"kind {name!r} needs non-zero integer label values, got {values}")
        if seen & set(values) or name in dict(out):
            raise LayoutError(f"kind {name!r} repeats a name or a label value")
        seen |= set(values)
        out.append((name, tuple(int(v) for v in values)))
    if not out:
        raise LayoutError("a VolumeLayout needs label_values=, e.g. {'lv': 3, 'myo': 2, 'rv': 1}")
    return tuple(out)


#: ACDC: a root of ``patientNNN`` folders (``database/training``), ED and ES 1-based in
#: each ``Info.cfg``; labels 1 RV, 2 myocardium, 3 LV cavity.
ACDC = VolumeLayout(
    "acdc",
    "{patient_id}/{patient_id}_4d.nii.gz",
    {"lv": 3, "myo": 2, "rv": 1},
    frame_image="{folder}/{patient_id}_frame{number:02d}.nii.gz",
    frame_label="{folder}/{patient_id}_frame{number:02d}_gt.nii.gz",
    phases=Phases("{folder}/Info.cfg", base=1),
    contains=(("lv", "myo"),),
)

#: M&Ms: the ``OpenDataset`` root; 4D cines and 4D label maps labelled at ED and ES
#: (0-based, in the root's CSV); labels 1 LV cavity, 2 myocardium, 3 RV.
MNMS = VolumeLayout(
    "mnms",
    (
        "Training/Labeled/{patient_id}/{patient_id}_sa.nii.gz",
        "Training/Unlabeled/{patient_id}/{patient_id}_sa.nii.gz",
        "Validation/{patient_id}/{patient_id}_sa.nii.gz",
        "Testing/{patient_id}/{patient_id}_sa.nii.gz",
    ),
    {"lv": 1, "myo": 2, "rv": 3},
    label="{folder}/{patient_id}_sa_gt.nii.gz",
    unlabelled="Training/Unlabeled/{patient_id}/{patient_id}_sa.nii.gz",
    phases=Phases(
        "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv",
        id_column="External code",
        base=0,
    ),
    contains=(("lv", "myo"),),
)

#: MSD Task02_Heart: the ``Task02_Heart`` root; 3D volumes, label 1 the left atrium.
MSD_HEART = VolumeLayout(
    "msd-heart",
    "imagesTr/{patient_id}.nii.gz",
    {"la": 1},
    label="labelsTr/{patient_id}.nii.gz",
)

#: The presets by name, as ``--layout`` takes them.
PRESETS = {layout.name: layout for layout in (ACDC, MNMS, MSD_HEART)}


# -- listing -------------------------------------------------------------------------


def _pattern(glob: str) -> re.Pattern[str]:
    """A regex of ``glob`` whose ``{patient_id}`` is captured (and repeated alike)."""
    pieces = glob.split("{patient_id}")
    body = [fnmatch.translate(p).removeprefix("(?s:").removesuffix(")\\Z") for p in pieces]
    body = [b.replace(".*", "[^/]*").replace("(?s:", "(?:") for b in body]
    regex = body[0] + "(?P<patient_id>[^/]+)" + "(?P=patient_id)".join(body[1:])
    return re.compile(regex)


def _glob(fs: FileSystem, root: str, pattern: str, problems: list[Problem]) -> list[str]:
    """Paths relative to ``root`` that match ``pattern``, by the one walker
    (:func:`.walk.walk`: never leaving the root, on a disk or a store alike)."""
    prefix = len(root.rstrip("/")) + 1
    return [path[prefix:] for path in walk(fs, root, pattern, problems, {})]


def _patients(fs: FileSystem, root: str, layout: VolumeLayout, problems: list[Problem]):
    """``{patient_id: image path relative to root}``, sorted; a patient found by two
    globs is reported once and kept at the first."""
    found: dict[str, str] = {}
    # A template that names a .nii.gz finds the same file uncompressed too (.nii).
    globs = [g for glob in layout.image for g in (glob, *_uncompressed(glob))]
    for glob in globs:
        regex = _pattern(glob)
        listing = glob.replace("{patient_id}", "*")
        for path in _glob(fs, root, listing, problems):
            match = regex.fullmatch(path)
            if match is None:
                continue
            patient = match["patient_id"]
            if patient.startswith("."):  # "._la_003.nii.gz": a macOS resource fork
                continue
            if patient in found:
                problems.append(
                    Problem(
                        _join(root, path),
                        f"a second image for patient {patient}; ignored",
                        patient_id=patient,
                    )
                )
                continue
            found[patient] = path
    return dict(sorted(found.items()))


def _uncompressed(template: str) -> tuple[str, ...]:
    return (template.removesuffix(".gz"),) if template.endswith(".nii.gz") else ()


def _like(path: str, image: str) -> str:
    """``path`` with the image's compression: ``.nii`` beside a ``.nii`` image."""
    return path.removesuffix(".gz") if image.endswith(".nii") and path.endswith(".nii.gz") else path


def _join(root: str, relative: str) -> str:
    return f"{root}/{relative}" if relative else root


def _read_text(fs: FileSystem, path: str) -> str | None:
    try:
        return fs.read(path, PHASES_FILE_BYTES).decode("utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except UnicodeDecodeError as exc:
        raise VolumeError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class _Frames:
    """The ED and ES frames of each patient, from the layout's :class:`Phases`:
    ``(ED, ES)`` 0-based, or a reason why they are not known."""

    def __init__(self, fs: FileSystem, root: str, phases: Phases | None) -> None:
        self.fs, self.root, self.phases = fs, root, phases
        self.table = None if phases is None or phases.per_patient else self._table()

    def _table(self) -> dict[str, tuple[str, str] | None]:
        path = _join(self.root, self.phases.file)
        text = _read_text(self.fs, path)
        if text is None:
            raise LayoutError(
                f"no frames file at {path}: is the root the dataset's top folder? "
                "(M&Ms: the OpenDataset folder)"
            )
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        wanted = [self.phases.id_column, self.phases.ed, self.phases.es]
        missing = [name for name in wanted if name not in header]
        if missing:
            raise LayoutError(f"{path} has no column {missing}; it has {header}")
        table: dict[str, tuple] = {}
        for row in reader:
            key, values = (row[wanted[0]] or "").strip(), (row[wanted[1]], row[wanted[2]])
            # Two rows that disagree leave the patient's frames unknown, never a guess.
            table[key] = values if table.get(key, values) == values else None
        return table

    def of(self, patient_id: str, folder: str) -> tuple[int, int] | str:
        """``(ED, ES)``, 0-based, or a one-line reason."""
        phases = self.phases
        if self.table is not None:
            where = _join(self.root, phases.file)
            if patient_id not in self.table:
                return f"{where} has no row for patient {patient_id}"
            values = self.table[patient_id]
            if values is None:
                return f"{where} gives patient {patient_id} two different ED and ES rows"
        else:
            where = _join(self.root, phases.file.format(folder=folder, patient_id=patient_id))
            text = _read_text(self.fs, where)
            if text is None:
                return f"{where} is missing, so the ED and ES frames are unknown"
            lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            lines = {k.strip(): v for k, v in lines.items()}
            values = (lines.get(phases.ed), lines.get(phases.es))
        try:
            ed, es = (int(str(v).strip()) - phases.base for v in values)
        except (TypeError, ValueError):
            return f"{where}: {phases.ed} and {phases.es} are not frame numbers ({values})"
        if ed < 0 or es < 0:
            return f"{where}: frame numbers {values} count from {phases.base}"
        return ed, es


def _header_shape(fs: FileSystem, path: str) -> tuple[int, ...]:
    """The shape a NIfTI file's header declares, from the file's first bytes only."""
    return tuple(int(n) for n in _header(fs, path).get_data_shape())


def plane_geometry(record: Record) -> tuple[int, int, tuple[float, float]]:
    """``(rows, columns, (row_mm, column_mm))`` of a volume record's planes, from its
    image's header alone (the first bytes of the file), in the orientation convention.

    Raises
    ------
    daskmri.errors.VolumeError
        If the header cannot be read or its affine gives no orientation.
    """
    header = _header(record.fs, record.image_path)
    try:
        orientation = plane_orientation(header.get_best_affine())
    except ValueError as exc:
        raise VolumeError(record.image_path, str(exc)) from exc
    shape = header.get_data_shape()
    return shape[orientation.row_axis], shape[orientation.column_axis], orientation.pixel_spacing


def plane_dtype(record: Record) -> np.dtype:
    """The dtype of a volume record's compact pixels as its image's header declares it
    (the first bytes of the file): its integer type, or float32 for float voxels.

    Raises
    ------
    daskmri.errors.VolumeError
        If the header cannot be read.
    """
    dtype = np.dtype(_header(record.fs, record.image_path).get_data_dtype())
    return dtype.newbyteorder("=") if dtype.kind in "iu" else np.dtype(np.float32)


def _header(fs: FileSystem, path: str) -> Any:
    head = fs.head(path, HEAD_BYTES)
    if head[:2] == b"\x1f\x8b":
        head = gunzip(head, path, 1024)
    return header_of(head, path)


def _labelled(frames: tuple[int, int]) -> list[tuple[int, str]]:
    """``(frame, phase)`` of the labelled frames, in frame order (ED first if equal)."""
    ed, es = frames
    return sorted({es: "ES", ed: "ED"}.items())


@dataclass
class _Lister:
    """One scan's listing of a volume source: rows of records, and problems."""

    fs: FileSystem
    root: str
    layout: VolumeLayout
    labels: str
    problems: list[Problem]

    def __post_init__(self) -> None:
        self.frames = _Frames(self.fs, self.root, self.layout.phases)
        self._slices: dict[str, int] = {}  # each patient's slice count, by its first volume
        self._base = 0 if self.layout.phases is None else self.layout.phases.base

    def rows(self, patient_id: str, image: str) -> Iterator[dict]:
        folder = os.path.dirname(image)
        ids = {"patient_id": patient_id, "original_id": folder}
        fill = {"patient_id": patient_id, "folder": folder, "image": image}
        frames = None
        if self.layout.phases is not None:
            frames = self.frames.of(patient_id, folder)
            if isinstance(frames, str) and self._unlabelled(fill):
                frames = None  # labels="all" of a patient with no label map: nothing to place
            elif isinstance(frames, str):
                self.problems.append(Problem(_join(self.root, image), frames, **ids))
                return
        units = self._units(image, fill, frames)
        for image_path, planes in units:
            try:
                shape = _header_shape(self.fs, image_path)
            except DATA_ERRORS as exc:
                self.problems.append(Problem(image_path, _reason(exc), **ids))
                continue
            yield from self._planes(ids, image_path, shape, planes)

    def _units(self, image: str, fill: dict, frames) -> list[tuple[str, list]]:
        """``(image path, [(frame, phase, image_frame, label path, label_frame)])`` of
        each volume file the records are read from; frames None: every frame."""
        layout, base = self.layout, 0 if self.layout.phases is None else self.layout.phases.base
        labelled = [] if frames is None else _labelled(frames)
        if self.labels == "any" and layout.frame_image is not None:
            return [
                (
                    self._path(layout.frame_image, fill, frame + base),
                    [(frame, phase, 0, self._frame_label(fill, frame + base), 0)],
                )
                for frame, phase in labelled
            ]
        label = None
        if layout.label is not None:
            expected = self._path(layout.label, fill)
            label = self._found(expected)
            if label is None:
                self._missing_label(expected, fill)
        phase_of = dict(labelled)
        if layout.frame_image is not None:  # labels="all": the 4D image, frameFF labels
            by_frame = {f: (p, self._frame_label(fill, f + base), 0) for f, p in labelled}
        else:
            by_frame = {f: (p, label, f) for f, p in labelled} if frames is not None else None
        plan = (phase_of, by_frame, label)
        return [(_join(self.root, image), plan)]

    def _found(self, path: str) -> str | None:
        """``path``, or the same file in the other compression when only that exists
        (a ``.nii`` label beside a ``.nii.gz`` image); None when neither does."""
        if self.fs.stat(path) is not None:
            return path
        if not path.endswith((".nii", ".nii.gz")):
            return None
        other = path.removesuffix(".gz") if path.endswith(".gz") else path + ".gz"
        return other if self.fs.stat(other) is not None else None

    def _missing_label(self, label: str, fill: dict) -> None:
        """A patient without its label map is reported, unless the layout says that
        its images have none (:attr:`VolumeLayout.unlabelled`, M&Ms' Unlabeled)."""
        if not any(_pattern(glob).fullmatch(fill["image"]) for glob in self.layout.unlabelled):
            ids = {"patient_id": fill["patient_id"], "original_id": fill["folder"]}
            self.problems.append(Problem(label, "no label map for this image", **ids))

    def _unlabelled(self, fill: dict) -> bool:
        """Whether every frame is wanted and the patient has no label map at all."""
        layout = self.layout
        if self.labels != "all" or layout.label is None or layout.frame_label is not None:
            return False
        return self._found(self._path(layout.label, fill)) is None

    def _frame_label(self, fill: dict, number: int) -> str:
        # A missing frame label keeps its expected name: reading it drops the frame.
        expected = self._path(self.layout.frame_label, fill, number)
        return self._found(expected) or expected

    def _path(self, template: str, fill: dict, number: int | None = None) -> str:
        path = template.format(patient_id=fill["patient_id"], folder=fill["folder"], number=number)
        return _join(self.root, _like(path, fill["image"]))

    def _planes(self, ids: dict, image_path: str, shape: tuple, planes) -> Iterator[dict]:
        if len(shape) not in (3, 4):
            reason = f"a {len(shape)}D image {shape}: only 3D and 4D volumes are read"
            self.problems.append(Problem(image_path, reason, **ids))
            return
        n_slices, n_frames = shape[2], 1 if len(shape) == 3 else shape[3]
        if self._slices.setdefault(ids["patient_id"], n_slices) != n_slices:
            # instance = frame * slices + slice must stay unique within the patient.
            reason = (
                f"{n_slices} slices, but the patient's other volume has "
                f"{self._slices[ids['patient_id']]}; left out"
            )
            self.problems.append(Problem(image_path, reason, **ids))
            return
        # (frame, phase, image_frame, label, label_frame), label None: an unlabelled frame
        listed = self._frame_list(planes, n_frames)
        if not isinstance(planes, list):  # frames of this image (not one file per frame)
            listed = self._beyond(listed, n_frames, image_path, ids)
        frames = [plane for plane in listed if plane[3] is not None or self.labels != "any"]
        # Listed first, so that each plane knows how many records its image file yields:
        # a store keeps them in as few chunks as it can (daskmri.plan.aligned_slot).
        size = len(frames) * n_slices
        for f, (frame, phase, image_frame, label, label_frame) in enumerate(frames):
            for s in range(n_slices):
                volume = VolumePlane(
                    frame,
                    s,
                    phase,
                    image_frame,
                    label_frame,
                    self.layout.label_values,
                    unit_index=f * n_slices + s,
                    unit_size=size,
                )
                yield {
                    **ids,
                    "instance": frame * n_slices + s,
                    **volume.coords(),
                    "image_path": image_path,
                    **{f"{kind}_path": label for kind in self.layout.kinds},
                    "problem": None,
                    "volume": volume,
                }

    def _beyond(self, listed: list, n_frames: int, image_path: str, ids: dict) -> list:
        """``listed`` without the frames that the phases name beyond the image (a 3D
        image counts one frame), each reported: their planes do not exist."""
        kept = []
        for plane in listed:
            if plane[0] >= n_frames:
                reason = (
                    f"the phases file names frame {plane[0] + self._base} ({plane[1]}), but the "
                    f"image has {n_frames} frame{'s' if n_frames > 1 else ''}"
                )
                self.problems.append(Problem(image_path, reason, **ids))
            else:
                kept.append(plane)
        return kept

    def _frame_list(self, planes, n_frames: int) -> list[tuple]:
        if isinstance(planes, list):  # one 3D file per labelled frame
            return planes
        phase_of, by_frame, label = planes
        if by_frame is None:  # no phases: a 3D volume, or every frame labelled
            return [(f, "", f, label, f) for f in range(n_frames)]
        wanted = range(n_frames) if self.labels == "all" else sorted(by_frame)
        out = []
        for f in wanted:
            phase, path, label_frame = by_frame.get(f, (phase_of.get(f, ""), None, 0))
            out.append((f, phase, f if n_frames > 1 else 0, path, label_frame))
        return out


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"


def iter_records(
    root: str,
    *,
    layout: VolumeLayout,
    labels: str = "any",
    problems: list[Problem],
    fs: FileSystem = LOCAL,
) -> Iterator[dict]:
    """The scan rows of a volume source, patient by patient, in patient id order.

    Reads the frames file(s) and each image's header, never its voxels. What is
    wrong (a missing ``Info.cfg`` or CSV row, an unreadable header) is appended to
    ``problems``, naming the file.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_volume_dataset(tempfile.mkdtemp(), layout="msd-heart",
    ...                                  patients=1, slices=3)
    >>> rows = list(iter_records(str(root), layout=MSD_HEART, problems=[]))
    >>> [(r["patient_id"], r["frame"], r["slice"]) for r in rows]
    [('la_001', 0, 0), ('la_001', 0, 1), ('la_001', 0, 2)]
    """
    layout.label_kind(labels)
    lister = _Lister(fs, root, layout, labels, problems)
    for patient_id, image in _patients(fs, root, layout, problems).items():
        yield from lister.rows(patient_id, image)


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plane:
    """One record's plane as :func:`read_unit` gives it: the float32 image, one mask
    per kind (None for a record of an unlabelled frame), the pixel spacing
    ``(row_mm, column_mm)`` from the affine, in the convention's order, and the
    image's compact form (None for float voxels, or where it would not widen to the
    image bit for bit)."""

    image: np.ndarray
    masks: tuple[np.ndarray | None, ...]
    spacing: tuple[float, float]
    compact: Compact | None = None


def read_unit(
    records: Sequence[Record], *, limits: Limits = DEFAULT_LIMITS
) -> list[Plane | VolumeError]:
    """The planes of ``records``, which share one image file: the image read once, each
    label map once, in the orientation convention of :mod:`daskmri.sources.nifti`.

    What is wrong with a label map (another grid, non-integer label values, a label
    value that no kind maps) is the :class:`~daskmri.errors.VolumeError` given in place
    of the plane of each record that uses that label map's frame, and of no other:
    so the records dropped never depend on which records share a chunk.

    Raises
    ------
    daskmri.errors.VolumeError
        For anything wrong with the image (a damaged file, too many voxels, no
        orientation): the reason, for every record of the unit.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_volume_dataset(tempfile.mkdtemp(), layout="msd-heart",
    ...                                          patients=1, slices=2, shape=(16, 16))
    >>> table = daskmri.scan(root, layout=MSD_HEART)
    >>> from daskmri.plan import plan_chunks
    >>> planes = read_unit(plan_chunks(table).chunks[0])
    >>> len(planes), planes[0].image.shape, [m.dtype.name for m in planes[0].masks]
    (2, (16, 16), ['bool'])
    """
    first = records[0]
    image = open_image(first.image_path, limits=limits, fs=first.fs)
    try:
        orientation = plane_orientation(image.affine)
    except ValueError as exc:
        raise VolumeError(first.image_path, str(exc)) from exc
    frames = sorted({r.volume.image_frame for r in records})
    raw, slope, inter = read_raw_frames(
        image, first.image_path, frames if len(image.shape) == 4 else None
    )
    view = to_planes(scaled(raw, slope, inter), orientation)
    # One pass from the file's voxel order into C-ordered float32 planes: much faster than
    # casting first and copying each plane out (see benchmarks/volumes.py).
    planes = np.empty(view.shape, np.float32)
    planes[...] = view
    stored = _compact_planes(raw, slope, inter, orientation, planes)
    at = {frame: k for k, frame in enumerate(frames)}
    labels = _labels(records, image, orientation, limits)
    spacing = orientation.pixel_spacing
    out = []
    for record in records:
        plane = record.volume
        pixels = planes[at.get(plane.image_frame, 0), plane.slice]
        label = labels.get((record.path(record.kinds[0]), plane.label_frame))
        if isinstance(label, VolumeError):
            out.append(label)
            continue
        masks = tuple(
            None if label is None else np.isin(label[plane.slice], values)
            for _, values in record.volume.kinds
        )
        compact = None
        if stored is not None:
            compact = Compact(stored[at.get(plane.image_frame, 0), plane.slice], slope, inter)
        out.append(Plane(pixels, masks, spacing, compact))
    return out


def _compact_planes(raw: np.ndarray, slope: float, inter: float, orientation, planes):
    """The stored integer voxels as C-ordered planes, where they widen to the float32
    ``planes`` bit for bit (checked once for the whole unit); None for float voxels
    or where they do not."""
    if raw.dtype.kind not in "iu":
        return None
    view = to_planes(raw, orientation)
    stored = np.empty(view.shape, raw.dtype.newbyteorder("="))
    stored[...] = view
    if np.array_equal(widen(stored, slope, inter).view(np.uint32), planes.view(np.uint32)):
        return stored
    return None


def _labels(records: Sequence[Record], image: Any, orientation, limits: Limits) -> dict:
    """``{(label path, label frame): (slices, rows, columns) int32}`` of the records'
    label maps, each file read once and checked against the image."""
    wanted: dict[str, set[int]] = {}
    for record in records:
        path = record.path(record.kinds[0])
        if path is not None:
            wanted.setdefault(path, set()).add(record.volume.label_frame)
    out: dict = {}
    for path, frames in wanted.items():
        frames = sorted(frames)
        try:
            label = open_image(path, limits=limits, fs=records[0].fs)
            _check_grid(records[0].image_path, image, path, label)
            values = read_frames(label, path, frames if len(label.shape) == 4 else None)
        except VolumeError as exc:  # the same for every frame, in whichever chunk
            out |= {(path, frame): exc for frame in frames}
            continue
        # Frame by frame: a bad value in one frame drops that frame's records alone,
        # whether or not the unit (a chunk's share of the volume) holds other frames.
        for k, frame in enumerate(frames):
            try:
                one = integer_labels(values[..., k : k + 1], path)
                _check_values(one, path, records[0].volume.kinds)
            except VolumeError as exc:
                out[(path, frame)] = exc
                continue
            out[(path, frame)] = to_planes(one, orientation)[0]
    return out


def _check_grid(image_path: str, image: Any, path: str, label: Any) -> None:
    """A label map on the image's grid: the same volume shape and affine (within the
    tolerance), and a 4D label the image's number of frames."""
    reason = same_grid((image.affine, image.shape[:3]), (label.affine, label.shape[:3]))
    if reason is None and len(label.shape) == 4 and label.shape != image.shape:
        reason = f"{label.shape[3]} frames, against the image's {image.shape[3:] or 'one'}"
    if reason is not None:
        raise VolumeError(path, f"not on the grid of {image_path}: {reason}")


def _check_values(values: np.ndarray, path: str, kinds: tuple) -> None:
    """Every non-zero label value must belong to a kind: never silently ignored."""
    known = {v for _, kind_values in kinds for v in kind_values} | {0}
    if values.dtype.kind in "ub" and values.dtype.itemsize <= 2:
        found = np.flatnonzero(np.bincount(values.ravel()))  # np.unique sorts: far slower
    else:
        found = np.unique(values)
    unknown = [int(v) for v in found if int(v) not in known]
    if unknown:
        mapping = ", ".join(f"{k}: {list(v)}" for k, v in kinds)
        raise VolumeError(
            path,
            f"label value(s) {unknown[:5]} belong to no kind of the layout ({mapping}); "
            "map them in VolumeLayout(label_values=...)",
        )


def read(
    records: Sequence[Record],
    *,
    limits: Limits = DEFAULT_LIMITS,
    shape: tuple[int, int] | None = None,
    fit: str = "drop",
    spacing: tuple[float, float] | None = None,
) -> list:
    """The records of one volume in the dataset's frame, as :func:`daskmri.read_record`
    gives a slice: one :class:`~daskmri.record.Fitted`, or the data error that drops its
    record, per record (:func:`read_unit`, then each plane placed). Label masks are
    resampled by the nearest pixel, so a mask never holds a value between two labels.
    """
    try:
        planes = read_unit(records, limits=limits)
    except DATA_ERRORS as exc:
        return [exc] * len(records)
    out = []
    for record, plane in zip(records, planes, strict=True):
        if isinstance(plane, BaseException):  # a label map that drops this record
            out.append(plane)
            continue
        frame = plane.image.shape if shape is None else shape
        try:
            geometry = place_in_frame(
                record.image_path, plane.image.shape, frame, plane.spacing, fit, spacing
            )
            check_resampled(record.image_path, geometry, plane.spacing, limits)
        except RecordError as exc:
            out.append(exc)
            continue
        image, compact = plane.image, plane.compact
        if geometry.scaled or image.shape != tuple(frame):
            image = fit_image(image, geometry, frame)
            compact = fit_compact(compact, image, geometry, frame)
        masks = [None if m is None else fit_mask(m, geometry, frame) for m in plane.masks]
        out.append(Fitted(image, *masks, geometry=geometry, compact=compact))
    return out
