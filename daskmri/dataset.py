"""Parse records in chunks with Dask and assemble the chunked ``xarray.Dataset``.

The plan (:func:`plan_chunks`) is pure: it splits the scan into chunks of
records. Running it is one Dask task per chunk (:func:`daskmri.parse.parse_chunk`),
which parses every record of its chunk, drops the ones that fail and reports why.
Only those small summaries travel to the client: a distributed cluster keeps the
pixels on its workers, and local worker processes write them into shared slots.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import xarray as xr

from . import __version__
from .cluster import check_scheduler, local_scheduler, resolve_client, run_tasks
from .dicom import read_dicom_shape
from .errors import DaskmriError, RecordError, StaleStoreError
from .layout import Layout, scan
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
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    records: list[Record] = []
    dropped_rows: list[dict] = [dict(p) for p in table.attrs.get("problems", [])]
    for row in table.itertuples(index=False):
        if row.problem is not None:
            dropped_rows.append(
                {
                    "patient_id": row.patient_id,
                    "original_id": row.original_id,
                    "instance": int(row.instance),
                    "path": row.icontour_path or row.ocontour_path or row.dicom_path,
                    "reason": row.problem,
                }
            )
            continue
        records.append(
            Record(
                row.patient_id,
                row.original_id,
                int(row.instance),
                row.dicom_path,
                row.icontour_path,
                row.ocontour_path,
            )
        )
    chunks = tuple(tuple(records[i : i + chunk_size]) for i in range(0, len(records), chunk_size))
    return ChunkPlan(chunks=chunks, dropped=tuple(dropped_rows))


def _infer_shape(plan: ChunkPlan, limits: Limits, tries: int = 50) -> tuple[int, int]:
    errors = []
    records = (record for chunk in plan.chunks for record in chunk)
    for record in itertools.islice(records, tries):
        try:
            return read_dicom_shape(record.dicom_path, limits=limits)
        except RecordError as exc:
            errors.append(str(exc))
    raise DaskmriError(
        f"could not read the image size from any of the first {len(errors)} DICOM files "
        f"(first error: {errors[0] if errors else 'no records'}); pass shape=(rows, columns)"
    )


def _bag(records: list[Record], chunk_size: int) -> db.Bag:
    """A bag of ``(slot, record)`` items, one partition per chunk.

    Built from its graph directly: ``db.from_sequence`` would hash every record on
    the client to name the bag (0.14 s per 2,000 records, growing with the dataset).
    """
    name = f"daskmri-records-{uuid.uuid4().hex}"
    items = list(enumerate(records))
    graph = {
        (name, k): items[start : start + chunk_size]
        for k, start in enumerate(range(0, len(items), chunk_size))
    }
    return db.Bag(graph, name, len(graph))


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
    limits = DEFAULT_LIMITS if limits is None else limits
    layout = Layout() if layout is None else layout
    table = scan(root, layout=layout, labels=labels)
    plan = plan_chunks(table, chunk_size=chunk_size)
    if plan.n_records and shape is None:
        shape = _infer_shape(plan, limits)
    shape = (0, 0) if shape is None else (int(shape[0]), int(shape[1]))
    if reader is None:
        reader = functools.partial(read_record, limits=limits, shape=shape)
    if client is not None and scheduler is not None:
        raise ValueError("pass either client= (a cluster) or scheduler= (local), not both")
    # An explicit local scheduler wins over a default client that happens to exist.
    client = resolve_client(client) if scheduler is None else None

    # Local worker processes write pixels straight into shared slots and send back only
    # summaries; in-process schedulers return arrays as they are (no copy either way);
    # a cluster keeps the pixels on its workers.
    slots = None
    if client is None and local_scheduler(scheduler, len(plan.chunks)) == "processes":
        slots = Slots.create(plan.n_records, shape)
    try:
        records = [r for chunk in plan.chunks for r in chunk]
        bag = _bag(records, chunk_size)
        # Unoptimised: the bag's partitions stay literal data, so each chunk is exactly
        # one task. Fusing would add an alias task per chunk for nothing.
        parsed = bag.map_partitions(parse_partition, shape, reader, slots)
        tasks = parsed.to_delayed(optimize_graph=False) if plan.chunks else []
        results = run_tasks(tasks, client=client, scheduler=scheduler, progress=progress)
        if client is not None:
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
        attrs={
            "title": "MRI slices and contour masks",
            "source": os.path.abspath(os.fspath(root)),
            "layout": json.dumps(layout.to_dict()),
            "labels": labels,
            "chunk_size": chunk_size,
            "created_by": f"daskmri {__version__}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dropped": json.dumps(dropped_rows),
        },
    )
    ds["image"].attrs.update(long_name="pixel value after the DICOM modality rescale")
    ds["icontour"].attrs.update(long_name="inside the inner (i) contour")
    ds["ocontour"].attrs.update(long_name="inside the outer (o) contour")
    if client is not None:
        from distributed import futures_of, wait

        # Persist the per-variable pieces, then drop the whole-chunk results: each
        # chunk's pixels are then held once, on the worker that parsed them.
        ds = client.persist(ds)
        wait(futures_of(ds))
        del results
    logger.info(
        "loaded %d records (%d dropped) from %s in %.2f s",
        ds.sizes["record"],
        len(dropped_rows),
        root,
        time.perf_counter() - started,
    )
    return ds


def dropped(ds: xr.Dataset) -> pd.DataFrame:
    """Every record that is not in ``ds``, with the file and the reason.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset from :func:`load_dataset`.

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
            "this dataset has no 'dropped' attribute: was it made by daskmri.load_dataset? "
            "(xarray operations with keep_attrs=False drop it)"
        )
    return dropped_table(json.loads(ds.attrs["dropped"]))


def dropped_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame.from_records(rows, columns=DROPPED_COLUMNS)
    table["instance"] = table["instance"].astype("Int64")
    return table


# -- building a Zarr store ------------------------------------------------------

MODES = ("resume", "update", "overwrite")


@dataclass(frozen=True)
class Inputs:
    """A scan turned into a plan, with the fingerprints a store keeps."""

    root: str
    layout: Layout
    labels: str
    plan: ChunkPlan
    records: tuple[Record, ...]
    keys: tuple[tuple[str, int], ...]
    fingerprints: np.ndarray
    fingerprint: str


def _plan_inputs(root, *, layout: Layout, labels: str, chunk_size: int) -> Inputs:
    from .store import _stat, input_fingerprint, record_fingerprints

    root = os.path.abspath(os.fspath(root))
    table = scan(root, layout=layout, labels=labels)
    plan = plan_chunks(table, chunk_size=chunk_size)
    records = tuple(r for chunk in plan.chunks for r in chunk)
    keys = tuple((r.patient_id, r.instance) for r in records)
    fingerprints = record_fingerprints(records, root)
    fingerprint = input_fingerprint(
        keys=keys,
        fingerprints=fingerprints,
        settings={"layout": layout.to_dict(), "labels": labels},
        problems=plan.dropped,
        link_stat=_stat(os.path.join(root, layout.link_file), root),
    )
    return Inputs(root, layout, labels, plan, records, keys, fingerprints, fingerprint)


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build` did. ``parsed_chunks`` ran in this call;
    ``reused_chunks`` were already complete in the store and were not parsed again."""

    store: str
    records: int
    dropped: int
    parsed_chunks: int
    reused_chunks: int
    parsed_records: int
    retired: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.records} records in {self.store} ({self.dropped} dropped); parsed "
            f"{self.parsed_chunks} chunk(s) ({self.parsed_records} records), reused "
            f"{self.reused_chunks}, in {self.seconds:.1f} s"
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
) -> BuildReport:
    """Parse a dataset folder into a Zarr store, written by the workers chunk by chunk.

    Each chunk task parses ``chunk_size`` records and writes them straight into
    their own region of the store (pixels never pass through the client), then a
    marker that the chunk is done. A build that is killed can be run again with
    the same arguments: chunks already done are not parsed again. The store is
    marked complete only at the very end; :func:`daskmri.open_dataset` refuses an
    unfinished one.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset folder.
    store : str or os.PathLike
        Local path or fsspec URL (``"s3://bucket/ds.zarr"``) of the Zarr store. On
        a cluster, every worker must be able to write there.
    layout, client, scheduler, chunk_size, labels, reader, limits, shape, progress
        As for :func:`daskmri.load_dataset`.
    mode : {"resume", "update", "overwrite"}
        ``"resume"`` (the default) creates the store, or finishes an unfinished
        build of the same inputs, or does nothing if it is complete and up to
        date; it refuses a store whose inputs changed (:class:`StaleStoreError`).
        ``"update"`` brings such a store up to date, parsing only the records
        whose files changed or appeared; their new versions are appended (see
        the README on record order). ``"overwrite"`` deletes the store and
        builds it again.
    compressor : {"zstd", "lz4", "none"}, optional
        For a new store; chosen by ``benchmarks/scale.py`` (``"zstd"``).
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    BuildReport
        Counts of records, drops and of chunks parsed and reused, and the time.

    Raises
    ------
    StaleStoreError
        ``mode="resume"`` on a store whose input files changed.
    StoreError
        If ``store`` holds something that is not a daskmri store.
    DaskmriError
        If the store was built with another ``chunk_size``, ``labels``, ``layout``
        or ``shape``.

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
    limits = DEFAULT_LIMITS if limits is None else limits
    layout = Layout() if layout is None else layout
    inputs = _plan_inputs(root, layout=layout, labels=labels, chunk_size=chunk_size)
    spec = zstore.StoreSpec.of(store, storage_options)
    if mode == "overwrite":
        spec.remove()

    if not spec.exists():
        if inputs.records and shape is None:
            shape = _infer_shape(inputs.plan, limits)
        shape = (0, 0) if shape is None else (int(shape[0]), int(shape[1]))
        zstore.create(
            spec,
            n_slots=len(inputs.records),
            chunk_size=chunk_size,
            shape=shape,
            compressor=zstore.DEFAULT_COMPRESSOR if compressor is None else compressor,
            attrs={
                "title": "MRI slices and contour masks",
                "source": inputs.root,
                "layout": json.dumps(layout.to_dict()),
                "labels": labels,
                "chunk_size": chunk_size,
                "shape": list(shape),
                "compressor": zstore.DEFAULT_COMPRESSOR if compressor is None else compressor,
                "created_by": f"daskmri {__version__}",
                "created": _now(),
                "input_fingerprint": inputs.fingerprint,
                "scan_dropped": json.dumps(list(inputs.plan.dropped)),
            },
        )
        zstore.write_slots(spec, 0, inputs.records, inputs.fingerprints)
    state = zstore.read_state(spec)
    attrs = state.attrs
    _check_settings(
        attrs, chunk_size=chunk_size, labels=labels, layout=layout, shape=shape, url=spec.url
    )
    shape = (int(attrs["shape"][0]), int(attrs["shape"][1]))
    diff = zstore.reconcile(state, inputs.keys, inputs.fingerprints)
    changed = not diff.unchanged or inputs.fingerprint != attrs.get("input_fingerprint")
    if changed and mode == "resume":
        raise StaleStoreError(
            f"{zstore.check(spec.url, inputs.root, storage_options=storage_options)} "
            "(or mode='overwrite' to rebuild it all)"
        )
    if not changed and attrs.get("complete"):
        return BuildReport(
            spec.url, int((state.status == zstore.OK).sum()), len(json.loads(attrs["dropped"])),
            0, len(state.markers), 0, 0, time.perf_counter() - started,
        )  # fmt: skip

    # From here the store is being changed: it must not look complete until the end.
    spec.group("r+").attrs.update({"complete": False})
    n_slots = state.n_slots
    slot_record: dict[int, Record] = {
        int(slot): inputs.records[i] for i, slot in enumerate(diff.reuse.tolist()) if slot >= 0
    }
    new = [inputs.records[i] for i in np.flatnonzero(diff.reuse < 0)]
    pad_start = n_slots
    if new:
        first = -(-n_slots // chunk_size) * chunk_size
        _grow(spec, first + len(new), chunk_size)
        zstore.write_slots(spec, first, new, inputs.fingerprints[np.flatnonzero(diff.reuse < 0)])
        slot_record |= {first + k: record for k, record in enumerate(new)}
        n_slots = first + len(new)
    chunks_to_run = sorted(
        set(diff.rerun.tolist()) | {s // chunk_size for s in slot_record if s >= pad_start}
    )
    items = []
    for k in chunks_to_run:
        lo, hi = k * chunk_size, min((k + 1) * chunk_size, n_slots)
        # Slots no record wants any more still get a placeholder, so that the chunk's
        # region is written whole; they are retired below.
        items.append([(s, slot_record.get(s) or _placeholder(state, s)) for s in range(lo, hi)])
    if reader is None:
        reader = functools.partial(read_record, limits=limits, shape=shape)
    client = resolve_client(client) if scheduler is None else None
    name = f"daskmri-store-{uuid.uuid4().hex}"
    bag = db.Bag({(name, j): part for j, part in enumerate(items)}, name, len(items))
    written = bag.map_partitions(zstore.write_partition, shape, reader, spec, chunk_size)
    tasks = written.to_delayed(optimize_graph=False) if items else []
    results = run_tasks(tasks, client=client, scheduler=scheduler, progress=progress)
    if client is not None:
        results = client.gather(results)
    parsed_records = sum(len(part) for part in items)

    state = zstore.read_state(spec)
    status = state.status.copy()
    status[diff.retire] = zstore.RETIRED
    status[pad_start:n_slots][state.patient_id[pad_start:n_slots] == ""] = zstore.RETIRED
    missing = [
        k
        for k in range(-(-n_slots // chunk_size))
        if k not in state.markers
        and (status[k * chunk_size : (k + 1) * chunk_size] != zstore.RETIRED).any()
    ]
    if missing:
        raise DaskmriError(
            f"chunks {missing[:10]} of {spec.url!r} were not written; run the build again"
        )
    spec.array("status")[:] = status
    spec.array("has_icontour")[:] = state.has_icontour
    spec.array("has_ocontour")[:] = state.has_ocontour
    state = dataclasses.replace(state, status=status)
    rows = zstore.dropped_rows(
        dataclasses.replace(
            state, attrs=state.attrs | {"scan_dropped": json.dumps(list(inputs.plan.dropped))}
        )
    )
    # Last: everything above is in place.
    spec.group("r+").attrs.update(
        {
            "scan_dropped": json.dumps(list(inputs.plan.dropped)),
            "dropped": json.dumps(rows),
            "input_fingerprint": inputs.fingerprint,
            "updated": _now(),
            "complete": True,
        }
    )
    report = BuildReport(
        spec.url,
        int((status == zstore.OK).sum()),
        len(rows),
        len(chunks_to_run),
        len(state.markers) - len(chunks_to_run),
        parsed_records,
        len(diff.retire),
        time.perf_counter() - started,
    )
    logger.info("%s", report)
    return report


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _placeholder(state, slot: int) -> Record:
    return Record(
        str(state.patient_id[slot]), str(state.original_id[slot]), int(state.instance[slot]), None
    )


def _grow(spec, n_slots: int, chunk_size: int) -> None:
    group = spec.group("r+")
    for name in ("image", "icontour", "ocontour"):
        array = group[name]
        array.resize((n_slots, *array.shape[1:]))
    for name in (
        "status",
        "has_icontour",
        "has_ocontour",
        "instance",
        "fingerprint",
        "patient_id",
        "original_id",
    ):
        group[name].resize((n_slots,))
    group["done"].resize((-(-n_slots // chunk_size),))
