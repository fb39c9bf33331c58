"""Where the files of a dataset live (:class:`Layout`) and the plan of records
built from them (:func:`scan`). No pixel data is read here."""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import glob
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LayoutError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LABELS", "SERIES", "SUNNYBROOK", "Layout", "iter_records", "scan"]

logger = logging.getLogger(__name__)

LABELS = ("any", "i", "o", "all")

COLUMNS = [
    "patient_id",
    "original_id",
    "instance",
    "dicom_path",
    "icontour_path",
    "ocontour_path",
    "problem",
]


@dataclass(frozen=True)
class Layout:
    """Every file name and pattern of a dataset, as one immutable value.

    Globs are relative to the root and are formatted with ``{patient_id}`` (DICOM
    side) or ``{original_id}`` (contour side), the two columns of the link file.
    Each ``*_regex`` is matched against a file's name and its ``instance`` group
    gives the DICOM instance number the file belongs to.

    Parameters
    ----------
    name : str
        A label stored in dataset attributes.
    link_file : str
        CSV file, relative to the root, that pairs the two ids.
    patient_column, original_column : str
        Column names in the link file.
    dicom_glob, dicom_regex : str
        Where the DICOM slices are, and how a file name gives its instance.
    icontour_glob, icontour_regex, ocontour_glob, ocontour_regex : str
        The same for inner and outer contour files.

    Examples
    --------
    A dataset that names things differently is a new value, not new code:

    >>> from daskmri import Layout
    >>> mine = Layout(
    ...     name="mine",
    ...     link_file="pairs.csv",
    ...     dicom_glob="scans/{patient_id}/*.dcm",
    ...     dicom_regex=r"slice_(?P<instance>\\d+)\\.dcm",
    ... )
    >>> mine.link_file
    'pairs.csv'
    """

    name: str = "sunnybrook"
    link_file: str = "link.csv"
    patient_column: str = "patient_id"
    original_column: str = "original_id"
    dicom_glob: str = "dicoms/{patient_id}/*.dcm"
    dicom_regex: str = r"(?P<instance>\d+)\.dcm"
    icontour_glob: str = "contourfiles/{original_id}/i-contours/*.txt"
    icontour_regex: str = r"IM-\d+-(?P<instance>\d+)-icontour-manual\.txt"
    ocontour_glob: str = "contourfiles/{original_id}/o-contours/*.txt"
    ocontour_regex: str = r"IM-\d+-(?P<instance>\d+)-ocontour-manual\.txt"

    def __post_init__(self) -> None:
        for field, key in (
            ("dicom_glob", "patient_id"),
            ("icontour_glob", "original_id"),
            ("ocontour_glob", "original_id"),
        ):
            value = getattr(self, field)
            if "{" + key + "}" not in value:
                raise LayoutError(f"Layout.{field}={value!r} must contain '{{{key}}}'")
            if os.path.isabs(value) or ".." in value.split("/"):
                raise LayoutError(f"Layout.{field}={value!r} must stay inside the root")
        for field in ("dicom_regex", "icontour_regex", "ocontour_regex"):
            value = getattr(self, field)
            try:
                compiled = re.compile(value)
            except re.error as exc:
                raise LayoutError(f"Layout.{field}={value!r} is not a valid regex: {exc}") from None
            if "instance" not in compiled.groupindex:
                raise LayoutError(f"Layout.{field}={value!r} needs a named group (?P<instance>...)")

    def to_dict(self) -> dict[str, str]:
        """Plain dict of the fields, for storing in dataset attributes.

        Examples
        --------
        >>> Layout.from_dict(SUNNYBROOK.to_dict()) == SUNNYBROOK
        True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, str]) -> Layout:
        """Inverse of :meth:`to_dict`."""
        return cls(**values)


#: The Sunnybrook layout (the default).
SUNNYBROOK = Layout()

#: A second preset: DICOMs named ``IM-0001-<NNNN>.dcm`` inside a series folder under
#: each patient, contours one folder level deeper, and other link-file column names.
SERIES = Layout(
    name="series",
    link_file="subjects.csv",
    patient_column="subject",
    original_column="annotation_set",
    dicom_glob="dicoms/{patient_id}/*/IM-*.dcm",
    dicom_regex=r"IM-\d+-(?P<instance>\d+)\.dcm",
    icontour_glob="contourfiles/{original_id}/*/i-contours/*.txt",
    icontour_regex=r"IM-\d+-(?P<instance>\d+)-icontour-manual\.txt",
    ocontour_glob="contourfiles/{original_id}/*/o-contours/*.txt",
    ocontour_regex=r"IM-\d+-(?P<instance>\d+)-ocontour-manual\.txt",
)


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _find(root: str, root_real: str, pattern: str, problems: list[dict], ids: dict) -> list[str]:
    """Paths under ``root`` matching a relative glob, never leaving ``root``.

    Directories are resolved once each; a file is resolved only when it is a
    symlink, which keeps a million-file scan cheap. Matching entries that are not
    regular files (a directory named like a slice) are returned so that the
    build can drop their record with a reason.
    """
    parts = pattern.split("/")
    dirs = [root]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        literal = glob.escape(part) == part
        regex = None if literal else re.compile(fnmatch.translate(part))
        found: list[str] = []
        for directory in dirs:
            if not _inside(directory, root_real):
                problems.append(
                    _problem(
                        directory, "folder is a link that leaves the root; not followed", **ids
                    )
                )
                continue
            if literal:
                candidate = os.path.join(directory, part)
                if (last and os.path.lexists(candidate)) or (not last and os.path.isdir(candidate)):
                    found.append(candidate)
                continue
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if not regex.match(entry.name):
                    continue
                if last:
                    if entry.is_symlink() and not _inside(entry.path, root_real):
                        problems.append(
                            _problem(
                                entry.path,
                                "file is a link that leaves the root; not followed",
                                **ids,
                            )
                        )
                        continue
                    found.append(entry.path)
                elif entry.is_dir():
                    found.append(entry.path)
        dirs = found
    return dirs


def _problem(path: str, reason: str, **ids: object) -> dict:
    return {
        "patient_id": None,
        "original_id": None,
        "instance": None,
        **ids,
        "path": path,
        "reason": reason,
    }


def _read_link(root: str, layout: Layout) -> list[tuple[int, dict[str, str]]]:
    path = os.path.join(root, layout.link_file)
    if not os.path.isfile(path):
        raise LayoutError(
            f"no link file at {path}. Is {root!r} a dataset root in the {layout.name!r} layout? "
            "Pass layout=daskmri.Layout(link_file=...) for another layout."
        )
    try:
        # utf-8-sig drops a BOM; newline="" lets csv handle CRLF.
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = list(enumerate(reader, start=2))
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    wanted = [layout.patient_column, layout.original_column]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise LayoutError(
            f"{path} has columns {header}, but the layout needs {wanted}. "
            "Set Layout(patient_column=..., original_column=...) to match."
        )
    return rows


def _safe_id(value: str) -> bool:
    return bool(value) and value not in (".", "..") and not any(c in value for c in "/\\\0")


def _instances(
    paths: list[str], regex: re.Pattern[str], kind: str, ids: dict, problems: list[dict]
) -> dict[int, str]:
    by_instance: dict[int, str] = {}
    for path in paths:
        match = regex.fullmatch(os.path.basename(path))
        if match is None:
            problems.append(
                _problem(path, f"{kind} file name does not match the layout's pattern", **ids)
            )
            continue
        instance = int(match["instance"])
        if instance in by_instance:
            problems.append(
                _problem(
                    path,
                    f"second {kind} file for instance {instance} (first: "
                    f"{os.path.basename(by_instance[instance])}); ignored",
                    instance=instance,
                    **ids,
                )
            )
            continue
        by_instance[instance] = path
    return by_instance


def iter_records(
    root: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    labels: str = "any",
    problems: list[dict],
) -> Iterator[dict]:
    """The rows of :func:`scan`, one dict at a time, in the same order, holding only
    one patient's file listing at a time; what is wrong outside any record is
    appended to ``problems`` as it is found.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(32, 32))
    >>> [row["instance"] for row in iter_records(root, problems=[])]
    [2, 3]
    """
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    layout = SUNNYBROOK if layout is None else layout
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise LayoutError(f"dataset root {root!r} is not a folder")
    finder = _Finder(root, layout, problems)
    for ids in _patients(root, layout, problems):
        yield from finder.records(ids, labels)


def _patients(root: str, layout: Layout, problems: list[dict]) -> Iterator[dict[str, str]]:
    """The link file's ``{patient_id, original_id}`` rows, in patient id order (so
    records come out sorted by (patient_id, instance) without holding them all to
    sort them); rows with unsafe or repeated ids go to ``problems``."""
    seen: set[str] = set()
    link = os.path.join(root, layout.link_file)
    rows = sorted(
        _read_link(root, layout), key=lambda r: (r[1].get(layout.patient_column) or "").strip()
    )
    for line, row in rows:
        patient_id = (row.get(layout.patient_column) or "").strip()
        original_id = (row.get(layout.original_column) or "").strip()
        where = f"{layout.link_file} line {line}"
        if not (_safe_id(patient_id) and _safe_id(original_id)):
            reason = (
                f"{where}: ids {patient_id!r}, {original_id!r} are empty or would leave "
                "the root folder; row ignored"
            )
            problems.append(_problem(link, reason))
        elif patient_id in seen:
            problems.append(
                _problem(link, f"{where}: patient {patient_id!r} is listed twice; row ignored")
            )
        else:
            seen.add(patient_id)
            yield {"patient_id": patient_id, "original_id": original_id}


class _Finder:
    """One patient's files, found by the layout's globs under the root."""

    def __init__(self, root: str, layout: Layout, problems: list[dict]) -> None:
        self.root, self.layout, self.problems = root, layout, problems
        self.root_real = os.path.realpath(root)
        self.regexes = {
            "DICOM": re.compile(layout.dicom_regex),
            "i-contour": re.compile(layout.icontour_regex),
            "o-contour": re.compile(layout.ocontour_regex),
        }

    def files(self, kind: str, pattern: str, ids: dict, fill: dict) -> dict[int, str]:
        found = _find(self.root, self.root_real, pattern.format(**fill), self.problems, ids)
        return _instances(found, self.regexes[kind], kind, ids, self.problems)

    def records(self, ids: dict[str, str], labels: str) -> Iterator[dict]:
        layout = self.layout
        fill = {key: glob.escape(value) for key, value in ids.items()}
        dicoms = self.files("DICOM", layout.dicom_glob, ids, fill)
        inner = self.files("i-contour", layout.icontour_glob, ids, fill)
        outer = self.files("o-contour", layout.ocontour_glob, ids, fill)
        if not dicoms:
            where = os.path.join(self.root, layout.dicom_glob.format(**fill))
            self.problems.append(_problem(where, "no DICOM files for this patient", **ids))
        for instance in sorted(set(dicoms) | set(inner) | set(outer)):
            i_path, o_path = inner.get(instance), outer.get(instance)
            keep = {
                "any": i_path is not None or o_path is not None,
                "i": i_path is not None,
                "o": o_path is not None,
                "all": True,
            }[labels]
            if keep:
                yield self._row(ids, instance, dicoms.get(instance), i_path, o_path)

    def _row(self, ids: dict, instance: int, dicom_path, i_path, o_path) -> dict:
        problem = None
        if dicom_path is None:
            contour = os.path.basename(i_path or o_path)
            problem = (
                f"contour {contour} has no DICOM: no file for instance {instance} "
                f"of patient {ids['patient_id']} matches {self.layout.dicom_glob!r}"
            )
        return {
            **ids,
            "instance": instance,
            "dicom_path": dicom_path,
            "icontour_path": i_path,
            "ocontour_path": o_path,
            "problem": problem,
        }


def scan(
    root: str | os.PathLike[str], layout: Layout | None = None, labels: str = "any"
) -> pd.DataFrame:
    """List every record (one image slice with its contours) under ``root``.

    Reads the link file and directory listings only, never pixel data, and never
    anything outside ``root``: link-file ids that would leave it and symlinks that
    point out of it are reported, not followed.

    Parameters
    ----------
    root : str or os.PathLike
        The dataset folder.
    layout : Layout, optional
        File names and patterns; default :data:`SUNNYBROOK`.
    labels : {"any", "i", "o", "all"}
        ``"any"`` keeps slices with at least one contour, ``"i"``/``"o"`` slices
        with that contour, ``"all"`` every slice.

    Returns
    -------
    pandas.DataFrame
        One row per record sorted by ``(patient_id, instance)``, with columns
        ``patient_id``, ``original_id``, ``instance``, ``dicom_path``,
        ``icontour_path``, ``ocontour_path`` (None when absent) and ``problem``
        (None, or why the record cannot be built, e.g. a contour without its
        DICOM). ``attrs["problems"]`` lists what was found wrong outside any
        record (bad link rows, links leaving the root, unmatched file names).

    Raises
    ------
    LayoutError
        If there is no link file or it lacks the layout's columns.
    ValueError
        If ``labels`` is not one of the choices.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=6, shape=(32, 32))
    >>> table = scan(root)
    >>> table[["patient_id", "instance"]].values.tolist()
    [['SYN0001', 2], ['SYN0001', 3], ['SYN0001', 4], ['SYN0001', 6]]
    """
    import pandas as pd  # here, not at the top: worker processes import this module

    root = os.path.abspath(os.fspath(root))
    layout = SUNNYBROOK if layout is None else layout
    problems: list[dict] = []
    records = list(iter_records(root, layout=layout, labels=labels, problems=problems))
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    table["instance"] = table["instance"].astype("int64")
    for column in ("dicom_path", "icontour_path", "ocontour_path", "problem"):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    table.attrs = {"root": root, "layout": layout.to_dict(), "labels": labels, "problems": problems}
    logger.info("scanned %s: %d records, %d problems", root, len(table), len(problems))
    return table
