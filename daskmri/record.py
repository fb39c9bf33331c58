"""What flows between the stages: a :class:`Record` (one slice and its files), what
a reader returns (:data:`Parsed`), and the row that says why a record was dropped.

Imported by worker processes, so it needs numpy only (pandas inside a function).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import RecordError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DROPPED_COLUMNS", "Fitted", "Parsed", "Record", "drop_row", "dropped_table"]

#: What a reader returns: float32 image and the inner/outer masks (None when the
#: record has no such contour).
Parsed = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


class Fitted(tuple):
    """What the default reader returns: ``(image, icontour, ocontour)`` in the
    dataset's frame, as any reader does, plus ``geometry``: where the source slice
    sits in the frame (a :class:`daskmri.fit.Geometry`). It unpacks as the 3-tuple."""

    geometry: object

    def __new__(cls, image, icontour, ocontour, geometry) -> Fitted:
        fitted = super().__new__(cls, (image, icontour, ocontour))
        fitted.geometry = geometry
        return fitted

    def __getnewargs__(self) -> tuple:
        return (*self, self.geometry)


#: The columns of :func:`daskmri.dropped`.
DROPPED_COLUMNS = ["patient_id", "original_id", "instance", "path", "reason"]


@dataclass(frozen=True, slots=True)
class Record:
    """One image slice and its contour files: a row of :func:`daskmri.scan`."""

    patient_id: str
    original_id: str
    instance: int
    dicom_path: str | None
    icontour_path: str | None = None
    ocontour_path: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        """The record's identity in a dataset: ``(patient_id, instance)``."""
        return (self.patient_id, self.instance)


def drop_row(record: Record, exc: BaseException) -> dict:
    """The :func:`daskmri.dropped` row for ``record``, which failed with ``exc``.

    Examples
    --------
    >>> drop_row(Record("P1", "O1", 3, "/d/3.dcm"), ValueError("bad"))["reason"]
    'ValueError: bad'
    """
    if isinstance(exc, RecordError):
        path, reason = exc.path or record.dicom_path, exc.reason
    else:
        # A custom reader raised something else: keep the type so it can be found.
        path, reason = record.dicom_path, f"{type(exc).__name__}: {exc}"
    return {
        "patient_id": record.patient_id,
        "original_id": record.original_id,
        "instance": record.instance,
        "path": path,
        "reason": reason,
    }


def dropped_table(rows: list[dict]) -> pd.DataFrame:
    """Dropped rows as the :func:`daskmri.dropped` table."""
    import pandas as pd

    table = pd.DataFrame.from_records(rows, columns=DROPPED_COLUMNS)
    table["instance"] = table["instance"].astype("Int64")
    return table
