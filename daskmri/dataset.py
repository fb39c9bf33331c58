"""Parse records in chunks with Dask and assemble the chunked ``xarray.Dataset``.

The plan (:func:`plan_chunks`) is pure: it splits the scan into chunks of
records. Running it is one Dask task per chunk (:func:`daskmri.parse.parse_chunk`),
which parses every record of its chunk, drops the ones that fail and reports why.
Only those small summaries travel to the client: a distributed cluster keeps the
pixels on its workers, and local worker processes write them into shared slots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import xarray as xr

from . import __version__
from .cluster import (
    Isolation,
    ProcessWorkers,
    Progress,
    check_scheduler,
    check_workers,
    connect,
    isolate_crashes,
    local_scheduler,
    resolve_client,
    run_tasks,
)
from .dicom import read_dicom_shape
from .errors import DaskmriError, RecordError, StaleStoreError
from .layout import Layout, iter_records, scan
from .limits import DEFAULT_LIMITS, Limits
from .parse import ChunkResult, Parsed, Record, Slots, parse_partition, read_record

__all__ = ["BuildReport", "ChunkPlan", "build", "dropped", "load_dataset", "plan_chunks"]

logger = logging.getLogger(__name__)

DROPPED_COLUMNS = ["patient_id", "original_id", "instance", "path", "reason"]


@dataclass(frozen=True)
class ChunkPlan:
    """What :func:`load_dataset` will run: records in chunks, and records
    already known to be unbuildable (``dropped``, from the scan)."""

    chunks: tuple[tuple[Record, ...], ...]
    dropped: tuple[dict, ...] = field(default=())

    @property
    def n_records(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


def plan_chunks(table: pd.DataFrame, *, chunk_size: int = 64) -> ChunkPlan:
    """Split a :func:`daskmri.scan` table into chunks of ``chunk_size`` records.

    Records the scan already found broken (``problem`` set) and the scan's own
    problems go to ``dropped`` and are never parsed.

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
    records: list[Record] = []
    dropped_rows: list[dict] = [dict(p) for p in table.attrs.get("problems", [])]
    for row in table.itertuples(index=False):
        record = _plan_row(row._asdict(), dropped_rows)
        if record is not None:
            records.append(record)
    chunks = tuple(tuple(records[i : i + chunk_size]) for i in range(0, len(records), chunk_size))
    return ChunkPlan(chunks=chunks, dropped=tuple(dropped_rows))


def check_chunk_size(chunk_size: int) -> None:
    """Raise ``ValueError`` unless ``chunk_size`` is a positive int."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _infer_shape(records: Iterable[Record], limits: Limits, tries: int = 50) -> tuple[int, int]:
    errors = []
    for record in itertools.islice(records, tries):
        try:
            return read_dicom_shape(record.dicom_path, limits=limits)
        except RecordError as exc:
            errors.append(str(exc))
    raise DaskmriError(
        f"could not read the image size from any of the first {len(errors)} DICOM files "
        f"(first error: {errors[0] if errors else 'no records'}); pass shape=(rows, columns)"
    )


def _bag(parts: list[list[tuple[int, Record]]]) -> db.Bag:
    """A bag of ``(slot, record)`` items, one partition per chunk.

    Built from its graph directly: ``db.from_sequence`` would hash every record on
    the client to name the bag (0.14 s per 2,000 records, growing with the dataset).
    """
    name = f"daskmri-records-{uuid.uuid4().hex}"
    return db.Bag({(name, k): part for k, part in enumerate(parts)}, name, len(parts))


def _wrap(array: np.ndarray) -> da.Array:
    """A one-chunk dask array over ``array`` itself. ``da.from_array`` would copy the
    array (a second full copy of the dataset) and hashing it for a name costs as much."""
    name = f"daskmri-chunk-{uuid.uuid4().hex}"
    return da.Array(
        {(name, 0, 0, 0): array}, name, chunks=tuple((n,) for n in array.shape), dtype=array.dtype
    )


def _first_summary(chunk: list[ChunkResult]) -> ChunkResult:
    return chunk[0].summary()


def _field(chunk: list[ChunkResult], name: str) -> np.ndarray:
    return getattr(chunk[0], name)


def load_dataset(
    root: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    client=None,
    scheduler: str | None = None,
    chunk_size: int = 64,
    labels: str = "any",
    reader: Callable[[Record], Parsed] | None = None,
    limits: Limits | None = None,
    shape: tuple[int, int] | None = None,
    progress: bool = False,
    security=None,
) -> xr.Dataset:
    """Parse a dataset folder into a chunked ``xarray.Dataset`` of images and masks.

    The scan becomes a ``dask.bag`` with one partition per ``chunk_size``
    records, so the graph has about ``records / chunk_size`` tasks. Each task
    parses its records; a record that fails is dropped and reported by
    :func:`dropped`, and never fails the build.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset folder.
    layout : Layout, optional
        File names and patterns; default Sunnybrook.
    client : None, distributed.Client or str
        Where to run. A client or a scheduler address runs on that cluster and the
        pixels stay there (the result is persisted on the workers). None uses the
        current default client if there is one (unless ``scheduler`` is given), else
        a local scheduler.
    scheduler : {"sync", "threads", "processes"}, optional
        Local scheduler when there is no client. The default, ``"processes"``,
        is the fast one: parsing is pure-Python pydicom work that holds the GIL,
        so threads would run it one at a time. (A script using it needs the usual
        ``if __name__ == "__main__":`` guard.)
    chunk_size : int
        Records per chunk (and per task).
    labels : {"any", "i", "o", "all"}
        Which slices to keep; see :func:`daskmri.scan`.
    reader : callable, optional
        ``reader(record) -> (image, icontour_mask | None, ocontour_mask | None)``,
        replacing :func:`read_record` (to stub, count or change parsing). It must be
        picklable for the process and distributed schedulers.
    limits : Limits, optional
        Bounds for the default reader.
    shape : (rows, columns), optional
        Image size; by default read from the header of the first readable DICOM.
        Slices of another size are dropped.
    progress : bool
        Show a progress bar while parsing.
    security : distributed.Security, optional
        TLS settings when ``client`` is a ``tls://`` address.

    Returns
    -------
    xarray.Dataset
        ``image`` (float32), ``icontour``, ``ocontour`` (bool) on
        ``(record, y, x)``, chunked along ``record`` with known chunk sizes, plus
        ``has_icontour``, ``has_ocontour`` and the coordinates ``patient_id``,
        ``original_id``, ``instance``. Chunks are ``chunk_size`` records, less the
        records dropped from them.

    Raises
    ------
    LayoutError
        If ``root`` is not a dataset in ``layout``.
    DaskmriError
        If no DICOM gives an image size (and ``shape`` is not given), or the
        scheduler address cannot be reached.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=8, shape=(32, 32))
    >>> ds = daskmri.load_dataset(root, chunk_size=4, scheduler="sync")
    >>> ds.sizes["record"], ds.image.chunks[0]
    (10, (4, 4, 2))
    >>> len(daskmri.dropped(ds))
    0
    """
    started = time.perf_counter()
    check_scheduler(scheduler)
    if client is not None and scheduler is not None:
        raise ValueError("pass either client= (a cluster) or scheduler= (local), not both")
    check_chunk_size(chunk_size)
    # The cluster first: an address that is wrong fails before a long scan.
    # An explicit local scheduler wins over a default client that happens to exist.
    client = resolve_client(client, security=security) if scheduler is None else None
    if client is not None:
        check_workers(client, os.path.abspath(os.fspath(root)))
    limits = DEFAULT_LIMITS if limits is None else limits
    layout = Layout() if layout is None else layout
    table = scan(root, layout=layout, labels=labels)
    plan = plan_chunks(table, chunk_size=chunk_size)
    if plan.n_records and shape is None:
        shape = _infer_shape((r for chunk in plan.chunks for r in chunk), limits)
    shape = (0, 0) if shape is None else (int(shape[0]), int(shape[1]))
    if reader is None:
        reader = functools.partial(read_record, limits=limits, shape=shape)

    # Local worker processes write pixels straight into shared slots and send back only
    # summaries; in-process schedulers return arrays as they are (no copy either way);
    # a cluster keeps the pixels on its workers.
    slots = None
    local = None if client is not None else local_scheduler(scheduler, len(plan.chunks))
    if local == "processes":
        slots = Slots.create(plan.n_records, shape)
    records = [r for chunk in plan.chunks for r in chunk]
    items = list(enumerate(records))
    parts = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    try:
        if local == "processes":
            # Worker processes of our own, so that one dying drops only what killed it.
            bar = Progress(len(parts)) if progress else None
            try:
                with ProcessWorkers() as workers:
                    results, isolation = workers.run(
                        functools.partial(parse_partition, shape=shape, slots=slots),
                        parts,
                        reader,
                        progress=bar,
                    )
            finally:
                if bar is not None:
                    bar.close()
        else:
            bag = _bag(parts)
            # Unoptimised: the bag's partitions stay literal data, so each chunk is
            # exactly one task. Fusing would add an alias task per chunk for nothing.
            parsed = bag.map_partitions(parse_partition, shape, reader, slots)
            tasks = parsed.to_delayed(optimize_graph=False) if plan.chunks else []
            # On a cluster, a bar that advances as chunks finish: Dask's own would block
            # without the bound that isolate_crashes puts on waiting.
            bar = Progress(len(tasks)) if progress and client is not None else progress
            results = run_tasks(tasks, client=client, scheduler=local, progress=bar)
            isolation = Isolation()
        if client is not None:

            def again(part, skipping):
                one = _bag([part]).map_partitions(parse_partition, shape, skipping, None)
                return one.to_delayed(optimize_graph=False)[0]

            try:
                results, isolation = isolate_crashes(client, results, parts, reader, again)
            finally:
                if isinstance(bar, Progress):
                    bar.close()
            summaries = client.gather(client.map(_first_summary, results))
        else:
            summaries = [r[0] for r in results]
        views = slots.map() if slots is not None else None
    finally:
        if slots is not None:
            slots.unlink()

    pieces: dict[str, list] = {"image": [], "icontour": [], "ocontour": []}
    dtypes = {"image": np.float32, "icontour": bool, "ocontour": bool}
    meta: dict[str, list] = {k: [] for k in ("patient_id", "original_id", "instance")}
    has_i, has_o = [], []
    dropped_rows = list(plan.dropped)
    start = 0
    for chunk, summary, result in zip(plan.chunks, summaries, results, strict=True):
        first, start = start, start + len(chunk)
        dropped_rows.extend(summary.dropped)
        n = len(summary.kept)
        for k in summary.kept:
            meta["patient_id"].append(chunk[k].patient_id)
            meta["original_id"].append(chunk[k].original_id)
            meta["instance"].append(chunk[k].instance)
        has_i.append(summary.has_icontour)
        has_o.append(summary.has_ocontour)
        if n == 0:
            continue
        for name in pieces:
            if client is not None:
                value = dask.delayed(_field)(result, name)
                pieces[name].append(da.from_delayed(value, (n, *shape), dtypes[name]))
            elif views is not None:
                view = views[("image", "icontour", "ocontour").index(name)][first:start]
                # Slots of dropped records are skipped by a copy; otherwise no copy at all.
                pieces[name].append(_wrap(view if n == len(chunk) else view[summary.kept]))
            else:
                pieces[name].append(_wrap(getattr(result[0], name)))
    arrays = {
        name: da.concatenate(parts) if parts else da.zeros((0, *shape), dtypes[name], chunks=-1)
        for name, parts in pieces.items()
    }
    ds = xr.Dataset(
        {name: (("record", "y", "x"), array) for name, array in arrays.items()}
        | {
            "has_icontour": ("record", np.concatenate(has_i) if has_i else np.zeros(0, bool)),
            "has_ocontour": ("record", np.concatenate(has_o) if has_o else np.zeros(0, bool)),
        },
        coords={
            "patient_id": ("record", np.array(meta["patient_id"], dtype=str)),
            "original_id": ("record", np.array(meta["original_id"], dtype=str)),
            "instance": ("record", np.array(meta["instance"], dtype=np.int64)),
        },
        attrs=_provenance(root, layout=layout, labels=labels, chunk_size=chunk_size)
        | {"dropped": json.dumps(dropped_rows)},
    )
    ds["image"].attrs.update(long_name="pixel value after the DICOM modality rescale")
    ds["icontour"].attrs.update(long_name="inside the inner (i) contour")
    ds["ocontour"].attrs.update(long_name="inside the outer (o) contour")
    if client is not None:
        from distributed import futures_of, wait

        # Persist the per-variable pieces, then drop the whole-chunk results: each
        # chunk's pixels are then held once, on the worker that parsed them.
        ds = client.persist(ds)
        # As the current client: wait() would otherwise look for a default one, and
        # the caller's client need not be the default.
        with client.as_current():
            wait(futures_of(ds))
        del results
    logger.info(
        "loaded %d records (%d dropped, %d isolated as killers in %.1f s) from %s in %.2f s",
        ds.sizes["record"],
        len(dropped_rows),
        len(isolation.records),
        isolation.seconds,
        root,
        time.perf_counter() - started,
    )
    return ds


def dropped(ds: xr.Dataset) -> pd.DataFrame:
    """Every record that is not in ``ds``, with the file and the reason.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset from :func:`load_dataset` or :func:`daskmri.open_dataset`.

    Returns
    -------
    pandas.DataFrame
        Columns ``patient_id``, ``original_id``, ``instance``, ``path``, ``reason``.

    Raises
    ------
    ValueError
        If ``ds`` was not made by daskmri (no ``dropped`` attribute).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> (root / "dicoms" / "SYN0001" / "2.dcm").write_bytes(b"not a dicom")
    11
    >>> ds = daskmri.load_dataset(root, scheduler="sync")
    >>> daskmri.dropped(ds)[["instance", "reason"]].values.tolist()
    [[2, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"]]
    """
    if "dropped" not in ds.attrs:
        raise ValueError(
            "this dataset has no 'dropped' attribute: was it made by daskmri.load_dataset "
            "or daskmri.open_dataset? "
            "(xarray operations with keep_attrs=False drop it)"
        )
    return dropped_table(json.loads(ds.attrs["dropped"]))


def dropped_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame.from_records(rows, columns=DROPPED_COLUMNS)
    table["instance"] = table["instance"].astype("Int64")
    return table


# -- building a Zarr store ------------------------------------------------------

MODES = ("resume", "update", "overwrite")


def iter_plan(
    root: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    labels: str = "any",
    problems: list[dict],
) -> Iterator[Record]:
    """The records to parse, in scan order, one at a time. Everything the scan found
    unbuildable goes to ``problems`` as :func:`dropped` rows."""
    for row in iter_records(root, layout=layout, labels=labels, problems=problems):
        record = _plan_row(row, problems)
        if record is not None:
            yield record


def _plan_row(row: dict, dropped: list[dict]) -> Record | None:
    """A scan row as a record to parse, or, when the scan found it unbuildable, None
    and a :func:`dropped` row appended to ``dropped``."""
    if row["problem"] is not None:
        dropped.append(
            {
                "patient_id": row["patient_id"],
                "original_id": row["original_id"],
                "instance": int(row["instance"]),
                "path": row["icontour_path"] or row["ocontour_path"] or row["dicom_path"],
                "reason": row["problem"],
            }
        )
        return None
    return Record(
        row["patient_id"],
        row["original_id"],
        int(row["instance"]),
        row["dicom_path"],
        row["icontour_path"],
        row["ocontour_path"],
    )


@dataclass(frozen=True)
class Inputs:
    """One streaming pass over a folder: a fingerprint per planned record, and one
    for everything. Compact (16 bytes a record) so that a million records fit."""

    root: str
    keys: np.ndarray
    fingerprints: np.ndarray
    fingerprint: str
    scan_dropped: tuple[dict, ...]
    names: tuple[tuple[str, int], ...] | None = None


def _plan_inputs(
    root,
    *,
    layout: Layout,
    labels: str,
    names: bool = False,
    sink: Callable[[list[Record], list[int]], None] | None = None,
    batch: int = 1 << 14,
) -> Inputs:
    """Scan ``root`` once, fingerprinting each record; ``sink`` gets the records in
    batches (to write their identities into a new store as the scan goes)."""
    from array import array

    from .store import InputHash, _stat, record_fingerprint, record_key

    root = os.path.abspath(os.fspath(root))
    problems: list[dict] = []
    keys, fingerprints = array("Q"), array("Q")
    digest = InputHash()
    found: list[tuple[str, int]] = []
    records: list[Record] = []
    for record in iter_plan(root, layout=layout, labels=labels, problems=problems):
        fingerprint = record_fingerprint(record, root)
        keys.append(record_key(record.patient_id, record.instance))
        fingerprints.append(fingerprint)
        digest.add(fingerprint)
        if names:
            found.append((record.patient_id, record.instance))
        if sink is not None:
            records.append(record)
            if len(records) == batch:
                sink(records, fingerprints[-len(records) :].tolist())
                records = []
    if sink is not None and records:
        sink(records, fingerprints[-len(records) :].tolist())
    return Inputs(
        root=root,
        keys=np.array(keys, dtype=np.uint64),
        fingerprints=np.array(fingerprints, dtype=np.uint64),
        fingerprint=digest.hexdigest(
            settings={"layout": layout.to_dict(), "labels": labels},
            problems=problems,
            link_stat=_stat(os.path.join(root, layout.link_file), root),
        ),
        scan_dropped=tuple(problems),
        names=tuple(found) if names else None,
    )


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build` did. ``parsed_chunks`` ran in this call;
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


def _check_settings(attrs: dict, *, chunk_size, labels, layout: Layout, shape, url) -> None:
    wanted = {
        "chunk_size": chunk_size,
        "labels": labels,
        "layout": json.dumps(layout.to_dict()),
    }
    if shape is not None:
        wanted["shape"] = [int(shape[0]), int(shape[1])]
    for key, value in wanted.items():
        if attrs.get(key) != value:
            raise DaskmriError(
                f"{url!r} was built with {key}={attrs.get(key)!r}, not {value!r}; pass the "
                "same value to add to it, or mode='overwrite' to rebuild it"
            )


def _changed_during_build(root) -> DaskmriError:
    return DaskmriError(
        f"the files under {root} changed while the build was running; run it again "
        "(chunks already written are kept)"
    )


def build(
    root: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    client=None,
    scheduler: str | None = None,
    chunk_size: int = 64,
    labels: str = "any",
    mode: str = "resume",
    reader: Callable[[Record], Parsed] | None = None,
    limits: Limits | None = None,
    shape: tuple[int, int] | None = None,
    compressor: str | None = None,
    storage_options: dict | None = None,
    progress: bool = False,
    security=None,
) -> BuildReport:
    """Parse a dataset folder into a Zarr store, written by the workers chunk by chunk.

    Each chunk task parses ``chunk_size`` records and writes them straight into
    their own region of the store (pixels never pass through the client), then a
    marker that the chunk is done. A build that is killed can be run again with
    the same arguments: chunks already done are not parsed again. The store is
    marked complete only at the very end; :func:`daskmri.open_dataset` refuses an
    unfinished one.

    The client streams the folder twice (a plan, then the tasks, in waves of a few
    dozen chunks) and keeps about 16 bytes per record, so its memory does not
    follow the dataset's size.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset folder.
    store : str or os.PathLike
        Local path or fsspec URL (``"s3://bucket/ds.zarr"``) of the Zarr store. On
        a cluster, every worker must be able to write there.
    layout, client, scheduler, chunk_size, labels, reader, limits, shape
        As for :func:`daskmri.load_dataset`.
    mode : {"resume", "update", "overwrite"}
        ``"resume"`` (the default) creates the store, or finishes an unfinished
        build of the same inputs, or does nothing if it is complete and up to
        date; it refuses a store whose inputs changed (:class:`StaleStoreError`).
        ``"update"`` brings such a store up to date, parsing only the records
        whose files changed or appeared; their new versions are appended (see
        the README on record order). ``"overwrite"`` deletes what daskmri made
        of the store (never other files) and builds it again.
    compressor : {"blosc-zstd", "blosc-lz4", "zstd", "none"}, optional
        For a new store; ``"blosc-zstd"`` by default, chosen by measurement
        (``benchmarks/scale.py``).
    storage_options : dict, optional
        fsspec options for a URL.
    progress : bool
        Show a progress bar (chunks done) on stderr.
    security : distributed.Security, optional
        TLS settings when ``client`` is a ``tls://`` address.

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
        or ``shape``, or the files changed while the build ran.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=8, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> print(daskmri.build(root, store, chunk_size=4, scheduler="sync"))  # doctest: +ELLIPSIS
    10 records in ... (0 dropped); parsed 3 chunk(s) (10 records), reused 0, in ... s
    >>> daskmri.build(root, store, chunk_size=4, scheduler="sync").parsed_chunks  # nothing to do
    0
    """
    from . import store as zstore

    started = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_scheduler(scheduler)
    if client is not None and scheduler is not None:
        raise ValueError("pass either client= (a cluster) or scheduler= (local), not both")
    check_chunk_size(chunk_size)
    compressor = zstore.DEFAULT_COMPRESSOR if compressor is None else compressor
    if compressor not in zstore.COMPRESSORS:
        raise ValueError(f"compressor must be one of {zstore.COMPRESSORS}, got {compressor!r}")
    # Nothing is written (or connected to) before the store path is known to be safe:
    # absent, empty or a daskmri store, and not the dataset itself.
    there = zstore.claim(zstore.StoreSpec.of(store, storage_options), root=root)
    # A client made here from an address is closed when the build ends: nothing of
    # the result stays on the cluster. Its workers are checked before anything is
    # written.
    local_only = contextlib.nullcontext(None)
    with connect(client, security=security) if scheduler is None else local_only as client:
        if client is not None:
            check_workers(client, os.path.abspath(os.fspath(root)))
        return _build(
            root, store, layout=layout, client=client, scheduler=scheduler,
            chunk_size=chunk_size, labels=labels, mode=mode, reader=reader, limits=limits,
            shape=shape, compressor=compressor, storage_options=storage_options,
            progress=progress, started=started, there=there,
        )  # fmt: skip


def _build(
    root, store, *, layout, client, scheduler, chunk_size, labels, mode, reader, limits, shape,
    compressor, storage_options, progress, started, there,
) -> BuildReport:  # fmt: skip
    """:func:`build` once its arguments are checked and its client is connected."""
    from . import store as zstore

    limits = DEFAULT_LIMITS if limits is None else limits
    layout = Layout() if layout is None else layout
    spec = zstore.StoreSpec.of(store, storage_options)
    if mode == "overwrite":
        spec.remove()
    attrs = zstore.read_attrs(spec) if spec.exists() else None
    if attrs is not None and (not attrs.get("planned") or attrs.get("shape") == [0, 0]):
        # Killed while planning, before anything was parsed, or built from a folder with
        # no records (so with no image size): nothing to keep, start again.
        spec.remove()
        attrs = None
    if attrs is not None:
        zstore.repair(spec)
    if attrs is not None:
        _check_settings(
            attrs, chunk_size=chunk_size, labels=labels, layout=layout, shape=shape, url=spec.url
        )

    # Pass 1: fingerprint every record; a new store gets its slots as the scan goes.
    new_store: dict = {}

    def create(records: list[Record], fingerprints: list[int]) -> None:
        if not new_store:
            if there in ("absent", "empty"):
                # Again, just before the first write: files may have appeared meanwhile.
                zstore.claim(spec, root=root)
            if shape is not None:
                size = shape
            else:
                size = _infer_shape(records, limits) if records else (0, 0)
            new_store["shape"] = (int(size[0]), int(size[1]))
            new_store["n"] = 0
            zstore.create(
                spec,
                chunk_size=chunk_size,
                shape=new_store["shape"],
                compressor=compressor,
                attrs=_provenance(root, layout=layout, labels=labels, chunk_size=chunk_size)
                | {"shape": list(new_store["shape"]), "compressor": compressor},
            )
        n = new_store["n"]
        zstore.resize(spec, n + len(records))
        zstore.write_slots(spec, n, records, fingerprints)
        new_store["n"] = n + len(records)

    fresh = attrs is None
    inputs = _plan_inputs(root, layout=layout, labels=labels, sink=create if fresh else None)
    if fresh:
        if not new_store:  # no records at all
            create([], [])
        spec.group("r+").attrs.update(
            {
                "input_fingerprint": inputs.fingerprint,
                "scan_dropped": json.dumps(list(inputs.scan_dropped)),
                "planned": True,
            }
        )
    state = zstore.read_state(spec)
    attrs = state.attrs
    shape = (int(attrs["shape"][0]), int(attrs["shape"][1]))
    reused = int(state.done.sum())
    same_inputs = inputs.fingerprint == attrs.get("input_fingerprint")
    if not same_inputs and mode == "resume":
        raise StaleStoreError(
            f"{zstore.check(spec.url, inputs.root, storage_options=storage_options)} "
            "(or mode='overwrite' to rebuild it all)"
        )
    if same_inputs and attrs.get("complete"):
        return BuildReport(
            spec.url, int((state.status == zstore.OK).sum()), len(json.loads(attrs["dropped"])),
            0, reused, 0, 0, time.perf_counter() - started,
        )  # fmt: skip

    # From here the store is being changed: it must not look complete until the end.
    spec.group("r+").attrs.update({"complete": False})
    diff = zstore.reconcile(state, inputs.fingerprints)
    added = np.flatnonzero(diff.reuse < 0)
    first_new = -(-state.n_slots // chunk_size) * chunk_size if len(added) else state.n_slots
    n_slots = first_new + len(added)
    if n_slots > state.n_slots:
        zstore.resize(spec, n_slots)
    target = diff.reuse.copy()
    target[added] = first_new + np.arange(len(added))
    rerun = np.zeros(-(-n_slots // chunk_size), dtype=bool)
    rerun[diff.rerun] = True
    if len(added):
        rerun[first_new // chunk_size :] = True
    parse = rerun[target // chunk_size] if len(target) else np.zeros(0, dtype=bool)
    need = np.bincount(target[parse] // chunk_size, minlength=len(rerun))
    n_chunks = int((need > 0).sum())

    # Pass 2: stream the records again and run their chunks in waves.
    if reader is None:
        reader = functools.partial(read_record, limits=limits, shape=shape)
    local = None if client is not None else local_scheduler(scheduler, n_chunks)
    workers = ProcessWorkers() if local == "processes" else None
    isolation = Isolation()
    if client is not None:
        wave_size = max(WAVE_CHUNKS, 4 * sum(client.nthreads().values()))
    else:
        wave_size = max(WAVE_CHUNKS, 4 * (os.cpu_count() or 1))
    bar = Progress(n_chunks) if progress else False
    wave: list[list[tuple[int, Record]]] = []
    new_rows: list[tuple[int, Record, int]] = []
    parsed_records = 0

    def run_wave() -> None:
        nonlocal parsed_records, isolation
        if not wave:
            return
        # The identities of new slots go in before their pixels.
        for start, records, fingerprints in _runs(new_rows):
            zstore.write_slots(spec, start, records, fingerprints)
        new_rows.clear()
        if workers is not None:
            task = functools.partial(
                zstore.write_partition, shape=shape, spec=spec, chunk_size=chunk_size
            )
            _, found = workers.run(task, wave, reader, progress=bar or None)
        else:

            def tasks(parts, reader):
                written = _bag(parts).map_partitions(
                    zstore.write_partition, shape, reader, spec, chunk_size
                )
                return written.to_delayed(optimize_graph=False)

            results = run_tasks(tasks(wave, reader), client=client, scheduler=local, progress=bar)
            found = Isolation()
            if client is not None:

                def again(part, skipping):
                    return tasks([part], skipping)[0]

                _, found = isolate_crashes(client, results, wave, reader, again)
        isolation += found
        parsed_records += sum(len(part) for part in wave)
        wave.clear()

    buffers: dict[int, dict[int, Record]] = {}
    try:
        seen = 0
        for record in iter_plan(root, layout=layout, labels=labels, problems=[]):
            i, seen = seen, seen + 1
            key = zstore.record_key(record.patient_id, record.instance)
            if i >= len(target) or key != int(inputs.keys[i]):
                raise _changed_during_build(inputs.root)
            if not parse[i]:
                continue
            slot = int(target[i])
            k = slot // chunk_size
            if slot >= first_new and len(added):
                new_rows.append((slot, record, int(inputs.fingerprints[i])))
            chunk = buffers.setdefault(k, {})
            chunk[slot] = record
            if len(chunk) == need[k]:
                wave.append(_chunk_items(spec, k, buffers.pop(k), n_slots, chunk_size))
                if len(wave) >= wave_size:
                    run_wave()
        if buffers or seen != len(target):
            raise _changed_during_build(inputs.root)
        run_wave()
    finally:
        if workers is not None:
            workers.close()
        if bar:
            bar.close()

    # Fold the markers in, retire what no record wants, then mark the store complete.
    state = zstore.read_state(spec)
    status = state.status.copy()
    status[diff.retire] = zstore.RETIRED
    status[state.fingerprint == 0] = zstore.RETIRED  # padding: slots that never had a record
    missing = np.flatnonzero((need > 0) & ~state.done)
    if len(missing):
        raise DaskmriError(
            f"chunks {missing[:10].tolist()} of {spec.url!r} were not written; run the build again"
        )
    spec.array("status")[:] = status
    spec.array("has_icontour")[:] = state.has_icontour
    spec.array("has_ocontour")[:] = state.has_ocontour
    state = dataclasses.replace(state, status=status)
    rows = zstore.dropped_rows(state, inputs.scan_dropped)
    spec.group("r+").attrs.update(
        {
            "scan_dropped": json.dumps(list(inputs.scan_dropped)),
            "dropped": json.dumps(rows),
            "input_fingerprint": inputs.fingerprint,
            "updated": _now(),
            "build_id": uuid.uuid4().hex,
            "complete": True,  # last: everything above is in place
        }
    )
    report = BuildReport(
        spec.url,
        int((status == zstore.OK).sum()),
        len(rows),
        n_chunks,
        reused,
        parsed_records,
        len(diff.retire),
        time.perf_counter() - started,
        isolation.records,
        isolation.seconds,
    )
    logger.info("%s", report)
    return report


#: Chunks per wave of tasks (at least; more on a larger cluster): enough to keep the
#: workers busy, few enough that the client holds a few thousand records at a time.
WAVE_CHUNKS = 64


def _provenance(root, *, layout: Layout, labels: str, chunk_size: int) -> dict:
    """The attributes that say where a dataset came from, in memory or in a store."""
    return {
        "title": "MRI slices and contour masks",
        "source": os.path.abspath(os.fspath(root)),
        "layout": json.dumps(layout.to_dict()),
        "labels": labels,
        "chunk_size": chunk_size,
        "created_by": f"daskmri {__version__}",
        "created": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _runs(rows: list[tuple[int, Record, int]]):
    """Contiguous runs of ``(slot, record, fingerprint)`` as ``(start, records, fps)``."""
    rows = sorted(rows, key=lambda row: row[0])
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0] != rows[end - 1][0] + 1:
            part = rows[start:end]
            yield part[0][0], [r for _, r, _ in part], [f for _, _, f in part]
            start = end


def _chunk_items(spec, k: int, records: dict[int, Record], n_slots: int, chunk_size: int):
    """A chunk's ``(slot, record)`` items over its whole region. Slots no record
    wants any more (an update) get a placeholder, retired afterwards, so that the
    region is written whole."""
    lo, hi = k * chunk_size, min((k + 1) * chunk_size, n_slots)
    if len(records) < hi - lo:
        ids = [spec.array(name)[lo:hi] for name in ("patient_id", "original_id", "instance")]
        for slot in range(lo, hi):
            if slot not in records:
                j = slot - lo
                records[slot] = Record(str(ids[0][j]), str(ids[1][j]), int(ids[2][j]), None)
    return [(slot, records[slot]) for slot in range(lo, hi)]
