"""The DICOM plus RTSTRUCT source: contour kinds read from the structure sets of a
patient (:class:`RTStruct`, part of a :class:`~daskmri.Layout`). The DICOM slices are
listed by :mod:`daskmri.sources.dicom_contours`; this module gives each slice its
RTSTRUCT contours at scan time (:func:`find_contours`, from the slices' planes) and
rasterises them at read time (:func:`mask`). The RTSTRUCT files themselves are parsed
by :mod:`daskmri.rtstruct`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LayoutError
from ..filesystem import FileSystem
from ..fit import Geometry
from ..limits import Limits
from ..record import Problem, Record, RTSlice
from ..rtstruct import Plane, RTStructError, assign, read_plane, read_structure_set, structure_mask
from .names import check_glob, check_kind_name, compile_pattern

__all__ = ["RTStruct", "find_contours", "first_path", "mask"]


@dataclass(frozen=True)
class RTStruct:
    """Contours from DICOM RTSTRUCT files: one structure set (or several) per patient.

    Parameters
    ----------
    glob : str
        Where a patient's RTSTRUCT files are, relative to the root, formatted with
        ``{patient_id}`` (or ``{original_id}``).
    rois : mapping of str to str
        Contour kind name -> regular expression, matched in full and ignoring case
        against each ROIName of the ``StructureSetROISequence``. Stored as a tuple
        of pairs, in the given order.

    Raises
    ------
    LayoutError
        If a kind name is not usable, a regex is invalid, or there is no kind.

    Examples
    --------
    >>> rt = RTStruct(glob="rtstruct/{patient_id}/*.dcm", rois={"icontour": "LV Endo.*"})
    >>> rt.rois
    (('icontour', 'LV Endo.*'),)
    """

    glob: str
    rois: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        pairs = tuple(
            (str(k), str(v))
            for k, v in (self.rois.items() if isinstance(self.rois, dict) else self.rois)
        )
        object.__setattr__(self, "rois", pairs)
        check_glob("RTStruct.glob", self.glob, ("patient_id", "original_id"))
        if not pairs:
            raise LayoutError("RTStruct(rois=...) is empty; map at least one kind to an ROI regex")
        for name, regex in pairs:
            check_kind_name(name)
            compile_pattern(f"RTStruct.rois[{name!r}]", regex, group=None)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.rois)


def find_contours(
    find: Callable[[str], list[str]],
    fs: FileSystem,
    glob: str,
    rois: tuple[tuple[str, str], ...],
    dicoms: dict[int, str],
    ids: dict,
    problems: list[Problem],
) -> dict[int, RTSlice]:
    """A patient's RTSTRUCT contours, by instance: its structure sets (the files
    ``find(glob)`` lists) assigned to its slices by their planes. A slice whose
    position cannot be read gets none (and is reported): no contour can be placed on it.
    """
    paths = find(glob)
    if not paths:
        return {}
    # On a store: the patient's files fetched at once, not one request per file.
    fs = fs.prefetch([*paths, *dicoms.values()])
    sets = []
    for path in paths:
        try:
            sets.append(read_structure_set(path, fs=fs))
        except RTStructError as exc:
            problems.append(Problem(path, exc.reason, **ids))
    planes = {}
    for instance, path in dicoms.items():
        try:
            planes[instance] = read_plane(path, fs=fs)
        except RTStructError as exc:
            reason = f"{exc.reason}; the slice gets no RTSTRUCT contour"
            problems.append(Problem(path, reason, **ids, instance=instance))
    found = assign(sets, planes, rois)
    problems += [dataclasses.replace(p, **ids) for p in found.problems]
    return {
        instance: RTSlice(
            planes[instance].as_tuple(),
            tuple((kind, tuple(picks)) for kind, picks in kinds.items()),
        )
        for instance, kinds in found.picks.items()
    }


def first_path(slice_rt: RTSlice | None, kind: str) -> str | None:
    """The first RTSTRUCT file that holds a contour of ``kind`` on the slice, or None."""
    picks = () if slice_rt is None else slice_rt.of(kind)
    return picks[0][0] if picks else None


def mask(record: Record, kind: str, geometry: Geometry, frame, limits: Limits):
    """The mask of ``kind`` of a record whose contours of that kind come from RTSTRUCT,
    rasterised in the frame; None when the slice has none."""
    picks = () if record.rtstruct is None else record.rtstruct.of(kind)
    if not picks:
        return None
    return structure_mask(
        picks,
        Plane(*record.rtstruct.plane),
        shape=(geometry.source_rows, geometry.source_columns),
        to_frame=geometry.to_frame,
        frame=frame,
        limits=limits,
        fs=record.fs,
    )
