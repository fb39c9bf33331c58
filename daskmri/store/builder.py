"""Building a store: :func:`build` runs the pipeline (scan, plan, run) with Zarr
regions as the sink, and resumes or updates a store it made before.

The steps, each a function below: claim the store path and connect
(:func:`build`); open what is there (:func:`_existing`); pass 1, fingerprint every
record, creating a new store's slots as the scan goes (:class:`_NewStore`,
:func:`_build_new`), or plan the slots against what an existing store holds
(:func:`~daskmri.plan.plan_slots`); pass 2, stream the records again and run their
chunks in waves (:class:`_Waves`); fold the markers in, a block of slots at a time,
and mark the store complete (:func:`_finish`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compact import common_dtype
from ..dicom import read_slice_compact
from ..errors import DATA_ERRORS, DaskmriError, StaleStoreError
from ..execute import Executor, Isolation, client_for, executor_for, progress_bar
from ..layout import layout_from_dict
from ..limits import Limits
from ..plan import (
    Inputs,
    SlotCursor,
    SlotPlan,
    fill_chunks,
    fingerprint_layout,
    infer_shape,
    iter_plan,
    placed_chunks,
    plan_inputs,
    plan_slots,
    record_key,
)
from ..plan import runs as slot_runs
from ..record import Parsed, Placeholder, Record
from ..schema import now, provenance
from ..settings import Compute, Parsing, Source
from ..sources.dicom_contours import Layout
from ..sources.volumes import plane_dtype
from ..verdicts import Exclusion
from . import format as fmt
from .freshness import check
from .regions import ZarrRegions
from .spec import StoreSpec, claim
from .state import (
    Folded,
    SlotColumn,
    StoreState,
    block_slots,
    fold_store,
    read_state,
    reconcile,
    repair,
)

__all__ = ["MODES", "BuildReport", "build"]

logger = logging.getLogger(__name__)

MODES = ("resume", "update", "overwrite")

#: Up to this many records, the plan keeps them (about 0.5 KB each) and the build scans
#: the folder once; beyond, it streams the folder again. A new store's build then keeps
#: nothing per record (the store holds the slots' keys and fingerprints), so the
#: client's memory stays flat however large the folder is; adding to an existing store
#: keeps about 60 bytes a record, to match the records to its slots.
KEEP_RECORDS = 20_000

#: Records per batch of a new store's plan (pass 1), whose identities it hands on.
PLAN_BATCH = 1 << 14

#: Chunks per wave of tasks (at least; more on a larger cluster): enough to keep the
#: workers busy, few enough that the client holds a few thousand records at a time.
WAVE_CHUNKS = 64


@dataclass(frozen=True)
class BuildReport:
    """What one call of :func:`build` did, and how long it took.

    What :func:`build` did. ``parsed_chunks`` ran in this call;
    ``reused_chunks`` were already complete in the store and were not parsed again.
    ``isolated`` are the records that killed the worker process parsing them (now
    dropped), found in ``isolation_seconds``."""

    store: str
    records: int
    dropped: int
    parsed_chunks: int
    reused_chunks: int
    parsed_records: int
    retired: int
    seconds: float
    isolated: tuple[tuple[str, int], ...] = ()
    isolation_seconds: float = 0.0

    def __str__(self) -> str:
        killers = (
            f"; {len(self.isolated)} record(s) killed their worker and were isolated in "
            f"{self.isolation_seconds:.1f} s"
            if self.isolated
            else ""
        )
        return (
            f"{self.records} records in {self.store} ({self.dropped} dropped); parsed "
            f"{self.parsed_chunks} chunk(s) ({self.parsed_records} records), reused "
            f"{self.reused_chunks}, in {self.seconds:.1f} s{killers}"
        )


@dataclass(frozen=True)
class _Job:
    """One build's checked settings."""

    source: Source
    parsing: Parsing
    compute: Compute
    spec: StoreSpec
    mode: str
    compressor: str
    there: str
    started: float


def build(
    root: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    mode: str = "resume",
    layout: Layout | None = None,
    labels: str = "any",
    chunk_size: int = 64,
    shape: tuple[int, int] | None = None,
    fit: str = "drop",
    spacing: tuple[float, float] | None = None,
    limits: Limits | None = None,
    reader: Callable[[Record], Parsed] | None = None,
    client=None,
    scheduler: str | None = None,
    security=None,
    compressor: str | None = None,
    storage_options: dict | None = None,
    progress: bool = False,
    source_options: dict | None = None,
    on_error: str = "raise",
    exclude=None,
) -> BuildReport:
    """Parse a dataset folder into a Zarr store, written by the workers chunk by chunk.

    Each chunk task parses ``chunk_size`` records and writes them straight into
    their own region of the store (pixels never pass through the client), then a
    marker that the chunk is done. A build that is killed can be run again with
    the same arguments: chunks already done are not parsed again. The store is
    marked complete only at the very end; :func:`daskmri.open_dataset` refuses an
    unfinished one.

    It is :func:`daskmri.load_dataset`'s pipeline with another sink: the client
    streams the folder twice (a plan with fingerprints, then the tasks, in waves of
    a few dozen chunks, run by the same executors). Building a new store it keeps
    nothing per record (the store holds each slot's key and fingerprint, read back a
    block at a time), so its memory does not follow the dataset's size; resuming or
    updating an existing store, it keeps about 60 bytes a record to match the
    records to the store's slots.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset folder: a local path, or an fsspec URL (``s3://bucket/data``).
    store : str or os.PathLike
        Local path or fsspec URL (``"s3://bucket/ds.zarr"``) of the Zarr store. On
        a cluster, every worker must be able to write there.
    mode : {"resume", "update", "overwrite"}
        ``"resume"`` (the default) creates the store, or finishes an unfinished
        build of the same inputs, or does nothing if it is complete and up to
        date; it refuses a store whose inputs changed (:class:`StaleStoreError`).
        ``"update"`` brings such a store up to date, parsing only the records
        whose files changed or appeared; their new versions are appended (see
        the user guide's stores page on record order). ``"overwrite"`` deletes what daskmri made
        of the store (never other files) and builds it again.
    layout, labels, chunk_size, shape, fit, spacing, limits, reader, on_error
        What to read and how, as for :func:`daskmri.load_dataset` (checked the
        same way, by :mod:`daskmri.settings`).
    client, scheduler, security
        Where to run, as for :func:`daskmri.load_dataset`.
    compressor : {"blosc-zstd", "blosc-lz4", "zstd", "none"}, optional
        For a new store; ``"blosc-lz4"`` by default, chosen by measurement
        (``benchmarks/scale.py``).
    storage_options : dict, optional
        fsspec options for a store at a URL (the store's filesystem).
    progress : bool
        Show a progress bar (chunks done) on stderr.
    source_options : dict, optional
        fsspec options for a ``root`` at a URL (the dataset's filesystem): see
        :func:`load_dataset`.
    exclude : str, os.PathLike or daskmri.verdicts.Exclusion, optional
        Records to leave out, as for :func:`daskmri.load_dataset`: a ``verdicts.csv``
        with ``exclude`` in the ``verdict`` column of each record to leave out. They
        are never parsed, and ``daskmri.dropped(daskmri.open_dataset(store))`` lists
        them with the reason ``"excluded by <exclude>"``. The store's input
        fingerprint holds the excluded records (their keys, not the file's name), so
        a store built with one exclusion is stale for another, or for none, exactly
        as for changed files: ``"resume"`` refuses it (:class:`StaleStoreError`
        naming the records), ``"update"`` brings it to the new exclusion (records
        newly excluded leave the store, records no longer excluded are parsed and
        appended), ``"overwrite"`` rebuilds it. :func:`daskmri.check` reads the
        verdicts file again (the path the store was built with) to tell.

    Returns
    -------
    BuildReport
        Counts of records, drops and of chunks parsed and reused, and the time.

    Raises
    ------
    StaleStoreError
        ``mode="resume"`` on a store whose input files changed.
    StoreError
        If ``store`` is a file, a folder of other files or a Zarr store that daskmri
        did not make (whatever the ``mode``), or is, holds or lies inside ``root``.
        Nothing is written then.
    DaskmriError
        If the store was built with another ``chunk_size``, ``labels``, ``layout``
        or ``shape``, or the files changed while the build ran. A layout that
        differs only in ``contains`` (the QC's declaration, which changes no stored
        byte) is not another layout: the store keeps its records and takes the new
        declaration.
    FileNotFoundError, ValueError, TypeError
        If ``exclude`` is not a readable verdicts file, as for
        :func:`daskmri.load_dataset`; before anything is written.
    ReaderError
        If the reader raises anything but a data error, with ``on_error="raise"``;
        the chunks written so far stay, and the build resumes from them.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=8, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> print(daskmri.build(root, store, chunk_size=4, scheduler="sync"))  # doctest: +ELLIPSIS
    10 records in ... (0 dropped); parsed 3 chunk(s) (10 records), reused 0, in ... s
    >>> daskmri.build(root, store, chunk_size=4, scheduler="sync").parsed_chunks  # nothing to do
    0

    Leave out what a verdicts file excludes, in the same store:

    >>> import pathlib
    >>> verdicts = pathlib.Path(tempfile.mkdtemp()) / "verdicts.csv"
    >>> _ = verdicts.write_text("patient_id,instance,verdict\\nSYN0001,2,exclude\\n")
    >>> report = daskmri.build(root, store, chunk_size=4, scheduler="sync",
    ...                        exclude=verdicts, mode="update")
    >>> report.records, report.retired
    (9, 1)
    """
    started = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    source = Source.of(root, layout, labels, source_options, exclude=exclude)
    parsing = Parsing(
        chunk_size=chunk_size,
        limits=limits,
        shape=shape,
        reader=reader,
        fit=fit,
        spacing=spacing,
        on_error=on_error,
    )
    compute = Compute(client=client, scheduler=scheduler, security=security, progress=progress)
    compressor = fmt.DEFAULT_COMPRESSOR if compressor is None else compressor
    if compressor not in fmt.COMPRESSORS:
        raise ValueError(f"compressor must be one of {fmt.COMPRESSORS}, got {compressor!r}")
    spec = StoreSpec.of(store, storage_options)
    # Nothing is written (or connected to) before the store path is known to be safe:
    # absent, empty or a daskmri store, and not the dataset itself.
    there = claim(spec, root=source.root)
    job = _Job(source, parsing, compute, spec, mode, compressor, there, started)
    # A client made here from an address is closed when the build ends: nothing of
    # the result stays on the cluster. Its workers are checked before anything is
    # written.
    with (
        client_for(compute, source.root, keep=False, fs=source.fs) as (client, _),
        spec.reaching("write to"),
    ):
        # A key that may read but not write, or workers without the credentials,
        # fail here: one line, naming the fix.
        return _build(job, client)


def _build(job: _Job, client: Any) -> BuildReport:
    """:func:`build` once its arguments are checked and its client is connected."""
    attrs = _existing(job)
    if attrs is None:
        return _build_new(job, client)
    inputs = plan_inputs(job.source, keep=KEEP_RECORDS)
    state = read_state(job.spec)
    done = _up_to_date(job, state, inputs)
    if done is not None:
        return done
    # From here the store is being changed: it must not look complete until the end.
    job.spec.group("r+").attrs.update({"complete": False})
    diff = reconcile(state, inputs.fingerprints)
    slots = plan_slots(
        diff.reuse,
        diff.rerun,
        n_slots=state.n_slots,
        chunk_size=job.parsing.chunk_size,
        units=inputs.units,
    )
    if slots.n_slots > state.n_slots:
        fmt.resize(job.spec, slots.n_slots)
    reused = int(state.done.sum())
    named = np.zeros(slots.n_slots, dtype=bool)
    named[: state.n_slots] = state.fingerprint != 0
    del state  # the tables are folded again, a block at a time, at the end
    executor = executor_for(job.compute, client, slots.n_chunks)
    shape, dtype = _held(job)
    waves = _Waves(job, shape, executor, dtype=dtype, n_slots=slots.n_slots, named=named)
    records = inputs.records
    if records is None:  # a large folder: streamed again rather than held
        records = iter_plan(job.source, problems=[])
    chunks = fill_chunks(records, inputs.keys, slots, root=inputs.root)
    try:
        with progress_bar(slots.n_chunks, job.compute.progress) as bar:
            waves.run(_naming(chunks, slots, inputs, waves.new_rows), bar)
    finally:
        executor.close()
    return _end(job, client, inputs, diff.retire, waves, chunks=slots.n_chunks, reused=reused)


def _build_new(job: _Job, client: Any) -> BuildReport:
    """A new store: plan it (pass 1, which names every slot), then stream the records
    again and run every chunk (pass 2). Nothing per record stays on the client: pass 2
    places the records as pass 1 did and checks each against its slot's key, read from
    the store a block at a time."""
    new = _NewStore(job)
    inputs = _plan(job, new)
    executor = executor_for(job.compute, client, new.chunks)
    # The dtype guessed from the first record (:func:`_guess_dtype`), as pass 1 made it.
    shape, dtype = _held(job)
    waves = _Waves(job, shape, executor, dtype=dtype, n_slots=new.cursor.pos)
    records = inputs.records
    if records is None:  # a large folder: streamed again rather than held
        records = iter_plan(job.source, problems=[])
    size = job.parsing.chunk_size
    keys = SlotColumn(job.spec, "key", block=block_slots(size))
    chunks = placed_chunks(
        records,
        chunk_size=size,
        n_slots=new.cursor.pos,
        expected=lambda slot, record: keys[slot] == record_key(*record.key),
        root=inputs.root,
    )
    try:
        with progress_bar(new.chunks, job.compute.progress) as bar:
            waves.run(chunks, bar)
    finally:
        executor.close()
    return _end(job, client, inputs, None, waves, chunks=new.chunks, reused=0)


def _end(
    job: _Job,
    client: Any,
    inputs: Inputs,
    retire: np.ndarray | None,
    waves: _Waves,
    *,
    chunks: int,
    reused: int,
) -> BuildReport:
    """After pass 2 (of a new store or an existing one): check the markers, a block of
    slots at a time; when chunks needed wider pixels than the store holds, retype it
    and run every chunk again (as a resumed build of the existing store); otherwise
    :func:`_finish`."""
    checked = fold_store(job.spec, retire=retire, write=False)
    if _retyped(job, checked.retype) is not None:
        # Every chunk again, into the wider pixels: resumed (never overwritten again).
        mode = "resume" if job.mode == "overwrite" else job.mode
        return _build(dataclasses.replace(job, mode=mode), client)
    return _finish(job, inputs, retire, waves, checked, chunks=chunks, reused=reused)


def _held(job: _Job) -> tuple[tuple[int, int], np.dtype]:
    """The image shape and the pixels' dtype the store holds (its attributes)."""
    attrs = dict(job.spec.group("r").attrs)
    shape = attrs["shape"]
    return (int(shape[0]), int(shape[1])), fmt.pixels_dtype(attrs)


def _naming(
    chunks: Any, slots: SlotPlan, inputs: Inputs, rows: list[tuple[int, Record, int]]
) -> Any:
    """``chunks`` as they come, each new slot's identity added to ``rows`` (written by
    :class:`_Waves` before its pixels)."""
    for k, chunk in chunks:
        for slot, record in chunk.items():
            if slots.is_new(slot):
                i = slots.added_at(slot)
                rows.append((slot, record, int(inputs.fingerprints[i])))
        yield k, chunk


def _retyped(job: _Job, needed: frozenset[str]) -> str | None:
    """Retype the store's pixels when chunks needed a dtype it does not hold (their
    markers say ``retype``, gathered in ``needed``): to the dtype that holds them all
    (:func:`~daskmri.store.format.retype` clears every marker first). Returns it, or
    None when nothing needed it."""
    if not needed:
        return None
    held = fmt.pixels_dtype(fmt.read_attrs(job.spec))
    wider = common_dtype([held, *needed]).name
    logger.info(
        "%s: records need %s pixels, the store holds %s: retyping it to %s and parsing "
        "every chunk again",
        job.spec.shown,
        sorted(needed),
        held.name,
        wider,
    )
    fmt.retype(job.spec, wider)
    return wider


def _existing(job: _Job) -> dict | None:
    """The attributes of the daskmri store already at the path, or None when the
    build starts afresh (no store, ``mode="overwrite"``, or one with nothing kept)."""
    spec = job.spec
    if job.mode == "overwrite":
        fmt.remove(spec)
    attrs = fmt.read_attrs(spec) if spec.exists() else None
    if attrs is not None and (not attrs.get("planned") or attrs.get("shape") == [0, 0]):
        # Killed while planning, before anything was parsed, or built from a folder with
        # no records (so with no image size): nothing to keep, start again.
        fmt.remove(spec)
        return None
    if attrs is not None:
        repair(spec)
        _check_settings(attrs, job)
    return attrs


def _check_settings(attrs: dict, job: _Job) -> None:
    layout = job.source.layout
    try:
        stored = layout_from_dict(json.loads(attrs.get("layout", "{}")))
    except (TypeError, ValueError, KeyError):
        stored = None
    if stored is not None and fingerprint_layout(stored) == fingerprint_layout(layout):
        if stored != layout:  # only ``contains``, the QC's declaration: no stored byte changes
            logger.info("%s: the layout's contains= is now %s", job.spec.shown, layout.contains)
            job.spec.group("r+").attrs.update({"layout": json.dumps(layout.to_dict())})
    else:
        raise DaskmriError(
            f"{job.spec.shown!r} was built with another layout ({attrs.get('layout')}); pass the "
            "same layout to add to it, or mode='overwrite' to rebuild it"
        )
    wanted = {"labels": job.source.labels} | job.parsing.settings()
    if job.parsing.shape is not None:
        wanted["shape"] = list(job.parsing.shape)
    for key, value in wanted.items():
        if attrs.get(key) != value:
            raise DaskmriError(
                f"{job.spec.shown!r} was built with {key}={attrs.get(key)!r}, not {value!r}; "
                "pass the same value to add to it, or mode='overwrite' to rebuild it"
            )


class _NewStore:
    """Pass 1 for a new store: receives the planned records in batches, makes the
    store at the first batch (when the image size is known) and names their slots.

    The records of one volume go in as few chunks as they fit in
    (:class:`~daskmri.plan.SlotCursor`), so that one task reads each volume once;
    the slots skipped are padding, which no record ever takes (fingerprint 0)."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.cursor = SlotCursor(0, chunk_size=job.parsing.chunk_size)
        self.made = False
        #: The chunks that hold a record (and run).
        self.chunks = 0
        self.identities = _Identities(job.spec)

    def __call__(self, records: list[Record], fingerprints: list[int]) -> None:
        if not self.made:
            self._create(records)
        size = self.job.parsing.chunk_size
        rows = []
        for record, fingerprint in zip(records, fingerprints, strict=True):
            before = self.cursor.pos
            slot = self.cursor.place(record)
            # Slots only grow: a record opens a chunk when it is the first one in it.
            self.chunks += before == 0 or slot // size != (before - 1) // size
            rows.append((slot, record, fingerprint))
        fmt.resize(self.job.spec, self.cursor.pos)
        if rows:
            slots = np.array([slot for slot, _, _ in rows], dtype=np.int64)
            self.identities.add(slots, fmt.slot_values(records, fingerprints))

    def _create(self, records: list[Record]) -> None:
        job = self.job
        if job.there in ("absent", "empty"):
            # Again, just before the first write: files may have appeared meanwhile.
            claim(job.spec, root=job.source.root)
        shape = job.parsing.shape
        if shape is None:
            limits, spacing = job.parsing.limits, job.parsing.spacing
            shape = infer_shape(records, limits, spacing=spacing) if records else (0, 0)
        attrs = provenance(job.source, job.parsing)
        attrs |= {"shape": list(shape), "compressor": job.compressor}
        attrs["pixels_dtype"] = _guess_dtype(job, records, shape) if records else "float32"
        fmt.create(
            job.spec,
            chunk_size=job.parsing.chunk_size,
            shape=shape,
            compressor=job.compressor,
            attrs=attrs,
        )
        self.made = True


#: How many of the first records :func:`_guess_dtype` reads, at most.
GUESS_TRIES = 8


def _guess_dtype(job: _Job, records: list[Record], shape: tuple[int, int]) -> str:
    """The pixels' dtype a new store starts with: that of the first record whose image
    header reads (a DICOM's stored integers, checked against its float32 image; a
    volume's declared voxel type), so that a dataset of one integer type is never
    retyped; float32 for a custom reader or ``spacing=`` (their records are float32),
    or when none of the first records reads. A record found later that does not fit
    retypes the store once (:func:`_retyped`)."""
    parsing = job.parsing
    if parsing.reader is not None or parsing.spacing is not None:
        return "float32"
    for record in records[:GUESS_TRIES]:
        try:
            if record.volume is not None:
                return plane_dtype(record).name
            _, compact, _ = read_slice_compact(
                record.image_path, limits=parsing.limits, fs=record.fs
            )
            return compact.pixels.dtype.name
        except DATA_ERRORS:  # the build drops this record, with the reason
            continue
    return "float32"


class _Identities:
    """The slot identities of a new store (:func:`~daskmri.store.format.slot_values`),
    gathered a table chunk at a time (:data:`~daskmri.store.format.TABLE_CHUNK` slots)
    and written whole: writing a part of a table chunk reads and decodes the rest of
    it first, a peak of memory that grew with the records already planned."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec, self.size, self.lo = spec, fmt.TABLE_CHUNK, 0
        self.parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def add(self, slots: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """The values of records at ``slots`` (increasing, after those added before)."""
        while len(slots):
            end = self.lo + self.size
            n = int(np.searchsorted(slots, end))
            if n:
                self.parts.append((slots[:n], {k: v[:n] for k, v in values.items()}))
            if n == len(slots):
                return
            self.flush(end)
            slots, values = slots[n:], {k: v[n:] for k, v in values.items()}

    def flush(self, stop: int) -> None:
        """Write slots from the table chunk's first up to ``stop``, padding (no record)
        with the fill values, and start the next table chunk from ``stop``."""
        if self.parts and stop > self.lo:
            dense = {}
            for name, first in self.parts[0][1].items():
                column = np.full(stop - self.lo, "" if first.dtype == object else 0, first.dtype)
                for slots, values in self.parts:
                    column[slots - self.lo] = values[name]
                dense[name] = column
            fmt.write_values(self.spec, self.lo, dense)
        self.parts, self.lo = [], stop


def _plan(job: _Job, new: _NewStore) -> Inputs:
    """Pass 1 of a new store: fingerprint every record and name its slot (``new``);
    no per-record array stays on the client."""
    inputs = plan_inputs(job.source, sink=new, batch=PLAN_BATCH, keep=KEEP_RECORDS, compact=False)
    if not new.made:  # no records at all
        new([], [])
    new.identities.flush(new.cursor.pos)
    job.spec.group("r+").attrs.update(
        {
            "input_fingerprint": inputs.fingerprint,
            "scan_dropped": json.dumps(list(inputs.scan_dropped)),
            "planned": True,
        }
    )
    return inputs


def _up_to_date(job: _Job, state: StoreState, inputs: Inputs) -> BuildReport | None:
    """The report when there is nothing to do; raises when ``mode="resume"`` meets
    changed inputs."""
    attrs = state.attrs
    same_inputs = inputs.fingerprint == attrs.get("input_fingerprint")
    if not same_inputs and job.mode == "resume":
        options = dict(job.spec.storage_options)
        source_options = dict(job.source.fs.options) or None
        freshness = check(
            job.spec.url,
            inputs.root,
            storage_options=options,
            source_options=source_options,
            exclude=job.source.exclude,
        )
        raise StaleStoreError(f"{freshness} (or mode='overwrite' to rebuild it all)")
    if not (same_inputs and attrs.get("complete")):
        return None
    _follow_exclusion(job, attrs, inputs)
    ok = int((state.status == fmt.OK).sum())
    dropped = len(json.loads(attrs["dropped"]))
    seconds = time.perf_counter() - job.started
    return BuildReport(job.spec.shown, ok, dropped, 0, int(state.done.sum()), 0, 0, seconds)


def _follow_exclusion(job: _Job, attrs: dict, inputs: Inputs) -> None:
    """Record the verdicts file of an up-to-date store's build as the store's: the same
    excluded keys from another file (renamed, moved), so that :func:`check` reads that
    one again and the reasons name it. Metadata only; a store built without
    ``exclude`` that excludes nothing stays as it is."""
    built = json.loads(attrs.get("exclude") or "null")
    given = _exclusion_attr(job.source.exclude, inputs.exclusion)
    if built == given or (built is None and not inputs.excluded):
        return
    old, new = (built or {}).get("source"), (given or {}).get("source")
    rows = json.loads(attrs.get("dropped", "[]"))
    for row in rows:
        if old is not None and new is not None and row["reason"] == f"excluded by {old}":
            row["reason"] = f"excluded by {new}"
    job.spec.group("r+").attrs.update({"exclude": json.dumps(given), "dropped": json.dumps(rows)})


class _Waves:
    """Pass 2: run the chunks that must run (streamed, as they are gathered) in waves
    on the executor, writing each chunk to its store region, of a store of
    ``n_slots`` slots. ``named`` says which slots have an identity in the store (None:
    a new store, where only padding lacks a record)."""

    def __init__(
        self,
        job: _Job,
        shape: tuple[int, int],
        executor: Executor,
        *,
        dtype: np.dtype,
        n_slots: int,
        named: np.ndarray | None = None,
    ) -> None:
        self.job, self.executor, self.n_slots, self.named = job, executor, n_slots, named
        self.sink = ZarrRegions(
            job.spec,
            shape,
            job.parsing.chunk_size,
            fit=job.parsing.fit,
            kinds=job.source.layout.kinds,
            dtype=dtype,
        )
        self.reader = job.parsing.reader_for(shape)
        self.size = max(WAVE_CHUNKS, 4 * executor.parallelism)
        self.wave: list[list[tuple[int, Record]]] = []
        self.new_rows: list[tuple[int, Record, int]] = []
        self.parsed_records = 0
        self.isolation = Isolation()

    def run(self, chunks: Any, bar: Any) -> None:
        """Run ``chunks``, ``(chunk, {slot: record})`` in slot order, a wave at a time."""
        part: list[tuple[int, Record]] = []
        for k, chunk in chunks:
            items = self._items(k, chunk)
            if _continues(part, items):
                # A volume larger than a chunk spans consecutive chunks: one task
                # parses them all, reading it once (a wave never splits them).
                part += items
                continue
            if part:
                self.wave.append(part)
            part = items
            if len(self.wave) >= self.size:
                self._flush(bar)
        if part:
            self.wave.append(part)
        self._flush(bar)

    def _flush(self, bar: Any) -> None:
        if not self.wave:
            return
        # The identities of new slots go in before their pixels.
        for start, records, fingerprints in slot_runs(self.new_rows):
            fmt.write_slots(self.job.spec, start, records, fingerprints)
        self.new_rows.clear()
        _, found = self.executor.run(self.sink.task, self.wave, self.reader, progress=bar)
        # The bar counts chunks, the executors tasks: a task of a volume's several chunks
        # ticks once.
        size = self.job.parsing.chunk_size
        merged = sum(-(-len(part) // size) - 1 for part in self.wave)
        if merged:
            bar.update(merged)
        self.isolation += found
        self.parsed_records += sum(
            not isinstance(record, Placeholder) for part in self.wave for _, record in part
        )
        self.wave = []

    def _items(self, k: int, records: dict[int, Record]) -> list[tuple[int, Record]]:
        """A chunk's ``(slot, record)`` items over its whole region. Slots no record
        wants any more (an update) and padding get a placeholder, retired afterwards,
        so that the region is written whole."""
        size = self.job.parsing.chunk_size
        lo, hi = k * size, min((k + 1) * size, self.n_slots)
        missing = [slot for slot in range(lo, hi) if slot not in records]
        if self.named is not None and any(self.named[missing]):
            # Retired records keep their identity; reading it costs the client a round
            # trip per array on an object store, so padding alone is never read.
            ids = [self.job.spec.array(n)[lo:hi] for n in ("patient_id", "original_id", "instance")]
            for slot in missing:
                j = slot - lo
                records[slot] = Placeholder(str(ids[0][j]), str(ids[1][j]), int(ids[2][j]), None)
        for slot in missing:
            records.setdefault(slot, Placeholder("", "", 0, None))
        return [(slot, records[slot]) for slot in range(lo, hi)]


def _continues(part: list[tuple[int, Record]], items: list[tuple[int, Record]]) -> bool:
    """Whether chunk ``items`` follows ``part`` with the same volume across the boundary:
    the next slot, and the first record in the unit of ``part``'s last."""
    if not part or items[0][0] != part[-1][0] + 1:
        return False
    unit = part[-1][1].unit
    return unit is not None and items[0][1].unit == unit


def _exclusion_attr(given: Exclusion | None, matched: Exclusion | None) -> dict | None:
    """What a store keeps of its ``exclude=``: the name as given (the reasons' text),
    the file's absolute path, for :func:`daskmri.check` to read again (None for an
    :class:`~daskmri.verdicts.Exclusion` that is no file), and the keys it left out.

    Examples
    --------
    >>> e = Exclusion("no/such.csv", frozenset({("P1", 3), ("P2", 1)}))
    >>> _exclusion_attr(e, e.only([("P1", 3)]))
    {'source': 'no/such.csv', 'path': None, 'keys': [['P1', 3]]}
    >>> _exclusion_attr(None, None) is None
    True
    """
    if given is None:
        return None
    path = os.path.abspath(given.source) if os.path.isfile(given.source) else None
    keys = sorted(matched.keys) if matched is not None else []
    return {"source": given.source, "path": path, "keys": [list(key) for key in keys]}


def _finish(
    job: _Job,
    inputs: Inputs,
    retire: np.ndarray | None,
    waves: _Waves,
    checked: Folded,
    *,
    chunks: int,
    reused: int,
) -> BuildReport:
    """Fold the markers in, retire what no record wants, then mark the store complete.
    First checked (``checked``, :func:`_end`), then written, a block of slots at a time."""
    spec = job.spec
    missing = checked.missing
    if missing:
        raise DaskmriError(
            f"chunks {missing} of {spec.shown!r} were not written; run the build again"
        )
    folded = fold_store(spec, retire=retire)
    rows = [*inputs.scan_dropped, *inputs.excluded, *folded.dropped]
    spec.group("r+").attrs.update(
        {
            "scan_dropped": json.dumps(list(inputs.scan_dropped)),
            "exclude": json.dumps(_exclusion_attr(job.source.exclude, inputs.exclusion)),
            "dropped": json.dumps(rows),
            "input_fingerprint": inputs.fingerprint,
            "updated": now(),
            "build_id": uuid.uuid4().hex,
            "complete": True,  # last: everything above is in place
        }
    )
    report = BuildReport(
        spec.shown,
        folded.ok,
        len(rows),
        chunks,
        reused,
        waves.parsed_records,
        0 if retire is None else len(retire),
        time.perf_counter() - job.started,
        waves.isolation.records,
        waves.isolation.seconds,
    )
    logger.info("%s", report)
    return report
