"""The QC verdicts file: one row per record, written by the report, edited by a person.

:func:`daskmri.report` writes ``verdicts.csv`` with every record it saw, its flags
and an empty ``verdict`` column. A user writes ``exclude`` in that column for the
records to leave out, and passes the file back as ``exclude="qc/verdicts.csv"`` to
:func:`daskmri.load_dataset`, :func:`daskmri.build` or
:class:`daskmri.BatchIterator`. Those records are then left out and reported like
dropped ones, with the reason ``"excluded by qc/verdicts.csv"``.

A record is named by ``(patient_id, instance)``: ``instance`` is unique within a
patient for every source (a volume's plane is ``frame * n_slices + slice``). The
other columns are for the person reading the file; only ``patient_id``,
``instance`` and ``verdict`` are read back.

Columns, in order: ``patient_id``, ``instance``, ``frame``, ``slice`` and
``phase`` (empty for DICOM sources), ``path`` (the file of a dropped record; a
dataset does not keep its kept records' paths), ``flags`` (the QC flags in words,
``"; "``-separated, empty when none), ``dropped`` (why the record was dropped,
empty when it was kept) and ``verdict``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import operator
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "COLUMNS",
    "EXCLUDE",
    "KEEP",
    "Exclusion",
    "as_exclusion",
    "filled_verdicts",
    "read_verdicts",
    "write_verdicts",
]

log = logging.getLogger(__name__)

#: The columns of ``verdicts.csv``; ``frame``, ``slice`` and ``phase`` are empty for DICOM.
COLUMNS = (
    "patient_id",
    "instance",
    "frame",
    "slice",
    "phase",
    "path",
    "flags",
    "dropped",
    "verdict",
)

#: The verdict that leaves a record out.
EXCLUDE = "exclude"

#: Verdicts that keep a record (case and surrounding spaces do not matter).
KEEP = ("", "keep", "ok")

_REQUIRED = ("patient_id", "instance", "verdict")


@dataclass(frozen=True)
class Exclusion:
    """The records a verdicts file excludes.

    Attributes
    ----------
    source : str
        The file, as the user named it; it is the reason's text:
        ``"excluded by qc/verdicts.csv"``.
    keys : frozenset of (str, int)
        The ``(patient_id, instance)`` of every record whose verdict is ``exclude``.

    Examples
    --------
    >>> e = Exclusion("qc/verdicts.csv", frozenset({("P1", 3)}))
    >>> e.reason, e.excludes("P1", 3), e.excludes("P1", 4)
    ('excluded by qc/verdicts.csv', True, False)
    """

    source: str
    keys: frozenset[tuple[str, int]]

    @property
    def reason(self) -> str:
        """The dropped row's reason for an excluded record."""
        return f"excluded by {self.source}"

    def excludes(self, patient_id: str, instance: int) -> bool:
        """Whether the record ``(patient_id, instance)`` is excluded."""
        return (str(patient_id), int(instance)) in self.keys

    def fingerprint(self) -> str:
        """A digest of the excluded keys (not of the file's other columns or name).

        Examples
        --------
        >>> a = Exclusion("a.csv", frozenset({("P1", 3), ("P2", 1)}))
        >>> b = Exclusion("b.csv", frozenset({("P2", 1), ("P1", 3)}))
        >>> a.fingerprint() == b.fingerprint()
        True
        """
        text = "\n".join(f"{patient}\t{instance}" for patient, instance in sorted(self.keys))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Exclusion:
        """Read a verdicts file (see :func:`read_verdicts`)."""
        return cls(os.fspath(path), frozenset(read_verdicts(path)))

    def only(self, keys: Iterable[tuple[str, int]]) -> Exclusion:
        """The same exclusion restricted to ``keys``: those of the records it met.

        A store and an iterator fingerprint what was actually left out, so that a
        verdict about a record that is not there changes nothing.

        Examples
        --------
        >>> e = Exclusion("v.csv", frozenset({("P1", 3), ("P9", 1)}))
        >>> sorted(e.only([("P1", 3), ("P1", 4)]).keys)
        [('P1', 3)]
        """
        return Exclusion(self.source, self.keys & {(str(p), int(i)) for p, i in keys})

    def report_unmatched(self, matched: int) -> None:
        """Log, at INFO, how many of the excluded keys named no record (not an error:
        the record may have been dropped, removed or renamed since the report)."""
        unmatched = len(self.keys) - matched
        if unmatched > 0:
            log.info(
                "%s: %d excluded record(s) are not in the dataset (dropped, removed or "
                "renamed since the report); nothing to leave out for them",
                self.source,
                unmatched,
            )


def as_exclusion(exclude: object) -> Exclusion | None:
    """The ``exclude=`` argument as an :class:`Exclusion`: None stays None, a path is
    read (:meth:`Exclusion.from_path`), an :class:`Exclusion` is kept.

    Parameters
    ----------
    exclude : None, str, os.PathLike or Exclusion
        What :func:`daskmri.load_dataset`, :func:`daskmri.build` and
        :class:`daskmri.BatchIterator` take as ``exclude=``.

    Returns
    -------
    Exclusion or None

    Raises
    ------
    TypeError
        If ``exclude`` is anything else; the message says what to pass.
    FileNotFoundError, ValueError
        As :func:`read_verdicts`, for a file that is missing or unreadable.

    Examples
    --------
    >>> as_exclusion(None) is None
    True
    >>> as_exclusion(Exclusion("v.csv", frozenset())).reason
    'excluded by v.csv'
    >>> as_exclusion(["P1", 3])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: exclude= must be the path of a verdicts.csv ...
    """
    if exclude is None or isinstance(exclude, Exclusion):
        return exclude
    if isinstance(exclude, (str, os.PathLike)):
        path = os.fspath(exclude)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"exclude={path!r}: no such verdicts file; pass the verdicts.csv that "
                "`daskmri report` wrote (with its verdict column filled in), or exclude=None"
            )
        return Exclusion.from_path(path)
    raise TypeError(
        "exclude= must be the path of a verdicts.csv (str or os.PathLike), a "
        f"daskmri.verdicts.Exclusion or None, got {type(exclude).__name__}: {exclude!r}"
    )


def _verdict(row: dict, line: int, path: str) -> bool:
    """Whether a row's verdict excludes it; anything unknown is refused."""
    verdict = (row.get("verdict") or "").strip().lower()
    if verdict == EXCLUDE:
        return True
    if verdict in KEEP:
        return False
    raise ValueError(
        f"{path}, line {line}: verdict {row['verdict']!r} is not understood; write "
        f"{EXCLUDE!r} to leave the record out, or leave it empty (or 'keep') to keep it"
    )


def _instance(row: dict, line: int, path: str) -> int:
    text = (row.get("instance") or "").strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: instance {text!r} is not a whole number; the "
            "patient_id and instance columns must stay as daskmri.report wrote them"
        ) from None


def read_verdicts(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """The ``(patient_id, instance)`` of every record a verdicts file excludes.

    Parameters
    ----------
    path : str or os.PathLike
        A ``verdicts.csv`` written by :func:`daskmri.report`, with verdicts filled
        in. Columns other than ``patient_id``, ``instance`` and ``verdict`` are
        ignored, so a spreadsheet may add its own.

    Returns
    -------
    list of (str, int)
        In file order. A dropped record (its ``dropped`` column set) may be listed:
        it is simply not in any dataset to exclude.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a required column is missing, an instance is not a whole number, or a
        verdict is neither empty, ``keep``, ``ok`` nor ``exclude``; the message names
        the line.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "verdicts.csv"
    >>> _ = path.write_text("patient_id,instance,flags,verdict\\n"
    ...                     "P1,1,,\\nP1,2,empty lv,Exclude \\nP2,1,,keep\\n")
    >>> read_verdicts(path)
    [('P1', 2)]
    """
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = [name for name in _REQUIRED if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{path} has no {', '.join(missing)} column: pass the verdicts.csv that "
                "daskmri.report wrote, with its verdict column filled in"
            )
        excluded = []
        # Line 1 is the header.
        for line, row in enumerate(reader, start=2):
            if _verdict(row, line, path):
                excluded.append((row["patient_id"].strip(), _instance(row, line, path)))
    log.debug("%s excludes %d records", path, len(excluded))
    return excluded


def filled_verdicts(path: str | os.PathLike[str]) -> dict[tuple[str, int | str], str]:
    """Every verdict a person wrote in a verdicts file, whatever it says.

    Unlike :func:`read_verdicts`, nothing is refused: this is what a new report
    carries over (``write_verdicts(..., verdicts=)``), so that no word a person wrote
    is lost, a typo included.

    Parameters
    ----------
    path : str or os.PathLike
        A ``verdicts.csv``.

    Returns
    -------
    dict
        ``{(patient_id, instance): verdict}`` for every row whose ``verdict`` is not
        empty; ``instance`` is an int when it is a whole number, else the text.

    Raises
    ------
    OSError, UnicodeDecodeError, csv.Error
        If the file cannot be read as CSV text.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "verdicts.csv"
    >>> _ = path.write_text("patient_id,instance,verdict\\nP1,1,\\nP1,2, exlude \\n")
    >>> filled_verdicts(path)
    {('P1', 2): 'exlude'}
    """
    filled: dict[tuple[str, int | str], str] = {}
    with open(path, newline="", encoding="utf-8-sig") as file:
        for row in csv.DictReader(file):
            verdict = (row.get("verdict") or "").strip()
            if verdict:
                instance = (row.get("instance") or "").strip()
                key = int(instance) if instance.lstrip("-").isdigit() else instance
                filled[((row.get("patient_id") or "").strip(), key)] = verdict
    return filled


def _key(row: dict) -> tuple[str, int] | None:
    """A row's ``(patient_id, instance)``; None without a whole-number instance."""
    try:
        return str(row.get("patient_id", "")), operator.index(row.get("instance"))
    except TypeError:
        return None


def write_verdicts(
    rows: Iterable[dict],
    path: str | os.PathLike[str],
    *,
    verdicts: Mapping[tuple[str, int], str] | None = None,
) -> int:
    """Write ``verdicts.csv``: one row per record, the ``verdict`` column empty.

    Parameters
    ----------
    rows : iterable of dict
        One dict per record with the keys of :data:`COLUMNS` it has (missing ones
        are written empty); a ``verdict`` key is ignored. Rows are written as they
        come, so a generator keeps only one row in memory.
    path : str or os.PathLike
        The file to write.
    verdicts : mapping, optional
        Verdicts a person already gave, by ``(patient_id, instance)``: carried into
        the rows of those records (the report keeps an edited file's verdicts).

    Returns
    -------
    int
        The number of records written.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "verdicts.csv"
    >>> write_verdicts([{"patient_id": "P1", "instance": 2, "flags": "empty lv"}], path)
    1
    >>> path.read_text().splitlines()[1]
    'P1,2,,,,,empty lv,,'
    >>> write_verdicts([{"patient_id": "P1", "instance": 2}], path, verdicts={("P1", 2): "exclude"})
    1
    >>> read_verdicts(path)
    [('P1', 2)]
    """
    count = 0
    given = verdicts or {}
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            verdict = given.get(_key(row), "") if given else ""
            writer.writerow({**{name: row.get(name, "") for name in COLUMNS}, "verdict": verdict})
            count += 1
    return count
