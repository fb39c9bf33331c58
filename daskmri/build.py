"""Parse records in chunks with Dask and assemble the chunked ``xarray.Dataset``.

The plan (:func:`plan_chunks`) is pure: it splits the scan into chunks of
records. Running it is one Dask task per chunk (:func:`daskmri.parse.parse_chunk`),
which parses every record of its chunk, drops the ones that fail and reports why.
Only those small summaries travel to the client: a distributed cluster keeps the
pixels on its workers, and local worker processes write them into shared slots.
"""

from __future__ import annotations

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
from .errors import DaskmriError, RecordError
from .layout import Layout, scan
from .limits import DEFAULT_LIMITS, Limits
from .parse import ChunkResult, Parsed, Record, Slots, parse_partition, read_record

__all__ = ["ChunkPlan", "dropped", "load_dataset", "plan_chunks"]

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
    rows = json.loads(ds.attrs["dropped"])
    table = pd.DataFrame.from_records(rows, columns=DROPPED_COLUMNS)
    table["instance"] = table["instance"].astype("Int64")
    return table
