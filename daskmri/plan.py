"""Stage 3, plan: the records to parse, in chunks, with their slots and fingerprints.

Everything here is pure bookkeeping on the client: no pixel is read (one DICOM
header at most, for the image size), nothing is run and nothing is written.

- :func:`plan_chunks` splits a scan table into :class:`ChunkPlan` chunks, for
  :func:`daskmri.load_dataset`.
- :func:`plan_inputs` streams a folder once and fingerprints every record (its
  identity and its files' sizes and times), for :func:`daskmri.build` and
  :func:`daskmri.check`.
- :func:`plan_slots` and :func:`fill_chunks` say which store slot each record goes
  to and gather the records of each chunk that must run, for :func:`daskmri.build`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .dicom import read_dicom_geometry
from .errors import DATA_ERRORS, DaskmriError, ReaderError
from .filesystem import LOCAL, FileSystem
from .fit import place
from .layout import iter_records, layout_from_dict
from .limits import Limits
from .record import Problem, Record, Scan
from .settings import Source, check_chunk_size
from .sources.volumes import plane_geometry
from .verdicts import Exclusion

if TYPE_CHECKING:
    import pandas as pd

    from .sources.dicom_contours import Layout
    from .sources.volumes import VolumeLayout

__all__ = [
    "ChunkPlan",
    "Inputs",
    "SlotCursor",
    "SlotPlan",
    "aligned_slot",
    "exclude_from",
    "fill_chunks",
    "fingerprint_layout",
    "infer_shape",
    "iter_plan",
    "leave_out",
    "placed_chunks",
    "plan_chunks",
    "plan_inputs",
    "plan_slots",
    "record_fingerprint",
    "record_key",
]

#: A chunk as the executors take it: ``(slot, record)`` pairs, because a task does
#: not otherwise know where its records go.
Part = list[tuple[int, Record]]


@dataclass(frozen=True)
class ChunkPlan:
    """What :func:`daskmri.load_dataset` will run: records in chunks, and records
    already known to be unbuildable (``dropped``, from the scan)."""

    chunks: tuple[tuple[Record, ...], ...]
    dropped: tuple[dict, ...] = field(default=())

    @property
    def n_records(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    def parts(self) -> list[Part]:
        """Each chunk as ``(slot, record)`` pairs, slots counted across chunks."""
        starts = itertools.accumulate((len(c) for c in self.chunks), initial=0)
        return [list(enumerate(c, start)) for c, start in zip(self.chunks, starts, strict=False)]


def plan_chunks(
    table: pd.DataFrame | Scan,
    problems: Iterable[Problem] = (),
    *,
    chunk_size: int = 64,
    fs: FileSystem = LOCAL,
) -> ChunkPlan:
    """Split a :func:`daskmri.scan` table into chunks of ``chunk_size`` records.

    ``table`` is the scan's table (with its ``problems`` beside it), or the whole
    :class:`~daskmri.Scan`. Records the scan already found broken (``problem`` set)
    and the scan's own problems go to ``dropped`` and are never parsed. The records
    read their files through ``fs``: the filesystem the scan listed (local by default).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=10, shape=(32, 32))
    >>> plan = plan_chunks(daskmri.scan(root), chunk_size=4)
    >>> [len(c) for c in plan.chunks]
    [4, 4, 4, 2]
    """
    check_chunk_size(chunk_size)
    if isinstance(table, Scan):
        table, problems = table
    dropped: list[Problem] = list(problems)
    kinds = layout_from_dict(table.attrs["layout"]).kinds if "layout" in table.attrs else None
    rows = (plan_row(row._asdict(), dropped, kinds, fs) for row in table.itertuples(index=False))
    records = [record for record in rows if record is not None]
    return ChunkPlan(
        chunks=tuple(pack(records, chunk_size)), dropped=tuple(p.row() for p in dropped)
    )


def pack(records: Sequence[Record], chunk_size: int) -> Iterator[tuple[Record, ...]]:
    """``records`` in chunks of at most ``chunk_size``, where the records of one volume
    (:attr:`~daskmri.record.Record.unit`) stay in one chunk, so that one task reads
    each volume once: a chunk closes early rather than split a volume, and a volume
    of more than ``chunk_size`` planes is a chunk of its own.

    Examples
    --------
    >>> from daskmri.record import VolumePlane
    >>> def plane(path, k):
    ...     return Record("P", "", k, path, volume=VolumePlane(0, k))
    >>> records = [plane("a.nii", k) for k in range(3)] + [plane("b.nii", k) for k in range(3)]
    >>> [len(chunk) for chunk in pack(records, 4)]
    [3, 3]
    >>> [len(chunk) for chunk in pack([Record("P", "", k, f"{k}.dcm") for k in range(5)], 2)]
    [2, 2, 1]
    """
    chunk: list[Record] = []
    for _, group in itertools.groupby(records, key=_unit_or_self):
        group = list(group)
        if chunk and len(chunk) + len(group) > chunk_size:
            yield tuple(chunk)
            chunk = []
        chunk += group
        if len(chunk) >= chunk_size:
            yield tuple(chunk)
            chunk = []
    if chunk:
        yield tuple(chunk)


def _unit_or_self(record: Record) -> object:
    # A record read alone is a unit of its own (object() never equals the next one).
    return record.unit if record.unit is not None else object()


def plan_row(
    row: dict, dropped: list[Problem], kinds: Sequence[str] | None = None, fs: FileSystem = LOCAL
) -> Record | None:
    """A scan row as a record to parse, or, when the scan found it unbuildable, None
    and its :class:`~daskmri.Problem` appended to ``dropped``. ``kinds`` are the
    layout's contour kinds (default: those of the row's ``<kind>_path`` keys), ``fs``
    where its files are."""
    if kinds is None:
        kinds = [
            key[: -len("_path")] for key in row if key.endswith("_path") and key != "image_path"
        ]
    contours = tuple((kind, row[f"{kind}_path"]) for kind in kinds)
    if row["problem"] is not None:
        paths = [path for _, path in contours if path is not None]
        path = paths[0] if paths else row["image_path"]
        ids = (row["patient_id"], row["original_id"], int(row["instance"]))
        dropped.append(Problem(path, row["problem"], *ids))
        return None
    return Record(
        row["patient_id"],
        row["original_id"],
        int(row["instance"]),
        row["image_path"],
        contours,
        row.get("rtstruct"),
        row.get("volume"),
        fs,
    )


def iter_plan(
    source: Source, *, problems: list[Problem], excluded: list[Problem] | None = None
) -> Iterator[Record]:
    """The records to parse, in scan order, one at a time. Everything the scan found
    unbuildable goes to ``problems``; the records ``source.exclude`` leaves out go to
    ``excluded`` (default: ``problems`` too), see :func:`leave_out`."""
    rows = iter_records(
        source.root, layout=source.layout, labels=source.labels, problems=problems, fs=source.fs
    )
    planned = (plan_row(row, problems, source.layout.kinds, source.fs) for row in rows)
    records = (record for record in planned if record is not None)
    if source.exclude is None:
        yield from records
        return
    yield from leave_out(records, source.exclude, problems if excluded is None else excluded)


def excluded_row(record: Record, exclusion: Exclusion) -> Problem:
    """The :func:`daskmri.dropped` entry of a record that ``exclusion`` leaves out."""
    ids = (record.patient_id, record.original_id, record.instance)
    return Problem(record.image_path, exclusion.reason, *ids)


def leave_out(
    records: Iterable[Record], exclusion: Exclusion, excluded: list[Problem]
) -> Iterator[Record]:
    """``records`` less those ``exclusion`` names, each of those appended to
    ``excluded`` (a :class:`~daskmri.Problem` with the exclusion's reason).

    The planes a volume keeps are numbered again among themselves
    (:attr:`~daskmri.record.VolumePlane.unit_index` and ``unit_size``), so that a
    store places what is left of the volume as it would a smaller one; a volume is
    held (its records, no pixels) one at a time. Their pixels are unchanged: a plane
    is read by its own frame and slice.

    Examples
    --------
    >>> from daskmri.record import VolumePlane
    >>> planes = [Record("P", "", k, "a.nii", volume=VolumePlane(0, k, unit_index=k,
    ...                  unit_size=3)) for k in range(3)]
    >>> out = []
    >>> kept = list(leave_out(planes, Exclusion("v.csv", frozenset({("P", 0)})), out))
    >>> [(r.instance, r.volume.unit_index, r.volume.unit_size) for r in kept]
    [(1, 0, 2), (2, 1, 2)]
    >>> [(p.instance, p.reason) for p in out]
    [(0, 'excluded by v.csv')]
    """
    keys = exclusion.keys
    for _, group in itertools.groupby(records, key=_unit_or_self):
        group = list(group)
        kept = [record for record in group if record.key not in keys]
        excluded += [excluded_row(r, exclusion) for r in group if r.key in keys]
        if len(kept) < len(group) and group[0].volume is not None:
            kept = [
                dataclasses.replace(
                    r, volume=dataclasses.replace(r.volume, unit_index=k, unit_size=len(kept))
                )
                for k, r in enumerate(kept)
            ]
        yield from kept


def exclude_from(scanned: Scan, exclusion: Exclusion | None) -> Scan:
    """A :func:`daskmri.scan` less the records ``exclusion`` names: their rows leave
    the table and come back among the problems, with the exclusion's reason, so that
    :func:`plan_chunks` reports them as dropped and never reads a pixel of theirs. A
    row the scan already found unbuildable keeps its own reason.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(16, 16))
    >>> table, problems = exclude_from(daskmri.scan(root),
    ...                                Exclusion("v.csv", frozenset({("SYN0001", 3)})))
    >>> table.instance.tolist(), [(p.instance, p.reason) for p in problems]
    ([2, 4], [(3, 'excluded by v.csv')])
    """
    table, problems = scanned
    if exclusion is None:
        return scanned
    ids = zip(table["patient_id"].tolist(), table["instance"].tolist(), strict=True)
    hit = np.array([(str(p), int(i)) in exclusion.keys for p, i in ids], dtype=bool)
    hit &= table["problem"].isna().to_numpy()
    gone = table[hit]
    rows = gone[["patient_id", "original_id", "instance", "image_path"]].itertuples(index=False)
    left = tuple(Problem(path, exclusion.reason, p, o, int(i)) for p, o, i, path in rows)
    exclusion.report_unmatched(len(left))
    kept = table[~hit].reset_index(drop=True)
    kept.attrs = dict(table.attrs)
    return Scan(kept, (*problems, *left))


def infer_shape(
    records: Iterable[Record],
    limits: Limits,
    tries: int = 50,
    *,
    spacing: tuple[float, float] | None = None,
) -> tuple[int, int]:
    """The image size of the first readable DICOM among the first ``tries`` records,
    resampled to ``spacing`` when given (from a DICOM that has a PixelSpacing).

    Raises
    ------
    DaskmriError
        If none of them gives one; the message says to pass ``shape=``.
    ReaderError
        If reading a header raises anything but a data error (a bug), naming the
        record.
    """
    errors = []
    for record in itertools.islice(records, tries):
        try:
            if record.volume is not None:
                rows, columns, own = plane_geometry(record)
            else:
                rows, columns, own = read_dicom_geometry(
                    record.image_path, limits=limits, fs=record.fs
                )
        except DATA_ERRORS as exc:  # the parse drops this record with the same reason
            errors.append(str(exc))
            continue
        except Exception as exc:  # a bug: raised naming the record
            raise ReaderError(record.describe(), exc) from exc
        if spacing is None:
            return rows, columns
        if own is None:
            errors.append(f"{record.image_path}: no PixelSpacing")
            continue
        try:
            frame = place((rows, columns), (rows, columns), spacing=own, target=spacing)
        except (OverflowError, ValueError):
            frame = None
        if frame is not None and 0 < np.prod(frame.scaled_shape) <= limits.max_pixels:
            return frame.scaled_shape
        errors.append(f"{record.image_path}: PixelSpacing {own} resamples to an unusable size")
    raise DaskmriError(
        f"could not read the image size from any of the first {len(errors)} images "
        f"(first error: {errors[0] if errors else 'no records'}); pass shape=(rows, columns)"
    )


# -- fingerprints ---------------------------------------------------------------


def _relative(path: str, root: str) -> str:
    # Scanned paths start with the root; os.path.relpath gives the same answer for far more
    # work per record (the scan's share: benchmarks/build.py --profile).
    prefix = root.rstrip(os.sep) + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)


def file_stat(path: str | None, root: str, fs: FileSystem = LOCAL) -> str:
    """A file's path relative to ``root``, and what identifies its version on ``fs``
    (size and modification time; on a store, size and ETag), as text."""
    if path is None:
        return "-"
    version = fs.stat(path)
    return f"{_relative(path, root)}:{'missing' if version is None else version}"


def _hash64(text: str) -> int:
    # Never 0: a fingerprint of 0 marks a slot whose identity was never written.
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1


def record_key(patient_id: str, instance: int) -> int:
    """A record's identity as one 64-bit number (its patient and instance)."""
    return _hash64(f"{patient_id}\0{int(instance)}")


def record_fingerprint(record: Record, root: str) -> int:
    """A record's identity (both ids and the instance) and the path (relative to
    ``root``), size and modification time of each of its files (for RTSTRUCT
    contours every structure set they come from, and which contours), as one 64-bit
    number. A touched, replaced or removed file, or a new pairing in the link file,
    changes it; moving the whole root does not.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> from daskmri.settings import Source
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(16, 16))
    >>> record = next(iter_plan(Source.of(root), problems=[]))
    >>> before = record_fingerprint(record, str(root))
    >>> import os; os.utime(record.image_path, ns=(0, 0))
    >>> record_fingerprint(record, str(root)) != before
    True
    """
    fs = record.fs
    files = "|".join(
        file_stat(path, root, fs)
        for path in (record.image_path, *(path for _, path in record.contours))
    )
    ids = f"{record.patient_id}\0{record.original_id}\0{record.instance}"
    if record.rtstruct is not None:
        # Every RTSTRUCT file the slice's contours come from (``contours`` names only
        # the first of each kind), and which contours: another slice's header can move
        # a contour without any of this slice's files changing. A record without
        # RTSTRUCT hashes as before, so that older stores stay fresh.
        picks = record.rtstruct.picks
        used = sorted({path for _, found in picks for path, _ in found})
        chosen = [(kind, [(_relative(p, root), i) for p, i in found]) for kind, found in picks]
        files += "|rt|" + "|".join(file_stat(path, root, fs) for path in used) + repr(chosen)
    if record.volume is not None:  # its frame, phase and label values, from Info.cfg or a CSV
        files += "|volume|" + repr(record.volume)
    return _hash64(f"{ids}\0{files}")


def fingerprint_layout(layout: Layout | VolumeLayout) -> dict:
    """What the input fingerprint hashes of a layout: its :meth:`~daskmri.Layout.to_dict`
    less ``contains``, a declaration for the QC (:mod:`daskmri.qc`) that changes no
    stored byte, so a new ``contains`` alone leaves a store fresh.

    Examples
    --------
    >>> from daskmri import SUNNYBROOK
    >>> "contains" in SUNNYBROOK.to_dict(), "contains" in fingerprint_layout(SUNNYBROOK)
    (True, False)
    """
    values = layout.to_dict()
    values.pop("contains", None)
    return values


def fingerprint_settings(source: Source, matched: Exclusion | None) -> dict:
    """The settings the input fingerprint hashes: the layout (less ``contains``), the
    labels and, when a record was left out, the excluded keys' fingerprint (not the
    file's name); a store built without ``exclude`` hashes as before."""
    settings = {"layout": fingerprint_layout(source.layout), "labels": source.labels}
    if matched is not None and matched.keys:
        settings["exclude"] = matched.fingerprint()
    return settings


class InputHash:
    """The fingerprint of everything a build reads, fed one record at a time."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def add(self, fingerprint: int) -> None:
        self._h.update(fingerprint.to_bytes(8, "little"))

    def hexdigest(self, *, settings: dict, problems: Sequence[dict], link_stat: str) -> str:
        h = self._h.copy()
        h.update(json.dumps(settings, sort_keys=True).encode())
        h.update(link_stat.encode())
        h.update(json.dumps(sorted(json.dumps(p, sort_keys=True) for p in problems)).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Inputs:
    """One streaming pass over a folder: a fingerprint per planned record, and one
    for everything. Compact (20 bytes a record) so that a million records fit; a new
    store's build keeps none of the per-record arrays (``keys``, ``fingerprints`` and
    ``units`` are None): the store holds them."""

    root: str
    keys: np.ndarray | None
    fingerprints: np.ndarray | None
    fingerprint: str
    scan_dropped: tuple[dict, ...]
    names: tuple[tuple[str, int], ...] | None = None
    #: The planned records themselves, when there were at most ``keep`` of them.
    records: tuple[Record, ...] | None = None
    #: Which unit each planned record belongs to: a number that changes where a unit
    #: (:attr:`~daskmri.record.Record.unit`) starts, and at every record read alone,
    #: so that an update can keep the added records of one volume together (4 bytes a
    #: record). None: every record is a unit of its own.
    units: np.ndarray | None = None
    #: The :func:`daskmri.dropped` rows of the records ``exclude=`` left out.
    excluded: tuple[dict, ...] = ()
    #: The exclusion, restricted to the records it left out (None without ``exclude=``).
    exclusion: Exclusion | None = None


#: Receives the planned records in batches with their fingerprints, as the scan goes.
Batches = Callable[[list[Record], list[int]], None]


def plan_inputs(
    source: Source,
    *,
    names: bool = False,
    sink: Batches | None = None,
    batch: int = 1 << 14,
    keep: int = 0,
    compact: bool = True,
) -> Inputs:
    """Scan the folder once, fingerprinting each record; ``sink`` gets the records
    in batches of ``batch`` (a new store writes their identities as the scan goes).
    With at most ``keep`` records, they are kept too (``Inputs.records``), so that a
    build of a small folder needs no second scan. Without ``compact``, no per-record
    array is kept either (``keys``, ``fingerprints`` and ``units`` are None; ``sink``
    gets the fingerprints), so that the client's memory does not grow with the
    folder."""
    root = source.root
    problems: list[Problem] = []
    excluded: list[Problem] = []
    keys, fingerprints = array("Q"), array("Q")
    digest = InputHash()
    found: list[tuple[str, int]] = []
    pending: list[Record] = []
    kept: list[Record] | None = [] if keep > 0 else None
    units, unit, number = array("I"), None, 0
    for record in iter_plan(source, problems=problems, excluded=excluded):
        if record.unit is None or record.unit != unit:
            number += 1
        unit = record.unit
        if compact:
            units.append(number & 0xFFFFFFFF)
        if kept is not None:
            kept.append(record)
            kept = kept if len(kept) <= keep else None  # too many: stream them again
        fingerprint = record_fingerprint(record, root)
        if compact:
            keys.append(record_key(record.patient_id, record.instance))
        fingerprints.append(fingerprint)
        digest.add(fingerprint)
        if names:
            found.append(record.key)
        if sink is not None:
            pending.append(record)
            if len(pending) == batch:
                sink(pending, fingerprints[-len(pending) :].tolist())
                pending = []
        if not compact and not pending:
            del fingerprints[:]  # the sink has them: nothing per record stays here
    if sink is not None and pending:
        sink(pending, fingerprints[-len(pending) :].tolist())
    dropped = tuple(p.row() for p in problems)
    matched = None
    if source.exclude is not None:
        matched = source.exclude.only((p.patient_id, p.instance) for p in excluded)
        source.exclude.report_unmatched(len(matched.keys))
    return Inputs(
        root=root,
        keys=np.array(keys, dtype=np.uint64) if compact else None,
        fingerprints=np.array(fingerprints, dtype=np.uint64) if compact else None,
        fingerprint=digest.hexdigest(
            settings=fingerprint_settings(source, matched),
            problems=dropped,
            link_stat=_link_stat(source),
        ),
        scan_dropped=dropped,
        names=tuple(found) if names else None,
        records=None if kept is None else tuple(kept),
        units=np.array(units, dtype=np.uint32) if compact else None,
        excluded=tuple(p.row() for p in excluded),
        exclusion=matched,
    )


def _link_stat(source: Source) -> str:
    """The link file's :func:`file_stat`; a volume layout has none."""
    link = getattr(source.layout, "link_file", None)
    return (
        "" if link is None else file_stat(os.path.join(source.root, link), source.root, source.fs)
    )


# -- slots of a store -------------------------------------------------------------


def aligned_slot(pos: int, count: int, chunk_size: int) -> int:
    """The slot where a unit of ``count`` records (a volume's planes, read at once)
    starts when the next free slot is ``pos``: ``pos`` when the unit fits in the
    rest of its chunk or ``pos`` starts a chunk, else the next chunk's first slot.
    So a unit that fits in a chunk lies in one chunk, and a larger one starts a
    chunk and spans as few as it can; the slots skipped are padding. A record read
    alone (``count`` 1) never moves.

    Examples
    --------
    >>> aligned_slot(5, 3, 8), aligned_slot(5, 4, 8), aligned_slot(5, 20, 8)
    (5, 8, 8)
    >>> aligned_slot(8, 20, 8), aligned_slot(7, 1, 8)
    (8, 7)
    """
    rest = chunk_size - pos % chunk_size
    return pos if count <= rest or rest == chunk_size else pos + rest


class SlotCursor:
    """Gives streamed records their slots from ``start`` on, each volume's records
    together where :func:`aligned_slot` puts them (the records of one unit arrive
    one after another, the first knowing how many there are:
    :attr:`~daskmri.record.VolumePlane.unit_size`).

    Examples
    --------
    >>> from daskmri.record import VolumePlane
    >>> def plane(path, k, n):
    ...     return Record("P", "", k, path, volume=VolumePlane(0, k, unit_index=k, unit_size=n))
    >>> cursor = SlotCursor(0, chunk_size=4)
    >>> [cursor.place(plane("a.nii", k, 3)) for k in range(3)]
    [0, 1, 2]
    >>> [cursor.place(plane("b.nii", k, 2)) for k in range(2)], cursor.pos
    ([4, 5], 6)
    """

    def __init__(self, start: int, *, chunk_size: int) -> None:
        self.pos, self.chunk_size = start, chunk_size
        self._unit: tuple | None = None

    def place(self, record: Record) -> int:
        """The slot of ``record``, the next one in the stream."""
        unit = record.unit
        if unit is None or unit != self._unit:
            left = (
                1 if record.volume is None else record.volume.unit_size - record.volume.unit_index
            )
            self.pos = aligned_slot(self.pos, max(1, left), self.chunk_size)
        self._unit = unit
        self.pos += 1
        return self.pos - 1


@dataclass(frozen=True)
class SlotPlan:
    """Where each planned record goes in a store of ``chunk_size`` slots a chunk.

    ``target[i]`` is the slot of planned record ``i``; ``parse[i]`` whether it must
    be parsed (its chunk runs); ``need[k]`` how many records chunk ``k`` waits for
    before it can run. New records get fresh slots from ``first_new`` on, in a new
    chunk, so that no chunk already written is touched; ``added`` lists them (the
    records of one volume placed by :func:`aligned_slot`, so slots may be skipped).
    """

    chunk_size: int
    n_slots: int
    first_new: int
    target: np.ndarray
    parse: np.ndarray
    need: np.ndarray
    added: np.ndarray

    @property
    def n_chunks(self) -> int:
        """Chunks that run."""
        return int((self.need > 0).sum())

    def is_new(self, slot: int) -> bool:
        return len(self.added) > 0 and slot >= self.first_new

    @functools.cached_property
    def _added_slots(self) -> np.ndarray:
        return self.target[self.added]  # increasing: added records keep their order

    def added_at(self, slot: int) -> int:
        """The planned record that new slot ``slot`` holds (``is_new(slot)``)."""
        return int(self.added[np.searchsorted(self._added_slots, slot)])


def plan_slots(
    reuse: np.ndarray,
    rerun: np.ndarray,
    *,
    n_slots: int,
    chunk_size: int,
    units: np.ndarray | None = None,
) -> SlotPlan:
    """Plan the slots of a store that has ``n_slots`` slots, given for each planned
    record the slot already holding it (``reuse``, -1 for none), the chunks whose
    task must run again (``rerun``) and which unit each record belongs to (``units``,
    as :attr:`Inputs.units`; None: each record alone).

    Examples
    --------
    Two records already in chunk 0 (done), one new: the new one opens chunk 1.

    >>> plan = plan_slots(np.array([0, 1, -1]), np.array([], int), n_slots=2, chunk_size=2)
    >>> plan.target.tolist(), plan.parse.tolist(), plan.need.tolist()
    ([0, 1, 2], [False, False, True], [0, 1])

    Three new records, one record and then a volume of two: the volume starts a chunk.

    >>> units = np.array([1, 2, 3, 3])
    >>> plan = plan_slots(np.array([0, -1, -1, -1]), np.array([], int), n_slots=1,
    ...                   chunk_size=2, units=units)
    >>> plan.target.tolist(), plan.n_slots, plan.need.tolist()
    ([0, 2, 4, 5], 6, [0, 1, 2])
    """
    added = np.flatnonzero(reuse < 0)
    first_new = -(-n_slots // chunk_size) * chunk_size if len(added) else n_slots
    target = np.asarray(reuse, dtype=np.int64).copy()
    units = None if units is None else units[added]
    target[added] = _added_slots(first_new, len(added), units, chunk_size)
    total = int(target[added[-1]]) + 1 if len(added) else first_new
    runs = np.zeros(-(-total // chunk_size), dtype=bool)
    runs[rerun] = True
    if len(added):
        runs[first_new // chunk_size :] = True
    parse = runs[target // chunk_size] if len(target) else np.zeros(0, dtype=bool)
    need = np.bincount(target[parse] // chunk_size, minlength=len(runs))
    return SlotPlan(chunk_size, total, first_new, target, parse, need, added)


def _added_slots(first: int, n: int, units: np.ndarray | None, chunk_size: int) -> np.ndarray:
    """The slots of ``n`` added records from ``first`` on, the added records of one
    unit (equal consecutive ``units``) placed together by :func:`aligned_slot`."""
    if units is None or n == 0:
        return first + np.arange(n)
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    counts = np.diff(np.r_[starts, n])
    if (counts == 1).all():  # records read alone (DICOM): contiguous, as they come
        return first + np.arange(n)
    slots = np.empty(n, dtype=np.int64)
    pos = first
    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        pos = aligned_slot(pos, count, chunk_size)
        slots[start : start + count] = pos + np.arange(count)
        pos += count
    return slots


def changed_during_build(root: str) -> DaskmriError:
    return DaskmriError(
        f"the files under {root} changed while the build was running; run it again "
        "(chunks already written are kept)"
    )


def fill_chunks(
    records: Iterable[Record], keys: np.ndarray, plan: SlotPlan, *, root: str
) -> Iterator[tuple[int, dict[int, Record]]]:
    """Gather the streamed ``records`` (the same folder as when ``keys`` were
    planned) into the chunks that run: yields ``(chunk, {slot: record})`` as soon as
    a chunk has all its records.

    Raises
    ------
    DaskmriError
        If the records are not those planned (the folder changed meanwhile).
    """
    gathering: dict[int, dict[int, Record]] = {}
    seen = 0
    for i, record in enumerate(records):
        seen = i + 1
        if i >= len(plan.target) or record_key(*record.key) != int(keys[i]):
            raise changed_during_build(root)
        if not plan.parse[i]:
            continue
        slot = int(plan.target[i])
        k = slot // plan.chunk_size
        chunk = gathering.setdefault(k, {})
        chunk[slot] = record
        if len(chunk) == plan.need[k]:
            yield k, gathering.pop(k)
    if gathering or seen != len(plan.target):
        raise changed_during_build(root)


def placed_chunks(
    records: Iterable[Record],
    *,
    chunk_size: int,
    n_slots: int,
    expected: Callable[[int, Record], bool],
    root: str,
) -> Iterator[tuple[int, dict[int, Record]]]:
    """Gather the streamed ``records`` of a new store into its chunks, placing them
    again as its plan did (:class:`SlotCursor` from slot 0): yields ``(chunk, {slot:
    record})`` in order as each chunk is complete. Holds one chunk, never the plan:
    ``expected(slot, record)`` says whether the store's slot names that record.

    Examples
    --------
    >>> records = [Record("P", "O", k, f"{k}.dcm") for k in range(5)]
    >>> chunks = placed_chunks(records, chunk_size=2, n_slots=5, expected=lambda s, r: True,
    ...                        root="/d")
    >>> [(k, sorted(chunk)) for k, chunk in chunks]
    [(0, [0, 1]), (1, [2, 3]), (2, [4])]

    Raises
    ------
    DaskmriError
        If the records are not those planned (the folder changed meanwhile).
    """
    cursor = SlotCursor(0, chunk_size=chunk_size)
    chunk: dict[int, Record] = {}
    for record in records:
        slot = cursor.place(record)
        if slot >= n_slots or not expected(slot, record):
            raise changed_during_build(root)
        if chunk and slot // chunk_size != next(iter(chunk)) // chunk_size:
            yield next(iter(chunk)) // chunk_size, chunk
            chunk = {}
        chunk[slot] = record
    if chunk:
        yield next(iter(chunk)) // chunk_size, chunk
    if cursor.pos != n_slots:
        raise changed_during_build(root)


def runs(rows: list[tuple[int, Record, int]]) -> Iterator[tuple[int, list[Record], list[int]]]:
    """Contiguous runs of ``(slot, record, fingerprint)`` as ``(start, records, fps)``.

    Examples
    --------
    >>> r = Record("P", "O", 1, None)
    >>> [(s, len(rs), fs) for s, rs, fs in runs([(5, r, 9), (3, r, 7), (4, r, 8)])]
    [(3, 3, [7, 8, 9])]
    """
    rows = sorted(rows, key=lambda row: row[0])
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0] != rows[end - 1][0] + 1:
            part = rows[start:end]
            yield part[0][0], [r for _, r, _ in part], [f for _, _, f in part]
            start = end
