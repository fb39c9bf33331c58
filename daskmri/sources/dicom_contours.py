"""The per-slice DICOM plus contour files source: a :class:`Layout` (Sunnybrook's by
default) names where each patient's DICOM slices and contour text files are, through a
link file that pairs the two ids. :func:`iter_records` lists them (no pixel is read);
:func:`read` reads one slice and its masks into the dataset's frame. Contour kinds from
RTSTRUCT files are :mod:`daskmri.sources.dicom_rtstruct`'s."""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..contours import polygon_mask, read_contour
from ..dicom import read_slice_compact
from ..errors import LayoutError, RecordError
from ..filesystem import FileSystem, TooLarge
from ..fit import Geometry, check_resampled, fit_compact, fit_image, place_in_frame
from ..limits import Limits
from ..record import RESERVED, Fitted, Problem, Record, RTSlice
from . import dicom_rtstruct
from .dicom_rtstruct import RTStruct, find_contours, first_path
from .names import NAME, check_contains, check_glob, check_kind_name, compile_pattern
from .walk import first_listing, walk

__all__ = [
    "ICONTOUR",
    "LABELS",
    "OCONTOUR",
    "SERIES",
    "SUNNYBROOK",
    "ContourKind",
    "Layout",
    "iter_records",
    "read",
]

#: The ``labels=`` choices of the Sunnybrook layout; another layout's are
#: :meth:`Layout.label_choices`.
LABELS = ("any", "i", "o", "all")

#: Patients whose folders a scan of a store lists at once (see _Finder.listed_ahead).
LIST_AHEAD = 64

#: The largest link file read (a million patients' rows take about 50 MB).
LINK_FILE_BYTES = 1 << 30


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
    daskmri.errors.LayoutError: kind name 'has_x' is reserved or not a variable name ...
    """

    name: str
    glob: str
    regex: str
    alias: str = ""

    def __post_init__(self) -> None:
        check_kind_name(self.name)
        check_glob(f"ContourKind({self.name!r}).glob", self.glob, ("original_id", "patient_id"))
        compile_pattern(f"ContourKind({self.name!r}).regex", self.regex)
        if self.alias and (self.alias in RESERVED or not NAME.fullmatch(self.alias)):
            raise LayoutError(f"ContourKind({self.name!r}).alias={self.alias!r} is not usable")


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
    contains : tuple of (str, str)
        Pairs ``(inner, outer)``: kind ``inner`` must lie inside kind ``outer`` with
        its holes filled (:mod:`daskmri.qc` flags what leaks out). Default none;
        :data:`SUNNYBROOK` and :data:`SERIES` declare ``icontour`` inside ``ocontour``.

    Raises
    ------
    LayoutError
        If a glob or regex is unusable, two kinds share a name or an alias, or
        ``contains`` names a kind the layout does not have.

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
    contains: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "contours", tuple(self.contours))
        check_glob("Layout.dicom_glob", self.dicom_glob, ("patient_id",))
        compile_pattern("Layout.dicom_regex", self.dicom_regex)
        if not all(isinstance(kind, ContourKind) for kind in self.contours):
            raise LayoutError("Layout(contours=...) takes a tuple of daskmri.ContourKind")
        names = [*self.kinds, *(k.alias for k in self.contours if k.alias)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LayoutError(f"contour kinds or aliases {repeated} are declared twice")
        object.__setattr__(self, "contains", check_contains(self.contains, self.kinds))

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


#: The Sunnybrook layout (the default): the i-contour (endocardium) lies inside the
#: o-contour (epicardium), whose mask is the filled disk.
SUNNYBROOK = Layout(contains=(("icontour", "ocontour"),))

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
    contains=(("icontour", "ocontour"),),
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
    root: str, *, layout: Layout, wanted: str, problems: list[Problem], fs: FileSystem
) -> Iterator[dict]:
    """The scan rows of a per-slice layout under ``root`` (an absolute path or URL
    already checked to be a folder), patient by patient; ``wanted`` is
    :meth:`Layout.label_kind` of the ``labels=`` asked for."""
    finder = _Finder(root, layout, problems, fs)
    patients = _patients(root, layout, problems, fs)
    for ids in finder.listed_ahead(patients):
        yield from finder.records(ids, wanted)


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
                (kind, first_path(slice_rt, kind)) for kind in rt_kinds
            )
            present = [kind for kind, path in contours if path is not None]
            if wanted == "all" or (present if wanted == "any" else wanted in present):
                yield self._row(ids, instance, dicoms.get(instance), contours, slice_rt)

    def rtstruct(self, ids: dict, fill: dict, dicoms: dict[int, str]) -> dict[int, RTSlice]:
        """The patient's RTSTRUCT contours, by instance (:func:`.dicom_rtstruct.find_contours`)."""
        rt = self.layout.rtstruct
        return find_contours(
            lambda glob: self.find(glob, ids),
            self.fs,
            rt.glob.format(**fill),
            rt.rois,
            dicoms,
            ids,
            self.problems,
        )

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


def read(
    record: Record,
    *,
    limits: Limits,
    shape: tuple[int, int] | None = None,
    fit: str = "drop",
    spacing: tuple[float, float] | None = None,
    image: bool = True,
) -> Fitted:
    """One DICOM slice and its masks in the dataset's frame (:func:`daskmri.read_record`
    for a slice record): masks are rasterised in the frame from the mapped contour, by
    the mask rule, never shifted or interpolated.

    With ``image=False`` the float32 image is None where the compact form is the
    file's own integers in the frame as they are (see
    :func:`daskmri.dicom.read_slice_compact`): what a build keeps.

    Raises
    ------
    RecordError
        For any bad file.
    """
    if record.image_path is None:
        raise RecordError("", f"instance {record.instance} has contours but no DICOM")
    pixels, compact, source_spacing = read_slice_compact(
        record.image_path, limits=limits, fs=record.fs, image=image
    )
    source = compact.pixels.shape
    frame = source if shape is None else shape
    geometry = place_in_frame(record.image_path, source, frame, source_spacing, fit, spacing)
    check_resampled(record.image_path, geometry, source_spacing, limits)
    if geometry.scaled or source != tuple(frame):
        pixels = fit_image(compact.image() if pixels is None else pixels, geometry, frame)
        compact = fit_compact(compact, pixels, geometry, frame)
    masks = [_mask(record, kind, path, geometry, frame, limits) for kind, path in record.contours]
    return Fitted(pixels, *masks, geometry=geometry, compact=compact)


def _mask(record: Record, kind: str, path, geometry: Geometry, frame, limits: Limits):
    """One contour kind's mask of ``record`` in the frame, or None without a contour."""
    if path is None:
        return None
    if record.rtstruct is not None and record.rtstruct.of(kind):
        return dicom_rtstruct.mask(record, kind, geometry, frame, limits)
    source = (geometry.source_rows, geometry.source_columns)
    points = read_contour(path, shape=source, limits=limits, fs=record.fs)
    return polygon_mask(geometry.to_frame(points), frame)
