"""The dataset in memory: :func:`load_dataset` runs the pipeline (scan, plan, run,
sink) and returns the chunked ``xarray.Dataset``; :func:`dropped` lists what it
left out. Only small summaries travel to the client: a distributed cluster keeps
the pixels on its workers, and local worker processes write them into shared
slots."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

import xarray as xr

from .execute import client_for, close_with, executor_for, progress_bar
from .layout import scan
from .limits import Limits
from .plan import exclude_from, infer_shape, plan_chunks
from .record import Parsed, Record
from .schema import dropped, provenance
from .settings import Compute, Parsing, Source
from .sinks import assemble, memory_sink
from .sources.dicom_contours import Layout

__all__ = ["dropped", "load_dataset"]

logger = logging.getLogger(__name__)


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
    fit: str = "drop",
    spacing: tuple[float, float] | None = None,
    source_options: dict | None = None,
    on_error: str = "raise",
    exclude=None,
) -> xr.Dataset:
    """Parse a dataset folder into a chunked ``xarray.Dataset`` of images and masks.

    The pipeline: the folder is scanned (:func:`daskmri.scan`), planned into
    chunks of ``chunk_size`` records (:func:`daskmri.plan.plan_chunks`), run by an
    executor with one task per chunk (:mod:`daskmri.execute`), and kept in memory,
    here or on the cluster (:mod:`daskmri.sinks`). Each task parses its records; a
    record whose files are damaged is dropped and reported by :func:`dropped`, and
    never fails the build (a bug in a reader does: see ``on_error``).

    Parameters
    ----------
    root : str or os.PathLike
        Dataset folder: a local path, or an fsspec URL (``s3://bucket/data``).
    layout : Layout, optional
        File names and patterns; default Sunnybrook.
    client : None, distributed.Client or str
        Where to run. A client or a scheduler address runs on that cluster and the
        pixels stay there (the result is persisted on the workers). None uses the
        current default client if there is one (unless ``scheduler`` is given), else
        a local scheduler. A client made here from an address (which becomes the
        default client, as ``Client(address)`` does) is closed by ``ds.close()``, or
        once the dataset and every selection of it are garbage; a client you pass
        is never closed.
    scheduler : {"sync", "threads", "processes"}, optional
        Local scheduler when there is no client. The default, ``"processes"``,
        is the fast one: parsing is pure-Python pydicom work that holds the GIL,
        so threads would run it one at a time. Its worker processes never re-run
        the caller's script, so a script needs no ``if __name__ == "__main__":``
        guard.
    chunk_size : int
        Records per chunk (and per task).
    labels : str
        Which slices to keep: ``"any"``, ``"all"`` or a contour kind's name (or
        alias); see :func:`daskmri.scan`.
    reader : callable, optional
        ``reader(record) -> (image, *masks)``, one mask (or None) per contour kind of
        the layout, in its order (``(image, icontour, ocontour)`` for Sunnybrook),
        replacing :func:`read_record` (to stub, count or change parsing). It must be
        picklable for the process and distributed schedulers. For bad data it
        raises :class:`~daskmri.errors.RecordError` (or a ``FileNotFoundError``): the record
        is dropped with that reason.
    on_error : {"raise", "drop"}
        What any other exception from the reader does, being a bug rather than bad
        data: ``"raise"`` (the default) stops the load with a
        :class:`~daskmri.errors.ReaderError` that names the record and chains the
        exception; ``"drop"`` drops the record, the exception's type and message as
        its reason (for a reader whose library raises anything on a damaged file).
    limits : Limits, optional
        Bounds for the default reader.
    shape : (rows, columns), optional
        The dataset's frame; by default the size of the first readable DICOM
        (resampled to ``spacing`` when given).
    fit : {"drop", "pad_or_crop"}
        Slices of another size than the frame are dropped (the default; the reason
        names the size), or centred in it, padded with 0 or cropped
        (``"pad_or_crop"``). Masks are rasterised from the contours placed the same
        way, so they stay exact. Where each slice sits is in the coordinates
        ``source_rows``, ``row_offset``, ... (see :func:`daskmri.to_source`).
    spacing : (row_mm, column_mm) or float, optional
        Resample every slice linearly from its PixelSpacing to this spacing first
        (pixel edges aligned); a slice without PixelSpacing is dropped.
    progress : bool
        Show a progress bar while parsing.
    security : distributed.Security, optional
        TLS settings when ``client`` is a ``tls://`` address.
    source_options : dict, optional
        For a ``root`` at a URL: its fsspec filesystem's options (credentials,
        ``endpoint_url``, ...); they travel with the tasks to the workers. Without
        them, the backend reads its environment (``AWS_ACCESS_KEY_ID``, ...) on the
        client and on every worker.
    exclude : str, os.PathLike or daskmri.verdicts.Exclusion, optional
        Records to leave out: a ``verdicts.csv`` written by ``daskmri report``, in
        which a person wrote ``exclude`` in the ``verdict`` column of each record to
        leave out (or an :class:`~daskmri.verdicts.Exclusion` read from one). The file
        is read first, so a missing or malformed file fails before any work. The
        excluded records are taken out after the scan, so no pixel of theirs is read,
        and :func:`dropped` lists them with the reason ``"excluded by <exclude>"`` (the
        path as given). A record is named by ``(patient_id, instance)``; a name that
        matches no record is not an error (logged at INFO). Excluding some planes of a
        volume leaves its other planes as they are.

    Returns
    -------
    xarray.Dataset
        ``image`` (float32) and a bool mask per contour kind (``icontour``,
        ``ocontour`` for Sunnybrook) on ``(record, y, x)``, chunked along ``record``
        with known chunk sizes, plus ``has_<kind>`` and the coordinates ``patient_id``,
        ``original_id``, ``instance``. Chunks are ``chunk_size`` records, less the
        records dropped from them.

    Raises
    ------
    LayoutError
        If ``root`` is not a dataset in ``layout``.
    DaskmriError
        If no DICOM gives an image size (and ``shape`` is not given), or the
        scheduler address cannot be reached.
    ReaderError
        If the reader raises anything but a data error, with ``on_error="raise"``.
    FileNotFoundError
        If ``exclude`` names no file.
    ValueError
        If the ``exclude`` file lacks the ``patient_id``, ``instance`` or ``verdict``
        column, or holds a verdict other than empty, ``keep``, ``ok`` or ``exclude``.
    TypeError
        If ``exclude`` is neither None, a path nor an Exclusion.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=8, shape=(32, 32))
    >>> ds = daskmri.load_dataset(root, chunk_size=4, scheduler="sync")
    >>> ds.sizes["record"], ds.image.chunks[0]
    (10, (4, 4, 2))
    >>> len(daskmri.dropped(ds))
    0

    Leave out the records a person marked in a verdicts file:

    >>> import pathlib
    >>> verdicts = pathlib.Path(tempfile.mkdtemp()) / "verdicts.csv"
    >>> _ = verdicts.write_text("patient_id,instance,verdict\\nSYN0001,2,exclude\\n")
    >>> ds = daskmri.load_dataset(root, chunk_size=4, scheduler="sync", exclude=verdicts)
    >>> ds.sizes["record"], daskmri.dropped(ds).reason.str.startswith("excluded by").tolist()
    (9, [True])
    """
    started = time.perf_counter()
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
    with client_for(compute, source.root, keep=True, fs=source.fs) as (client, made):
        ds, isolation = _load(source, parsing, compute, client)
    if made:
        _owns(ds, client)
    logger.info(
        "loaded %d records (%d dropped, %d isolated as killers in %.1f s) from %s in %.2f s",
        ds.sizes["record"],
        len(json.loads(ds.attrs["dropped"])),
        len(isolation.records),
        isolation.seconds,
        source.root,
        time.perf_counter() - started,
    )
    return ds


def _owns(ds: xr.Dataset, client) -> None:
    """Tie a client made from an address to the dataset whose pixels it holds:
    ``ds.close()`` closes it, and so does the end of the last dataset that shares
    those pixels (a selection, a split) when it is garbage, unless the client still
    holds other futures (a ``.persist()`` of a selection): then it stays open until
    the process ends."""
    from distributed import futures_of

    close_with(client, futures_of(ds))
    ds.set_close(client.close)


def _load(source: Source, parsing: Parsing, compute: Compute, client):
    """Scan, plan, run and assemble, once the settings are checked and the cluster
    (if any) reached."""
    scanned = scan(
        source.root,
        layout=source.layout,
        labels=source.labels,
        source_options=dict(source.fs.options) or None,
    )
    scanned = exclude_from(scanned, source.exclude)  # before the plan: none of it is read
    plan = plan_chunks(scanned, chunk_size=parsing.chunk_size, fs=source.fs)
    shape = parsing.shape
    if plan.n_records and shape is None:
        records = (r for chunk in plan.chunks for r in chunk)
        shape = infer_shape(records, parsing.limits, spacing=parsing.spacing)
    shape = (0, 0) if shape is None else shape
    executor = executor_for(compute, client, len(plan.chunks))
    kinds = source.layout.kinds
    sink = memory_sink(executor, plan.n_records, shape, fit=parsing.fit, kinds=kinds)
    try:
        with progress_bar(len(plan.chunks), compute.progress) as bar:
            results, isolation = executor.run(
                sink.task, plan.parts(), parsing.reader_for(shape), progress=bar
            )
        attrs = provenance(source, parsing)
        ds = assemble(plan, sink, results, shape=shape, attrs=attrs)
    finally:
        sink.close()
        executor.close()
    return ds, isolation
