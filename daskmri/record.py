"""What flows between the stages: a :class:`Record` (one slice and its files), what
a reader returns (:data:`Parsed`), and the row that says why a record was dropped.

Imported by worker processes, so it needs numpy only (pandas inside a function).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .errors import RecordError
from .filesystem import LOCAL, FileSystem
from .fit import GEOMETRY

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DROPPED_COLUMNS",
    "RESERVED",
    "Fitted",
    "Parsed",
    "Placeholder",
    "Problem",
    "RTSlice",
    "Record",
    "Scan",
    "VolumePlane",
    "drop_row",
    "dropped_table",
]

#: What a reader returns: float32 image and one mask per contour kind, in the
#: layout's order (None where the record has no such contour); for the Sunnybrook
#: layout ``(image, icontour, ocontour)``.
Parsed = tuple["np.ndarray | None", ...]


class Fitted(tuple):
    """What the default reader returns: ``(image, *masks)`` in the dataset's frame,
    as any reader does, plus ``geometry``: where the source slice sits in the frame
    (a :class:`daskmri.fit.Geometry`), and ``compact``: the image's compact form (a
    :class:`daskmri.compact.Compact` that widens to ``image`` bit for bit), or None
    where there is none (the record is then kept as float32). It unpacks as the plain
    tuple. Inside a chunk task (:meth:`daskmri.parse.DefaultReader.compact_only`)
    ``image`` may be None where ``compact`` holds the file's own integers: the
    float32 image is then theirs, widened."""

    geometry: object
    compact: object

    def __new__(cls, image, *masks, geometry, compact=None) -> Fitted:
        fitted = super().__new__(cls, (image, *masks))
        fitted.geometry = geometry
        fitted.compact = compact
        return fitted

    def __reduce__(self) -> tuple:
        return (_fitted, (tuple(self), self.geometry, self.compact))


def _fitted(values: tuple, geometry, compact=None) -> Fitted:
    return Fitted(*values, geometry=geometry, compact=compact)


#: Names a kind cannot take: the dataset's dimensions, coordinates and other variables
#: (a mask named ``x`` would become the ``x`` coordinate and be lost), the store's arrays,
#: the ``labels=`` words and the batches' ``padding`` flags.
RESERVED = frozenset(
    {
        "image",
        "pixels",
        "slope",
        "intercept",
        "labels",
        "any",
        "all",
        "status",
        "key",
        "fingerprint",
        "geometry",
        "done",
    }
    | {"patient_id", "original_id", "instance", "record", "dicom", "problem"}
    | {"frame", "slice", "phase", "volume", "rtstruct"}
    | {"x", "y", "padding", *GEOMETRY}
)


#: The columns of :func:`daskmri.dropped`.
DROPPED_COLUMNS = ["patient_id", "original_id", "instance", "path", "reason"]


@dataclass(frozen=True, slots=True)
class RTSlice:
    """A slice's RTSTRUCT contours, as :func:`daskmri.scan` assigned them: the
    slice's plane (:meth:`daskmri.rtstruct.Plane.as_tuple`) and, per kind, the
    ``(rtstruct_path, contour_index)`` of each contour."""

    plane: tuple
    picks: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()

    def of(self, kind: str) -> tuple[tuple[str, int], ...]:
        """The ``(rtstruct_path, contour_index)`` of the slice's contours of ``kind``;
        empty when it has none.

        Examples
        --------
        >>> rt = RTSlice(("1.2",), (("icontour", (("/rt/a.dcm", 0), ("/rt/b.dcm", 3))),))
        >>> rt.of("icontour"), rt.of("ocontour")
        ((('/rt/a.dcm', 0), ('/rt/b.dcm', 3)), ())
        """
        return next((found for name, found in self.picks if name == kind), ())


@dataclass(frozen=True, slots=True)
class VolumePlane:
    """Where a record of a NIfTI source lies in its image and label files.

    Where a record of a NIfTI source lies in its files: the dataset's ``frame``,
    ``slice`` and ``phase`` of the plane, the frame's index in the image file
    (``image_frame``; 0 for a 3D file) and in the label file (``label_frame``; 0 for
    a 3D one), and ``kinds``: the label values of each kind.

    ``unit_index`` and ``unit_size`` say where the plane is among the records its
    image file (its :attr:`Record.unit`) yields in the scan, so that a store can place
    a whole volume in as few chunks as possible while the records stream. They are
    bookkeeping of the scan, not of the plane: left out of its ``repr`` (so of its
    fingerprint, :func:`daskmri.plan.record_fingerprint`) and of its equality.

    Examples
    --------
    >>> plane = VolumePlane(4, 2, "ES", image_frame=4, label_frame=0)
    >>> plane.coords()
    {'frame': 4, 'slice': 2, 'phase': 'ES'}
    """

    frame: int
    slice: int
    phase: str = ""
    image_frame: int = 0
    label_frame: int = 0
    kinds: tuple[tuple[str, tuple[int, ...]], ...] = ()
    unit_index: int = field(default=0, repr=False, compare=False)
    unit_size: int = field(default=1, repr=False, compare=False)

    def coords(self) -> dict:
        """The record's coordinates in the dataset, beside ``patient_id`` and ``instance``."""
        return {"frame": self.frame, "slice": self.slice, "phase": self.phase}


@dataclass(frozen=True, slots=True)
class Record:
    """One image slice and its contours: a row of :func:`daskmri.scan`.

    ``contours`` holds ``(kind, path)`` for every contour kind of the layout, in its
    order: the contour text file, the RTSTRUCT file that holds the slice's contours
    of that kind (see ``rtstruct``), or None.

    Examples
    --------
    >>> r = Record("P", "O", 3, "/d/3.dcm", (("icontour", "/c/i.txt"), ("ocontour", None)))
    >>> r.kinds, r.path("icontour"), r.path("ocontour") is None
    (('icontour', 'ocontour'), '/c/i.txt', True)
    """

    patient_id: str
    original_id: str
    instance: int
    image_path: str | None
    contours: tuple[tuple[str, str | None], ...] = ()
    rtstruct: RTSlice | None = None
    #: For a record of a NIfTI volume: which plane of its files it is.
    volume: VolumePlane | None = None
    #: Where the paths are: the local disk, or the store of a dataset at a URL (a
    #: reader reads through it: ``record.fs.read(path, max_bytes)``).
    fs: FileSystem = field(default=LOCAL, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, int]:
        """The record's identity in a dataset: ``(patient_id, instance)``."""
        return (self.patient_id, self.instance)

    def describe(self) -> str:
        """The record in words, for messages.

        Examples
        --------
        >>> Record("P1", "O1", 3, "/d/3.dcm").describe()
        'patient P1, instance 3 (/d/3.dcm)'
        """
        return f"patient {self.patient_id}, instance {self.instance} ({self.image_path})"

    @property
    def unit(self) -> tuple | None:
        """What a reader reads at once with this record: records of one volume share
        their image file, so a chunk reads it (and each label file) once. None for a
        record that is read alone (a DICOM slice)."""
        return None if self.volume is None else (self.image_path,)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The contour kinds of the layout, in its order (whether or not this record
        has a contour of each)."""
        return tuple(kind for kind, _ in self.contours)

    def path(self, kind: str) -> str | None:
        """The file of this record's contour of ``kind``, or None."""
        return next((path for name, path in self.contours if name == kind), None)


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a scan found wrong, or why a record was dropped.

    Something a scan found wrong outside a record (a bad link-file row, a link
    out of the root, a file name the layout does not match, ...), or why a record
    was dropped: one row of :func:`daskmri.dropped`.

    :func:`daskmri.scan` returns them beside its table (``Scan.problems``), so that
    filtering the table keeps them.

    Examples
    --------
    >>> p = Problem("/d/notes.dcm", "DICOM file name does not match", patient_id="P1")
    >>> p.row()["reason"], p.row()["instance"] is None
    ('DICOM file name does not match', True)
    """

    path: str | None
    reason: str
    patient_id: str | None = None
    original_id: str | None = None
    instance: int | None = None

    def row(self) -> dict:
        """The :func:`daskmri.dropped` row: a dict of :data:`DROPPED_COLUMNS`.

        Examples
        --------
        >>> list(Problem("/d/x", "bad").row()) == DROPPED_COLUMNS
        True
        """
        return {
            "patient_id": self.patient_id,
            "original_id": self.original_id,
            "instance": self.instance,
            "path": self.path,
            "reason": self.reason,
        }


class Scan(NamedTuple):
    """What :func:`scan` returns: the records' table and the problems found beside it.

    What :func:`scan` returns: the records' table and, beside it, the
    :class:`Problem` values found outside any record (they stay whole
    when the table is filtered). Unpacks as ``table, problems = daskmri.scan(root)``."""

    table: pd.DataFrame
    problems: tuple[Problem, ...]


class Placeholder(Record):
    """A store slot that no planned record takes, in a chunk task that writes its whole
    region: padding, or a record an update retires. Never read: the reader is not
    called for it (its slot is retired when the build ends).

    Examples
    --------
    >>> Placeholder("", "", 0, None).key
    ('', 0)
    """

    __slots__ = ()


def drop_row(record: Record, exc: BaseException) -> dict:
    """The :func:`daskmri.dropped` row for ``record``, which failed with ``exc``.

    Examples
    --------
    >>> drop_row(Record("P1", "O1", 3, "/d/3.dcm"), ValueError("bad"))["reason"]
    'ValueError: bad'
    """
    if isinstance(exc, RecordError):
        path, reason = exc.path or record.image_path, exc.reason
    else:
        # A custom reader raised something else: keep the type so it can be found.
        path, reason = record.image_path, f"{type(exc).__name__}: {exc}"
    return Problem(path, reason, record.patient_id, record.original_id, record.instance).row()


def dropped_table(rows: list[dict]) -> pd.DataFrame:
    """Dropped rows as the :func:`daskmri.dropped` table."""
    import pandas as pd

    table = pd.DataFrame.from_records(rows, columns=DROPPED_COLUMNS)
    table["instance"] = table["instance"].astype("Int64")
    return table
