"""DICOM RTSTRUCT contours: read a structure set (:func:`read_structure_set`), find
where each slice lies (:func:`read_plane`), give each contour its slice
(:func:`assign`), and rasterise a slice's contours of one kind
(:func:`structure_mask`).

An RTSTRUCT holds, per structure (ROI), closed polygons in patient coordinates
(mm), each naming the slice it was drawn on by ``ReferencedSOPInstanceUID``. A
polygon maps to a slice's pixels through the slice's ``ImagePositionPatient``,
``ImageOrientationPatient`` and ``PixelSpacing``, solved with its actual direction
cosines (stored with 6 digits, so not exactly orthonormal). Several contours of
one ROI on one slice combine by the even-odd rule (a contour inside another is a
hole); several ROIs of one kind are united.

Numpy and pydicom only (pydicom imported when a file is read): the assignment runs
in :func:`daskmri.scan`, the rasterising in the worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .contours import check_points, polygon_mask
from .dicom import PLANE_TAGS, read_text_tags
from .errors import DicomError, RTStructError, one_line
from .filesystem import LOCAL, FileSystem
from .limits import DEFAULT_LIMITS, Limits, read_bounded
from .record import Problem

__all__ = [
    "Contour",
    "Plane",
    "StructureSet",
    "assign",
    "read_plane",
    "read_structure_set",
    "structure_mask",
]

logger = logging.getLogger(__name__)

_CONTOUR_DATA = 0x30060050
# Two slices whose planes are this close (mm) are the same plane (cine phases).
_SAME_PLANE_MM = 1e-3
# A contour this much (mm) beyond half the slice spacing still counts as within it:
# exactly half a spacing away is a tie that float noise must not decide.
_HALF_GAP_SLACK_MM = 1e-6
# A polygon whose area (mm^2) is under this is a line or a point.
_MIN_AREA_MM2 = 1e-6


@dataclass(frozen=True)
class Plane:
    """Where a slice lies in patient space, from its own header.

    ``origin`` is ``ImagePositionPatient`` (the centre of pixel (0, 0), mm),
    ``orientation`` ``ImageOrientationPatient`` (row direction, then column
    direction), ``spacing`` ``PixelSpacing`` (between rows, between columns, mm),
    ``gap`` the slice spacing (``SpacingBetweenSlices``, else ``SliceThickness``;
    None when neither is there).

    Examples
    --------
    >>> plane = Plane("1.2", (10.0, 0.0, 0.0), (0, 1, 0, 0, 0, -1), (2.0, 0.5), 5.0)
    >>> plane.to_pixels(np.array([[10.0, 1.5, -4.0]])).tolist()
    [[3.0, 2.0]]
    >>> plane.distance(np.array([[12.0, 7.0, 1.0]])).tolist()  # the normal is -x here
    [-2.0]
    """

    uid: str
    origin: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    gap: float | None = None

    def _axes(self) -> np.ndarray:
        """3x2: the patient-space step of one column (x) and of one row (y)."""
        o = np.asarray(self.orientation, dtype=np.float64)
        return np.stack([o[:3] * self.spacing[1], o[3:] * self.spacing[0]], axis=1)

    def normal(self) -> np.ndarray:
        """The plane's unit normal: row direction x column direction, normalised
        (the stored cosines are rounded, so their cross product is not unit length).

        Examples
        --------
        >>> Plane("1.2", (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0), (1.0, 1.0)).normal().tolist()
        [0.0, 0.0, 1.0]
        """
        o = np.asarray(self.orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` patient points (mm) as ``(N, 2)`` pixel ``(x, y)``: the least
        squares solution with the slice's own axes, exact for points in the plane
        however far the stored cosines are from orthonormal."""
        axes = self._axes()
        offsets = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        solved, *_ = np.linalg.lstsq(axes, offsets.T, rcond=None)
        return solved.T

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of each ``(N, 3)`` point from the plane."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.origin)) @ self.normal()

    def as_tuple(self) -> tuple:
        """The plane as plain values (what a record carries to the workers)."""
        return (self.uid, self.origin, self.orientation, self.spacing, self.gap)


# Who is reading with pydicom's validation off (see _quiet).
_QUIET_LOCK = threading.Lock()
_quiet_readers = 0
_quiet_restore = contextlib.ExitStack()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Read without pydicom's value validation: the real files carry UIDs that it
    warns (and logs) about, hundreds of times in one scan. pydicom has no per-read
    setting, only a global one, so the first of any overlapping readers (threads,
    or nested calls) turns it off and the last one restores it, under a lock: two
    threads saving and restoring it each in turn could leave it off for good. No
    warnings filter is touched (``warnings.catch_warnings`` is not thread-safe)."""
    from pydicom import config

    global _quiet_readers
    with _QUIET_LOCK:
        if _quiet_readers == 0:
            _quiet_restore.enter_context(config.disable_value_validation())
        _quiet_readers += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_readers -= 1
            if _quiet_readers == 0:
                _quiet_restore.close()


def _floats(values: dict[str, str], name: str, count: int, path: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values.get(name, "").split("\\") if v.strip())
    except ValueError:
        numbers = ()
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise RTStructError(
            path, f"no usable {name} (need {count} numbers), so the slice cannot be placed"
        )
    return numbers


def read_plane(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL
) -> Plane:
    """The :class:`Plane` of a DICOM slice, from its header (no pixels are read).

    Raises
    ------
    RTStructError
        If the file is not DICOM, or lacks a usable SOPInstanceUID,
        ImagePositionPatient, ImageOrientationPatient or PixelSpacing.

    Examples
    --------
    >>> read_plane("/no/such.dcm")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.RTStructError: /no/such.dcm: cannot read the slice header ...
    """
    path = os.fspath(path)
    try:
        # The header walk reads the six tags in a tenth of pydicom's time; pydicom
        # reads what the walk leaves to it (compressed, big endian, odd elements).
        found = read_text_tags(path, PLANE_TAGS, limits=limits, fs=fs)
    except DicomError as exc:
        raise RTStructError(path, f"cannot read the slice header ({exc.reason})") from exc
    if found is None:
        # pydicom reads a local file itself, and a store's object from its bytes.
        if fs.local:
            source = path
        else:
            name, expected = "DICOM file", "a DICOM file"
            raw = read_bounded(
                path, limits, error=RTStructError, name=name, expected=expected, fs=fs
            )
            source = io.BytesIO(raw)
        values = _pydicom_plane_tags(path, source)
    else:
        values = found
    uid = values.get("SOPInstanceUID", "")
    if not uid:
        raise RTStructError(path, "no SOPInstanceUID, so no contour can reference the slice")
    return _plane_of(path, uid, values)


def _pydicom_plane_tags(path: str, source) -> dict[str, str]:
    """:data:`~daskmri.dicom.PLANE_TAGS` read by pydicom, as text like the walk's."""
    import pydicom
    from pydicom.multival import MultiValue

    names = list(PLANE_TAGS.values())
    try:
        with _quiet():
            ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=names)
            return {
                name: "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
                for name in names
                if (value := ds.get(name)) is not None
            }
    except Exception as exc:
        raise RTStructError(path, f"cannot read the slice header ({one_line(exc)})") from exc


def _plane_of(path: str, uid: str, values: dict[str, str]) -> Plane:
    origin = _floats(values, "ImagePositionPatient", 3, path)
    orientation = _floats(values, "ImageOrientationPatient", 6, path)
    spacing = _floats(values, "PixelSpacing", 2, path)
    if min(spacing) <= 0 or abs(np.linalg.norm(np.cross(orientation[:3], orientation[3:]))) < 0.5:
        raise RTStructError(path, "PixelSpacing or ImageOrientationPatient is degenerate")
    gap = None
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(values.get(name) or 0)
        except ValueError:  # optional: a damaged spacing is as good as none
            value = 0.0
        if np.isfinite(value) and value > 0:
            gap = value
            break
    return Plane(uid, origin, orientation, spacing, gap)


@dataclass(frozen=True)
class Contour:
    """One polygon of a structure set: its ROI (number and name), its position
    among the file's contours (``index``), its points (``(N, 3)`` mm) and the
    SOPInstanceUID of its slice (None when it names none)."""

    roi: int
    name: str
    index: int
    points: np.ndarray
    uid: str | None


@dataclass(frozen=True)
class StructureSet:
    """The usable contours of one RTSTRUCT file, and what was wrong with the others
    (a :class:`~daskmri.record.Problem` of the file each)."""

    path: str
    contours: tuple[Contour, ...]
    problems: tuple[Problem, ...] = ()
    names: tuple[tuple[int, str], ...] = ()


def read_structure_set(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL
) -> StructureSet:
    """Read an RTSTRUCT file's contours.

    A contour that cannot be used (damaged or non-finite ``ContourData``, fewer
    than 3 points, no area, not ``CLOSED_PLANAR``) is left out and described in
    ``problems``; only a file that cannot be read at all raises.

    Parameters
    ----------
    path : str or os.PathLike
        The RTSTRUCT file.
    limits : Limits
        ``max_file_bytes`` bounds the read, ``max_contour_points`` each contour.

    Returns
    -------
    StructureSet

    Raises
    ------
    RTStructError
        If the file is missing, too large, not DICOM, truncated or damaged, not an
        RTSTRUCT (its ``Modality``), or lacks the structure set sequences.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "rt.dcm"
    >>> _ = p.write_bytes(b"\\0" * 200)
    >>> read_structure_set(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.RTStructError: ...: not a DICOM file (no 'DICM' marker ...)
    """
    path = os.fspath(path)
    raw = read_bounded(
        path, limits, error=RTStructError, name="RTSTRUCT file", expected="an RTSTRUCT file", fs=fs
    )
    return _from_bytes(path, raw, limits)


def _from_bytes(path: str, raw: bytes, limits: Limits) -> StructureSet:
    try:
        with _quiet():
            structure = _structure_set(path, _parse(path, raw), limits)
    except RTStructError:
        raise
    except Exception as exc:  # a damaged sequence fails wherever it is first touched
        raise RTStructError(
            path, f"damaged or truncated structure set ({type(exc).__name__}: {exc})"
        ) from exc
    logger.debug(
        "read %s: %d contours, %d left out", path, len(structure.contours), len(structure.problems)
    )
    return structure


def _parse(path: str, raw: bytes):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _quiet():
            ds = pydicom.dcmread(io.BytesIO(raw))
            modality = str(ds.get("Modality", "")).strip()
    except InvalidDicomError:
        raise RTStructError(
            path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
        ) from None
    except Exception as exc:
        raise RTStructError(
            path, f"damaged or truncated DICOM ({type(exc).__name__}: {exc})"
        ) from exc
    if not modality:
        raise RTStructError(path, "no Modality: a truncated file, or not a structure set")
    if modality != "RTSTRUCT":
        raise RTStructError(
            path,
            f"Modality is {modality!r}, not 'RTSTRUCT': not a structure set; does "
            "the layout's RTStruct glob match only RTSTRUCT files?",
        )
    return ds


def _structure_set(path: str, ds, limits: Limits) -> StructureSet:
    if "ROIContourSequence" not in ds or "StructureSetROISequence" not in ds:
        raise RTStructError(path, "no ROIContourSequence or StructureSetROISequence")
    names = {
        # DICOM pads a text value to an even length with a space.
        int(item.ROINumber): str(item.get("ROIName", "")).strip()
        for item in ds.StructureSetROISequence
    }
    contours: list[Contour] = []
    problems: list[Problem] = []
    index = 0
    for roi in ds.ROIContourSequence:
        number = int(roi.ReferencedROINumber)
        name = names.get(number)
        for item in roi.get("ContourSequence") or ():
            where = f"contour {index} of ROI {name!r}" if name else f"contour {index}"
            try:
                points = _points(item, limits)
                uid = _reference(item)
            except ValueError as exc:
                problems.append(Problem(path, f"{where}: {exc}; dropped"))
            else:
                if name is None:
                    reason = f"{where}: ROI number {number} has no StructureSetROI; dropped"
                    problems.append(Problem(path, reason))
                else:
                    contours.append(Contour(number, name, index, points, uid))
            index += 1
    return StructureSet(path, tuple(contours), tuple(problems), tuple(sorted(names.items())))


def _points(item, limits: Limits) -> np.ndarray:
    """A contour's ``(N, 3)`` points; ValueError says why it cannot be used."""
    kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR")).strip()
    if kind != "CLOSED_PLANAR":
        raise ValueError(f"ContourGeometricType is {kind!r}, not a closed polygon")
    try:
        values = _contour_data(item, limits)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"damaged ContourData ({exc})") from None
    except _TooManyPoints as exc:
        raise ValueError(str(exc)) from None
    if len(values) % 3:
        raise ValueError(f"damaged ContourData ({len(values)} numbers, not x y z triples)")
    points = values.reshape(-1, 3)
    if len(points) > limits.max_contour_points:
        raise ValueError(_too_many(len(points), limits))
    if not np.isfinite(points).all():
        raise ValueError("non-finite coordinates in ContourData")
    if len(points) < 3:
        raise ValueError(f"degenerate: only {len(points)} point(s), a polygon needs 3")
    area = 0.5 * np.linalg.norm(np.cross(points, np.roll(points, -1, axis=0)).sum(axis=0))
    if area < _MIN_AREA_MM2:
        raise ValueError("degenerate: the points enclose no area")
    return points


class _TooManyPoints(Exception):
    """A ContourData over ``Limits.max_contour_points`` (not a damaged one)."""


def _too_many(points: int, limits: Limits) -> str:
    return f"{points} points, over Limits.max_contour_points={limits.max_contour_points}"


def _contour_data(item, limits: Limits) -> np.ndarray:
    """ContourData as float64. pydicom would make a validated DSfloat of each number
    (measured: 90% of reading a real structure set); numpy parses the raw text at once.

    Raises
    ------
    _TooManyPoints
        If the text holds more numbers than ``limits`` allows, counted before
        anything is split: a Python string per number would cost about 12 times the
        file's size, whatever the limit.
    """
    raw = item.get_item(_CONTOUR_DATA)
    if raw is None:
        return np.empty(0)
    if raw.value is None:
        return np.empty(0)
    if not isinstance(raw.value, bytes):  # already converted by pydicom
        return np.atleast_1d(np.asarray(raw.value, dtype=np.float64)).ravel()
    numbers = raw.value.count(b"\\") + 1
    if numbers > 3 * limits.max_contour_points:
        raise _TooManyPoints(_too_many(numbers // 3, limits))
    text = raw.value.decode("ascii").strip(" \0")
    return np.array(text.split("\\"), dtype=np.float64) if text else np.empty(0)


def _reference(item) -> str | None:
    images = item.get("ContourImageSequence") or ()
    uids = {str(image.get("ReferencedSOPInstanceUID") or "").strip() for image in images}
    uids.discard("")
    if len(uids) > 1:
        raise ValueError(f"references {len(uids)} slices; a planar contour lies on one")
    return uids.pop() if uids else None


# -- assignment (in the scan) -----------------------------------------------------


@dataclass(frozen=True)
class Assigned:
    """Which contours go to which slice: ``picks[instance][kind]`` lists
    ``(path, index)`` of the contours; ``problems`` lists a
    :class:`~daskmri.record.Problem` (with the instance, when one is known) for
    what was left out."""

    picks: dict[int, dict[str, list[tuple[str, int]]]]
    problems: list[Problem]


def _half_gaps(planes: dict[int, Plane]) -> dict[int, float]:
    """Half the slice spacing of each slice: from its header, else the smallest gap
    between distinct planes of the same orientation, else half a pixel."""
    half = {}
    for instance, plane in planes.items():
        gap = plane.gap
        if gap is None:
            offsets = {
                round(float(np.dot(p.origin, plane.normal())), 6)
                for p in planes.values()
                if np.allclose(p.orientation, plane.orientation, atol=1e-4)
            }
            steps = np.diff(sorted(offsets))
            gap = float(steps.min()) if len(steps) else max(plane.spacing)
        half[instance] = gap / 2
    return half


def assign(
    sets: Sequence[StructureSet], planes: dict[int, Plane], rois: Sequence[tuple[str, str]]
) -> Assigned:
    """Give each contour of the matching ROIs its slice.

    A contour goes to the slice its SOPInstanceUID names; a contour that names none
    goes to the one slice whose plane it lies in, within half the slice spacing.
    A contour further than that from its slice's plane, naming a slice that is not
    there, lying in no slice's plane or in several (cine phases share a plane), and
    an ROI that matches no kind, are reported and left out.

    Examples
    --------
    >>> plane = Plane("1.1", (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0), (1.0, 1.0), 8.0)
    >>> square = np.array([[1, 1, 0.2], [4, 1, 0.2], [4, 4, 0.2]], dtype=float)
    >>> s = StructureSet("rt.dcm", (Contour(1, "LV endo", 0, square, None),))
    >>> found = assign([s], {7: plane}, [("icontour", "lv endo")])
    >>> found.picks, found.problems
    ({7: {'icontour': [('rt.dcm', 0)]}}, [])
    """
    matchers = [(kind, re.compile(regex, re.IGNORECASE)) for kind, regex in rois]
    by_uid: dict[str, list[int]] = {}
    for instance, plane in sorted(planes.items()):
        by_uid.setdefault(plane.uid, []).append(instance)
    half = _half_gaps(planes)
    found = Assigned({}, [])
    for structure in sets:
        found.problems.extend(structure.problems)
        for number, name in structure.names:
            if not any(m.fullmatch(name) for _, m in matchers):
                reason = f"ROI {name!r} (number {number}) matches no contour kind; ignored"
                found.problems.append(Problem(structure.path, reason))
        for contour in structure.contours:
            kinds = [kind for kind, m in matchers if m.fullmatch(contour.name)]
            if not kinds:
                continue
            instance, reason = _slice_of(contour, planes, by_uid, half)
            if instance is None or reason:
                where = f"contour {contour.index} of ROI {contour.name!r}: {reason}; dropped"
                found.problems.append(Problem(structure.path, where, instance=instance))
                continue
            for kind in kinds:
                found.picks.setdefault(instance, {}).setdefault(kind, [])
                found.picks[instance][kind].append((structure.path, contour.index))
    return found


def _slice_of(
    contour: Contour,
    planes: dict[int, Plane],
    by_uid: dict[str, list[int]],
    half: dict[int, float],
) -> tuple[int | None, str]:
    """The instance a contour goes to, and why not (``""`` when it does)."""
    if contour.uid is not None:
        instances = by_uid.get(contour.uid, [])
        if len(instances) > 1:
            return None, (
                f"references SOPInstanceUID {contour.uid}, which slices {instances} all carry; "
                "give each slice its own SOPInstanceUID"
            )
        if not instances:
            return None, f"references SOPInstanceUID {contour.uid}, which no readable slice has"
        instance = instances[0]
        off = float(np.abs(planes[instance].distance(contour.points)).max())
        if off > half[instance] + _HALF_GAP_SLACK_MM:
            shown, limit = _distinct(off, half[instance])
            return instance, (
                f"lies {shown} mm off the plane of its slice (instance {instance}), more "
                f"than half the slice spacing ({limit} mm)"
            )
        return instance, ""
    off = {i: float(np.abs(p.distance(contour.points)).max()) for i, p in planes.items()}
    near = sorted((d, i) for i, d in off.items() if d <= half[i] + _HALF_GAP_SLACK_MM)
    if not near:
        return None, "has no image reference and lies in no slice's plane"
    ties = [i for d, i in near if d - near[0][0] <= _SAME_PLANE_MM]
    if len(ties) > 1:
        shown = ", ".join(map(str, sorted(ties)[:5]))
        return None, (
            f"has no image reference and lies in the plane of {len(ties)} slices (instances "
            f"{shown}{', ...' if len(ties) > 5 else ''}); reference its slice in "
            "ContourImageSequence"
        )
    return near[0][1], ""


def _distinct(value: float, limit: float) -> tuple[str, str]:
    """``value`` and ``limit`` (``value > limit``) with as few decimals as show that
    one is larger: never "3 mm off, more than 3 mm"."""
    for digits in range(3, 16):
        if float(f"{value:.{digits}g}") > float(f"{limit:.{digits}g}"):
            break
    return f"{value:.{digits}g}", f"{limit:.{digits}g}"


# -- rasterising (on the workers) ---------------------------------------------------


@functools.lru_cache(maxsize=8)
def _cached(path: str, size: int, mtime_ns: int, limits: Limits) -> StructureSet:
    # Keyed by the file's size and time too: a file replaced between chunks is reread.
    return read_structure_set(path, limits=limits)


@functools.lru_cache(maxsize=8)
def _cached_bytes(path: str, raw: bytes, limits: Limits) -> StructureSet:
    # A store's object, keyed by its bytes (fetched with the chunk's other files).
    return _from_bytes(path, raw, limits)


def cached_structure_set(
    path: str, *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL
) -> StructureSet:
    """:func:`read_structure_set`, read once per process for all the slices it covers.

    Raises
    ------
    RTStructError
        As :func:`read_structure_set`.

    Examples
    --------
    >>> cached_structure_set("/no/such/rt.dcm")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.RTStructError: /no/such/rt.dcm: cannot read the RTSTRUCT file (No such ...)
    """
    if not fs.local:
        name, expected = "RTSTRUCT file", "an RTSTRUCT file"
        raw = read_bounded(path, limits, error=RTStructError, name=name, expected=expected, fs=fs)
        return _cached_bytes(path, raw, limits)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RTStructError(path, f"cannot read the RTSTRUCT file ({exc.strerror})") from exc
    return _cached(path, st.st_size, st.st_mtime_ns, limits)


def structure_mask(
    picks: Sequence[tuple[str, int]],
    plane: Plane,
    *,
    shape: tuple[int, int],
    to_frame=None,
    frame: tuple[int, int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    fs: FileSystem = LOCAL,
) -> np.ndarray:
    """The mask of a slice's contours ``picks`` (``(path, index)`` pairs): even-odd
    within each ROI, united across ROIs.

    Parameters
    ----------
    picks : sequence of (str, int)
        The contours, as :func:`assign` gives them.
    plane : Plane
        The slice's plane.
    shape : (rows, columns)
        The source slice's size: every point must lie within one pixel of it.
    to_frame : callable, optional
        Maps source pixel ``(x, y)`` into the dataset's frame (the default: none).
    frame : (rows, columns), optional
        The mask's shape; default ``shape``.
    limits : Limits
        Bounds for reading the files.
    fs : FileSystem
        Where the files are (local by default).

    Returns
    -------
    numpy.ndarray
        Boolean mask of ``frame``.

    Raises
    ------
    RTStructError
        If a file cannot be read or a picked contour is no longer in it.
    ContourError
        If a contour maps outside the slice.

    Examples
    --------
    A slice without contours of the kind has an empty mask of the frame:

    >>> plane = Plane("1.2", (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0), (1.0, 1.0))
    >>> structure_mask([], plane, shape=(4, 4), frame=(2, 3)).tolist()
    [[False, False, False], [False, False, False]]
    """
    frame = shape if frame is None else frame
    rings: dict[tuple[str, int], np.ndarray] = {}
    for path, index in picks:
        structure = cached_structure_set(path, limits=limits, fs=fs)
        contour = next((c for c in structure.contours if c.index == index), None)
        if contour is None:
            raise RTStructError(path, f"contour {index} is gone; the file changed since the scan")
        points = check_points(plane.to_pixels(contour.points), path=path, shape=shape)
        points = points if to_frame is None else to_frame(points)
        ring = polygon_mask(points, frame)
        key = (path, contour.roi)
        rings[key] = ring if key not in rings else rings[key] ^ ring  # even-odd: holes
    mask = np.zeros(frame, dtype=bool)
    for ring in rings.values():
        mask |= ring
    return mask
