"""Where the files of a dataset live (:class:`Layout`) and the plan of records
built from them (:func:`scan`). No pixel data is read here."""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import itertools
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import LayoutError, redact
from .filesystem import LOCAL, FileSystem, TooLarge, split_root
from .record import RESERVED, Problem, RTSlice, Scan
from .sources import volumes
from .sources.volumes import VolumeLayout
from .sources.walk import first_listing, walk

__all__ = [
    "LABELS",
    "SERIES",
    "SUNNYBROOK",
    "ContourKind",
    "Layout",
    "RTStruct",
    "iter_records",
    "layout_from_dict",
    "scan",
]

logger = logging.getLogger(__name__)

#: The ``labels=`` choices of the Sunnybrook layout; another layout's are
#: :meth:`Layout.label_choices`.
LABELS = ("any", "i", "o", "all")

#: Patients whose folders a scan of a store lists at once (see _Finder.listed_ahead).
LIST_AHEAD = 64

#: The largest link file read (a million patients' rows take about 50 MB).
LINK_FILE_BYTES = 1 << 30

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _check_glob(owner: str, value: str, keys: tuple[str, ...]) -> None:
    if not any("{" + key + "}" in value for key in keys):
        wanted = " or ".join(f"'{{{key}}}'" for key in keys)
        raise LayoutError(f"{owner}={value!r} must contain {wanted}")
    if os.path.isabs(value) or ".." in value.split("/"):
        raise LayoutError(f"{owner}={value!r} must stay inside the root")


def _compile(owner: str, value: str, *, group: str | None = "instance") -> re.Pattern[str]:
    try:
        compiled = re.compile(value, 0 if group else re.IGNORECASE)
    except re.error as exc:
        raise LayoutError(f"{owner}={value!r} is not a valid regex: {exc}") from None
    if group and group not in compiled.groupindex:
        raise LayoutError(f"{owner}={value!r} needs a named group (?P<{group}>...)")
    return compiled


@dataclass(frozen=True)
class ContourKind:
    """One kind of hand-drawn contour in text files: a mask variable of the dataset.

    Parameters
    ----------
    name : str
        The mask variable's name (``has_<name>`` says which records have one); a
        letter, then letters, digits or ``_``.
    glob : str
        Where the contour files are, relative to the root, formatted with
        ``{original_id}`` (or ``{patient_id}``).
    regex : str
        Matched in full against a file's name; its ``instance`` group gives the
        DICOM instance number the contour belongs to.
    alias : str
        Another ``labels=`` name for the kind (``"i"`` for ``icontour``), or ``""``.

    Raises
    ------
    LayoutError
        If the name is not a valid variable name or is reserved, the glob leaves
        the root or names no id, or the regex is invalid or lacks ``instance``.

    Examples
    --------
    >>> ContourKind("pcontour", glob="contourfiles/{original_id}/p-contours/*.txt",
    ...             regex=r"IM-\\d+-(?P<instance>\\d+)-pcontour-manual\\.txt").name
    'pcontour'
    >>> ContourKind("has_x", glob="{original_id}/*.txt", regex="(?P<instance>1)")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.LayoutError: ContourKind name 'has_x' is reserved or not a variable name ...
    """

    name: str
    glob: str
    regex: str
    alias: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_glob(f"ContourKind({self.name!r}).glob", self.glob, ("original_id", "patient_id"))
        _compile(f"ContourKind({self.name!r}).regex", self.regex)
        if self.alias and (self.alias in RESERVED or not _NAME.fullmatch(self.alias)):
            raise LayoutError(f"ContourKind({self.name!r}).alias={self.alias!r} is not usable")


def _check_name(name: object) -> None:
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or name in RESERVED
        or name.startswith("has_")
    ):
        raise LayoutError(
            f"ContourKind name {name!r} is reserved or not a variable name (a letter, then "
            "letters, digits or _; not has_... nor one of the dataset's other names: "
            f"{', '.join(sorted(RESERVED))}); rename the kind, e.g. '{name}_mask'"
        )


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
        _check_glob("RTStruct.glob", self.glob, ("patient_id", "original_id"))
        if not pairs:
            raise LayoutError("RTStruct(rois=...) is empty; map at least one kind to an ROI regex")
        for name, regex in pairs:
            _check_name(name)
            _compile(f"RTStruct.rois[{name!r}]", regex, group=None)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.rois)


#: The Sunnybrook contour kinds.
ICONTOUR = ContourKind(
    "icontour",
    glob="contourfiles/{original_id}/i-contours/*.txt",
    regex=r"IM-\d+-(?P<instance>\d+)-icontour-manual\.txt",
    alias="i",
)
OCONTOUR = ContourKind(
    "ocontour",
    glob="contourfiles/{original_id}/o-contours/*.txt",
    regex=r"IM-\d+-(?P<instance>\d+)-ocontour-manual\.txt",
    alias="o",
)


@dataclass(frozen=True)
class Layout:
    """Every file name and pattern of a dataset, as one immutable value.

    Globs are relative to the root and are formatted with ``{patient_id}`` (DICOM
    side) or ``{original_id}`` (contour side), the two columns of the link file.
    ``dicom_regex`` is matched against a DICOM file's name and its ``instance``
    group gives the instance number.

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
    contours : tuple of ContourKind
        The contour kinds drawn in text files, in the order of the dataset's
        variables; default Sunnybrook's ``icontour`` and ``ocontour``.
    rtstruct : RTStruct, optional
        Contour kinds read from DICOM RTSTRUCT files, after ``contours``.

    Raises
    ------
    LayoutError
        If a glob or regex is unusable, or two kinds share a name or an alias.

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
    >>> mine.link_file, mine.kinds
    ('pairs.csv', ('icontour', 'ocontour'))
    """

    name: str = "sunnybrook"
    link_file: str = "link.csv"
    patient_column: str = "patient_id"
    original_column: str = "original_id"
    dicom_glob: str = "dicoms/{patient_id}/*.dcm"
    dicom_regex: str = r"(?P<instance>\d+)\.dcm"
    contours: tuple[ContourKind, ...] = (ICONTOUR, OCONTOUR)
    rtstruct: RTStruct | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "contours", tuple(self.contours))
        _check_glob("Layout.dicom_glob", self.dicom_glob, ("patient_id",))
        _compile("Layout.dicom_regex", self.dicom_regex)
        if not all(isinstance(kind, ContourKind) for kind in self.contours):
            raise LayoutError("Layout(contours=...) takes a tuple of daskmri.ContourKind")
        names = [*self.kinds, *(k.alias for k in self.contours if k.alias)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LayoutError(f"contour kinds or aliases {repeated} are declared twice")

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every contour kind's name, in the order of the dataset's variables."""
        rt = () if self.rtstruct is None else self.rtstruct.kinds
        return (*(kind.name for kind in self.contours), *rt)

    def label_choices(self) -> tuple[str, ...]:
        """What ``labels=`` accepts: ``"any"``, ``"all"``, each kind and its alias.

        Examples
        --------
        >>> SUNNYBROOK.label_choices()
        ('any', 'all', 'icontour', 'ocontour', 'i', 'o')
        """
        aliases = tuple(kind.alias for kind in self.contours if kind.alias)
        return ("any", "all", *self.kinds, *aliases)

    def label_kind(self, labels: str) -> str:
        """``labels`` with an alias replaced by its kind's name.

        Raises
        ------
        ValueError
            If ``labels`` is not one of :meth:`label_choices`.

        Examples
        --------
        >>> SUNNYBROOK.label_kind("i"), SUNNYBROOK.label_kind("all")
        ('icontour', 'all')
        """
        if labels not in self.label_choices():
            raise ValueError(f"labels must be one of {self.label_choices()}, got {labels!r}")
        return next((k.name for k in self.contours if k.alias == labels), labels)

    def to_dict(self) -> dict:
        """Plain dict of the fields, for storing in dataset attributes.

        Examples
        --------
        >>> Layout.from_dict(SUNNYBROOK.to_dict()) == SUNNYBROOK
        True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Layout:
        """Inverse of :meth:`to_dict`.

        Examples
        --------
        >>> Layout.from_dict(SERIES.to_dict()) == SERIES
        True
        """
        values = dict(values)
        values["contours"] = tuple(
            k if isinstance(k, ContourKind) else ContourKind(**k)
            for k in values.get("contours", ())
        )
        rt = values.get("rtstruct")
        if isinstance(rt, dict):
            values["rtstruct"] = RTStruct(rt["glob"], tuple(map(tuple, rt["rois"])))
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
    contours=(
        dataclasses.replace(ICONTOUR, glob="contourfiles/{original_id}/*/i-contours/*.txt"),
        dataclasses.replace(OCONTOUR, glob="contourfiles/{original_id}/*/o-contours/*.txt"),
    ),
)


def _read_link(root: str, layout: Layout, fs: FileSystem) -> list[tuple[int, dict[str, str]]]:
    path = os.path.join(root, layout.link_file)
    try:
        raw = fs.read(path, LINK_FILE_BYTES)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise LayoutError(
            f"no link file at {path}. Is {root!r} a dataset root in the {layout.name!r} layout? "
            "Pass layout=daskmri.Layout(link_file=...) for another layout."
        ) from None
    except TooLarge:
        raise LayoutError(f"{path} is over {LINK_FILE_BYTES} bytes; is it the link file?") from None
    try:
        # utf-8-sig drops a BOM; newline="" lets csv handle CRLF.
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
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
    paths: list[str], regex: re.Pattern[str], kind: str, ids: dict, problems: list[Problem]
) -> dict[int, str]:
    by_instance: dict[int, str] = {}
    for path in paths:
        match = regex.fullmatch(os.path.basename(path))
        if match is None:
            problems.append(
                Problem(path, f"{kind} file name does not match the layout's pattern", **ids)
            )
            continue
        instance = int(match["instance"])
        if instance in by_instance:
            problems.append(
                Problem(
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
    layout: Layout | VolumeLayout | None = None,
    labels: str = "any",
    problems: list[Problem],
    fs: FileSystem = LOCAL,
) -> Iterator[dict]:
    """The rows of :func:`scan` (of the folder ``root`` on ``fs``), one dict at a
    time, in the same order, holding only one patient's file listing at a time;
    what is wrong outside any record is appended to ``problems`` as it is found.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(32, 32))
    >>> [row["instance"] for row in iter_records(root, problems=[])]
    [2, 3]
    """
    layout = SUNNYBROOK if layout is None else layout
    wanted = layout.label_kind(labels)
    root = fs.absolute(root)
    fs.forget_listings(root)  # a store: list what is there now, not what was cached
    if not _is_folder(fs, root):
        hint = "" if fs.local else " (nothing is stored under this prefix); check the URL"
        raise LayoutError(f"dataset root {root!r} is not a folder{hint}")
    if isinstance(layout, VolumeLayout):
        yield from volumes.iter_records(
            root, layout=layout, labels=labels, problems=problems, fs=fs
        )
        return
    finder = _Finder(root, layout, problems, fs)
    patients = _patients(root, layout, problems, fs)
    for ids in finder.listed_ahead(patients):
        yield from finder.records(ids, wanted)


def layout_from_dict(values: dict) -> Layout | VolumeLayout:
    """The layout that ``to_dict()`` gave ``values``: a :class:`Layout` or a
    :class:`~daskmri.VolumeLayout`.

    Examples
    --------
    >>> layout_from_dict(volumes.ACDC.to_dict()) == volumes.ACDC
    True
    """
    if values.get("source") == "volumes":
        return VolumeLayout.from_dict(values)
    return Layout.from_dict(values)


def _is_folder(fs: FileSystem, root: str) -> bool:
    try:
        return fs.is_folder(root)
    except Exception as exc:  # a store that refuses: credentials, endpoint, bucket
        reason = redact(" ".join(str(exc).split()) or type(exc).__name__, dict(fs.options))
        raise LayoutError(
            f"cannot list the dataset root {root!r}: {reason}; check the credentials "
            "(source_options=, or the environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) "
            "and that the bucket exists"
        ) from None  # the backend's exception may hold a credential; the reason is redacted


def _patients(
    root: str, layout: Layout, problems: list[Problem], fs: FileSystem
) -> Iterator[dict[str, str]]:
    """The link file's ``{patient_id, original_id}`` rows, in patient id order (so
    records come out sorted by (patient_id, instance) without holding them all to
    sort them); rows with unsafe or repeated ids go to ``problems``."""
    seen: set[str] = set()
    link = os.path.join(root, layout.link_file)
    rows = sorted(
        _read_link(root, layout, fs), key=lambda r: (r[1].get(layout.patient_column) or "").strip()
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
            problems.append(Problem(link, reason))
        elif patient_id in seen:
            problems.append(
                Problem(link, f"{where}: patient {patient_id!r} is listed twice; row ignored")
            )
        else:
            seen.add(patient_id)
            yield {"patient_id": patient_id, "original_id": original_id}


class _Finder:
    """One patient's files, found by the layout's globs under the root."""

    def __init__(self, root: str, layout: Layout, problems: list[Problem], fs: FileSystem) -> None:
        self.root, self.layout, self.problems, self.fs = root, layout, problems, fs
        self.root_real = fs.real(root)
        self.regexes = {"DICOM": re.compile(layout.dicom_regex)} | {
            kind.name: re.compile(kind.regex) for kind in layout.contours
        }

    def listed_ahead(self, patients: Iterator[dict]) -> Iterator[dict]:
        """``patients``, with the folders their globs list first listed at once, for
        :data:`LIST_AHEAD` patients at a time: on a store each listing is a request,
        whose latency would otherwise add up patient by patient (locally a no-op)."""
        layout = self.layout
        patterns = [layout.dicom_glob, *(kind.glob for kind in layout.contours)]
        patterns += [] if layout.rtstruct is None else [layout.rtstruct.glob]
        while batch := list(itertools.islice(patients, LIST_AHEAD)):
            folders = []
            for ids in batch:
                fill = {key: glob.escape(value) for key, value in ids.items()}
                folders += [first_listing(self.root, p.format(**fill)) for p in patterns]
            self.fs = self.fs.listed(folders)
            yield from batch

    def find(self, pattern: str, ids: dict) -> list[str]:
        return walk(self.fs, self.root, pattern, self.problems, ids, root_real=self.root_real)

    def files(self, kind: str, pattern: str, ids: dict, fill: dict) -> dict[int, str]:
        found = self.find(pattern.format(**fill), ids)
        return _instances(found, self.regexes[kind], kind, ids, self.problems)

    def records(self, ids: dict[str, str], wanted: str) -> Iterator[dict]:
        layout = self.layout
        fill = {key: glob.escape(value) for key, value in ids.items()}
        dicoms = self.files("DICOM", layout.dicom_glob, ids, fill)
        text = {k.name: self.files(k.name, k.glob, ids, fill) for k in layout.contours}
        if not dicoms:
            where = os.path.join(self.root, layout.dicom_glob.format(**fill))
            self.problems.append(Problem(where, "no DICOM files for this patient", **ids))
        rt = {} if layout.rtstruct is None or not dicoms else self.rtstruct(ids, fill, dicoms)
        # Out of the loop: it runs for every slice of the patient, most without contours
        # (27k slices for 2k records in the real sample), and layout.kinds builds tuples.
        texts, rt_kinds = tuple(text.items()), layout.kinds[len(text) :]
        for instance in sorted(set(dicoms).union(*text.values())):
            slice_rt = rt.get(instance)
            contours = tuple((name, found.get(instance)) for name, found in texts) + tuple(
                (kind, _first_path(slice_rt, kind)) for kind in rt_kinds
            )
            present = [kind for kind, path in contours if path is not None]
            if wanted == "all" or (present if wanted == "any" else wanted in present):
                yield self._row(ids, instance, dicoms.get(instance), contours, slice_rt)

    def rtstruct(self, ids: dict, fill: dict, dicoms: dict[int, str]) -> dict[int, RTSlice]:
        """The patient's RTSTRUCT contours, by instance. A slice whose position cannot
        be read gets none (and is reported): no contour can be placed on it."""
        from .rtstruct import RTStructError, assign, read_plane, read_structure_set

        paths = self.find(self.layout.rtstruct.glob.format(**fill), ids)
        if not paths:
            return {}
        # On a store: the patient's files fetched at once, not one request per file.
        fs = self.fs.prefetch([*paths, *dicoms.values()])
        sets = []
        for path in paths:
            try:
                sets.append(read_structure_set(path, fs=fs))
            except RTStructError as exc:
                self.problems.append(Problem(path, exc.reason, **ids))
        planes = {}
        for instance, path in dicoms.items():
            try:
                planes[instance] = read_plane(path, fs=fs)
            except RTStructError as exc:
                reason = f"{exc.reason}; the slice gets no RTSTRUCT contour"
                self.problems.append(Problem(path, reason, **ids, instance=instance))
        found = assign(sets, planes, self.layout.rtstruct.rois)
        self.problems += [dataclasses.replace(p, **ids) for p in found.problems]
        return {
            instance: RTSlice(
                planes[instance].as_tuple(),
                tuple((kind, tuple(picks)) for kind, picks in kinds.items()),
            )
            for instance, kinds in found.picks.items()
        }

    def _row(self, ids: dict, instance: int, image_path, contours, slice_rt) -> dict:
        problem = None
        if image_path is None:
            contour = os.path.basename(next(path for _, path in contours if path))
            problem = (
                f"contour {contour} has no DICOM: no file for instance {instance} "
                f"of patient {ids['patient_id']} matches {self.layout.dicom_glob!r}"
            )
        return {
            **ids,
            "instance": instance,
            "image_path": image_path,
            **{f"{kind}_path": path for kind, path in contours},
            "problem": problem,
            "rtstruct": slice_rt,
        }


def _first_path(slice_rt: RTSlice | None, kind: str) -> str | None:
    picks = () if slice_rt is None else slice_rt.of(kind)
    return picks[0][0] if picks else None


def scan(
    root: str | os.PathLike[str],
    layout: Layout | VolumeLayout | None = None,
    labels: str = "any",
    *,
    source_options: dict | None = None,
) -> Scan:
    """List every record (one image slice with its contours) under ``root``.

    Reads the link file and directory listings only, never pixel data, and never
    anything outside ``root``: link-file ids that would leave it and symlinks that
    point out of it are reported, not followed.

    Parameters
    ----------
    root : str or os.PathLike
        The dataset folder: a local path, or an fsspec URL (``s3://bucket/data``;
        the protocol's backend installed, e.g. ``pip install 'daskmri[s3]'``).
    layout : Layout, optional
        File names and patterns; default :data:`SUNNYBROOK`.
    labels : str
        ``"any"`` keeps slices with at least one contour, a kind's name (or alias:
        ``"i"``, ``"o"`` in the Sunnybrook layout) slices with that contour,
        ``"all"`` every slice.
    source_options : dict, optional
        For a URL: its fsspec filesystem's options (credentials, ``endpoint_url``,
        ...). Without them the backend reads its usual environment variables.

    Returns
    -------
    Scan
        ``(table, problems)``. ``table``, a pandas.DataFrame: one row per record
        sorted by ``(patient_id, instance)``, with columns
        ``patient_id``, ``original_id``, ``instance``, ``image_path``, a
        ``<kind>_path`` per contour kind (``icontour_path``, ``ocontour_path``; the
        contour file, or the RTSTRUCT file that holds the slice's contours of that
        kind; None when absent) and ``problem`` (None, or why the record cannot be
        built, e.g. a contour without its DICOM); with an RTSTRUCT layout also
        ``rtstruct``, the slice's plane and contours; ``attrs`` holds the ``root``,
        ``layout`` and ``labels``. ``problems``, a tuple of :class:`~daskmri.Problem`:
        what was found wrong outside any record (bad link rows, links leaving the
        root, unmatched file names, RTSTRUCT files and contours left out).

    With an RTSTRUCT layout the scan also reads each patient's RTSTRUCT files and
    the header (no pixels) of each of its slices, to give every contour its slice.

    Raises
    ------
    LayoutError
        If there is no link file or it lacks the layout's columns; if the root is
        not a folder, or a store refuses to list it (the message names the fix).
    ValueError
        If ``labels`` is not one of the choices.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=6, shape=(32, 32))
    >>> table, problems = scan(root)
    >>> table[["patient_id", "instance"]].values.tolist(), problems
    ([['SYN0001', 2], ['SYN0001', 3], ['SYN0001', 4], ['SYN0001', 6]], ())
    """
    import pandas as pd  # here, not at the top: worker processes import this module

    fs, root = split_root(root, source_options)
    layout = SUNNYBROOK if layout is None else layout
    problems: list[Problem] = []
    records = list(iter_records(root, layout=layout, labels=labels, problems=problems, fs=fs))
    paths = [f"{kind}_path" for kind in layout.kinds]
    if isinstance(layout, VolumeLayout):
        ids, rt = ["patient_id", "original_id", "instance", "frame", "slice", "phase"], ["volume"]
    else:
        ids = ["patient_id", "original_id", "instance"]
        rt = [] if layout.rtstruct is None else ["rtstruct"]
    columns = [*ids, "image_path", *paths, "problem", *rt]
    table = pd.DataFrame.from_records(records, columns=columns)
    for column in ("instance", "frame", "slice"):
        if column in table:
            table[column] = table[column].astype("int64")
    for column in ("image_path", *paths, "problem", *rt):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    table.attrs = {"root": root, "layout": layout.to_dict(), "labels": labels}
    logger.info("scanned %s: %d records, %d problems", root, len(table), len(problems))
    return Scan(table, tuple(problems))
