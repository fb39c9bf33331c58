"""Parse records in chunks with Dask and assemble the chunked ``xarray.Dataset``.

The plan (:func:`plan_chunks`) is pure: it splits the scan into chunks of
records. Running it is one Dask task per chunk (:func:`parse_chunk`), which
parses every record of its chunk, drops the ones that fail and returns the
survivors stacked, with the reasons for the rest. Only those small summaries
travel to the client; with a distributed client the pixels stay on the workers.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import xarray as xr

from . import __version__
from .cluster import check_scheduler, resolve_client, run_tasks
from .contours import polygon_mask, read_contour
from .dicom import read_dicom, read_dicom_shape
from .errors import DaskmriError, RecordError
from .layout import Layout, scan
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["Record", "dropped", "load_dataset", "parse_chunk", "plan_chunks", "read_record"]

logger = logging.getLogger(__name__)

DROPPED_COLUMNS = ["patient_id", "original_id", "instance", "path", "reason"]

#: What a reader returns: float32 image and the inner/outer masks (None when the
#: record has no such contour).
Parsed = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


@dataclass(frozen=True, slots=True)
class Record:
    """One image slice and its contour files: a row of :func:`daskmri.scan`."""

    patient_id: str
    original_id: str
    instance: int
    dicom_path: str | None
    icontour_path: str | None = None
    ocontour_path: str | None = None


def read_record(
    record: Record, *, limits: Limits = DEFAULT_LIMITS, shape: tuple[int, int] | None = None
) -> Parsed:
    """The default reader: one record's pixels and masks, read from its files.

    Parameters
    ----------
    record : Record
        The files of one slice.
    limits : Limits
        Bounds on what may be read and allocated.
    shape : (rows, columns), optional
        The dataset's image size: an image of another size fails before its
        contours are read (so the reason names the size, not a contour).

    Returns
    -------
    (image, icontour, ocontour)
        float32 image after the modality rescale; a boolean mask per contour, or
        None where the record has no such contour.

    Raises
    ------
    RecordError
        For any bad file; the build drops the record and reports the message.

    Examples
    --------
    Wrap it to observe or alter parsing, then pass ``reader=`` to
    :func:`load_dataset`:

    >>> def noisy_reader(record):
    ...     print("parsing", record.instance)
    ...     return read_record(record)
    """
    if record.dicom_path is None:
        raise RecordError("", f"instance {record.instance} has contours but no DICOM")
    image = read_dicom(record.dicom_path, limits=limits)
    if shape is not None and image.shape != shape:
        raise _shape_error(record.dicom_path, image.shape, shape)
    masks = []
    for path in (record.icontour_path, record.ocontour_path):
        if path is None:
            masks.append(None)
            continue
        points = read_contour(path, shape=image.shape, limits=limits)
        masks.append(polygon_mask(points, image.shape))
    return image, masks[0], masks[1]


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


@dataclass
class ChunkResult:
    """What one chunk task returns: the survivors stacked, and why the rest failed."""

    image: np.ndarray
    icontour: np.ndarray
    ocontour: np.ndarray
    kept: np.ndarray
    has_icontour: np.ndarray
    has_ocontour: np.ndarray
    dropped: list[dict]

    def summary(self) -> ChunkResult:
        """The same result without pixels: what travels to the client."""
        empty = np.empty((0, 0, 0), dtype=np.float32)
        return ChunkResult(
            empty, empty, empty, self.kept, self.has_icontour, self.has_ocontour, self.dropped
        )


def _shape_error(path: str | None, got: tuple[int, ...], want: tuple[int, int]) -> RecordError:
    return RecordError(
        path or "",
        f"image is {'x'.join(map(str, got))} but this dataset's images are "
        f"{want[0]}x{want[1]}; build differently sized series separately or pass shape=",
    )


def _drop(record: Record, exc: BaseException) -> dict:
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


def parse_chunk(
    records: Sequence[Record],
    *,
    shape: tuple[int, int],
    reader: Callable[[Record], Parsed],
) -> ChunkResult:
    """Parse one chunk of records; a record that fails is dropped, never raised.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> plan = plan_chunks(daskmri.scan(root))
    >>> result = parse_chunk(plan.chunks[0], shape=(32, 32), reader=read_record)
    >>> result.image.shape, result.dropped
    ((3, 32, 32), [])
    """
    n = len(records)
    # np.empty: pages are only touched as records fill them.
    image = np.empty((n, *shape), dtype=np.float32)
    icontour = np.zeros((n, *shape), dtype=bool)
    ocontour = np.zeros((n, *shape), dtype=bool)
    has_i = np.zeros(n, dtype=bool)
    has_o = np.zeros(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    failures: list[dict] = []
    for k, record in enumerate(records):
        try:
            pixels, inner, outer = reader(record)
            if pixels.shape != shape:
                raise _shape_error(record.dicom_path, pixels.shape, shape)
            for mask, name in ((inner, "icontour"), (outer, "ocontour")):
                if mask is not None and mask.shape != shape:
                    raise RecordError(
                        record.dicom_path, f"reader returned a {name} mask of shape {mask.shape}"
                    )
            image[k] = pixels
            if inner is not None:
                icontour[k], has_i[k] = inner, True
            if outer is not None:
                ocontour[k], has_o[k] = outer, True
            ok[k] = True
        except Exception as exc:  # one bad record must never fail the chunk
            failures.append(_drop(record, exc))
    kept = np.flatnonzero(ok)
    if len(kept) < n:
        image, icontour, ocontour = image[kept], icontour[kept], ocontour[kept]
    return ChunkResult(image, icontour, ocontour, kept, has_i[kept], has_o[kept], failures)


def _parse_partition(records: list[Record], shape, reader) -> list[ChunkResult]:
    return [parse_chunk(records, shape=shape, reader=reader)]


def _infer_shape(plan: ChunkPlan, limits: Limits, tries: int = 50) -> tuple[int, int]:
    errors = []
    for chunk in plan.chunks:
        for record in chunk:
            try:
                return read_dicom_shape(record.dicom_path, limits=limits)
            except RecordError as exc:
                errors.append(str(exc))
            if len(errors) >= tries:
                break
        if len(errors) >= tries:
            break
    raise DaskmriError(
        f"could not read the image size from any of the first {len(errors)} DICOM files "
        f"(first error: {errors[0] if errors else 'no records'}); pass shape=(rows, columns)"
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

    bag = db.from_sequence([r for chunk in plan.chunks for r in chunk], partition_size=chunk_size)
    # Unoptimised: the bag's partitions stay literal data, so each chunk is exactly one
    # task. Fusing would add an alias task per chunk for nothing.
    parsed = bag.map_partitions(_parse_partition, shape, reader)
    tasks = parsed.to_delayed(optimize_graph=False) if plan.chunks else []
    results = run_tasks(tasks, client=client, scheduler=scheduler, progress=progress)
    if client is not None:
        summaries = client.gather(client.map(_first_summary, results))
    else:
        summaries = [r[0] for r in results]

    pieces: dict[str, list] = {"image": [], "icontour": [], "ocontour": []}
    dtypes = {"image": np.float32, "icontour": bool, "ocontour": bool}
    meta: dict[str, list] = {k: [] for k in ("patient_id", "original_id", "instance")}
    has_i, has_o = [], []
    dropped_rows = list(plan.dropped)
    for chunk, summary, result in zip(plan.chunks, summaries, results, strict=True):
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
            else:
                array = getattr(summary, name)
                pieces[name].append(da.from_array(array, chunks=array.shape, name=False))
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
