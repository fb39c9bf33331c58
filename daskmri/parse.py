"""Parse records: one slice and its contours (:func:`read_record`), and a chunk of
them (:func:`parse_chunk`), the work of one Dask task.

This module runs on the workers, so it imports only numpy and pydicom: a worker
process that starts (the ``"processes"`` scheduler spawns fresh ones) does not pay
for xarray, pandas or distributed.

Where a chunk's pixels go is the caller's choice: returned in the
:class:`ChunkResult` (a distributed worker keeps them), or written straight into
:class:`Slots`, a memory-mapped buffer that local worker processes share with the
caller, so that no pixel is pickled back through a pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import mmap
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compact import Compact, common_dtype, fits, label_dtype, pack_labels, to_dtype, verified
from .errors import DATA_ERRORS, DaskmriError, ReaderError, RecordError, one_line
from .fit import GEOMETRY, Geometry, paste, place, shape_error
from .limits import DEFAULT_LIMITS, Limits
from .record import Parsed, Placeholder, Record, drop_row
from .sources import dicom_contours, volumes

__all__ = [
    "ChunkResult",
    "DefaultReader",
    "Dropping",
    "Parsed",
    "Record",
    "Slots",
    "parse_chunk",
    "read_record",
]

logger = logging.getLogger(__name__)


def read_record(
    record: Record,
    *,
    limits: Limits = DEFAULT_LIMITS,
    shape: tuple[int, int] | None = None,
    fit: str = "drop",
    spacing: tuple[float, float] | None = None,
) -> Parsed:
    """The default reader: one record's pixels and masks, read from its files.

    Parameters
    ----------
    record : Record
        The files of one slice.
    limits : Limits
        Bounds on what may be read and allocated.
    shape : (rows, columns), optional
        The dataset's frame: with ``fit="drop"``, an image of another size fails
        before its contours are read (so the reason names the size, not a contour).
    fit : {"drop", "pad_or_crop"}
        ``"pad_or_crop"`` centres the slice in the frame (see :mod:`daskmri.fit`).
    spacing : (row_mm, column_mm), optional
        Resample the slice from its PixelSpacing to this spacing first.

    Returns
    -------
    tuple of (image, mask, ...)
        float32 image after the modality rescale; a boolean mask per contour kind
        of the record (``(image, icontour, ocontour)`` in the Sunnybrook layout), or
        None where the record has no such contour; all in the frame. The tuple's
        ``geometry`` says where the source slice sits in it (:class:`Fitted`).

    Raises
    ------
    RecordError
        For any bad file; the build drops the record and reports the message.

    Examples
    --------
    Wrap it to observe or alter parsing, then pass ``reader=`` to
    :func:`daskmri.load_dataset`:

    >>> def noisy_reader(record):
    ...     print("parsing", record.instance)
    ...     return read_record(record)
    """
    if record.volume is None:
        return dicom_contours.read(record, limits=limits, shape=shape, fit=fit, spacing=spacing)
    (fitted,) = volumes.read([record], limits=limits, shape=shape, fit=fit, spacing=spacing)
    if isinstance(fitted, BaseException):  # the documented contract: raised
        raise fitted
    return fitted


#: The widest pixels a :class:`Slots` buffer holds (float32, or an integer of up to
#: 32 bits); a chunk of wider ones (64-bit NIfTI voxels) returns its arrays instead.
SLOT_ITEMSIZE = 4


@dataclass(frozen=True)
class Slots:
    """A file-backed buffer with room for every planned record, shared by processes.

    Each chunk's compact arrays (:class:`ChunkResult`: its kept records' ``pixels``, in
    the chunk's own dtype, then their ``labels``) lie back to back in the chunk's own
    region of a file in ``/dev/shm`` (memory, not disk): a region has room for
    :data:`SLOT_ITEMSIZE` bytes of pixels and a label word per pixel of each of its
    records, and the file is sparse, so only what is written takes memory. Each chunk
    task opens the file and writes its region (with ``pwrite``); the caller maps each
    region (:meth:`map`), so the pixels are never pickled back to it.
    """

    path: str
    n: int
    shape: tuple[int, int]
    kinds: int = 2

    @property
    def _plane(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def stride(self) -> int:
        """The bytes of room per record."""
        return self._plane * (SLOT_ITEMSIZE + label_dtype(self.kinds).itemsize)

    @property
    def nbytes(self) -> int:
        return self.n * self.stride

    @classmethod
    def create(
        cls, n: int, shape: tuple[int, int], *, kinds: int = 2, folder: str = "/dev/shm"
    ) -> Slots | None:
        """Make the buffer file, or return None when ``folder`` lacks the room.

        Examples
        --------
        >>> slots = Slots.create(2, (3, 4))
        >>> fd = os.open(slots.path, os.O_WRONLY)
        >>> slots.write(fd, 0, np.ones((2, 3, 4), np.int16), np.ones((2, 3, 4), np.uint8))
        >>> os.close(fd)
        >>> pixels, labels = slots.map([(0, 2, "int16")])[0]
        >>> slots.unlink()
        >>> pixels.shape, pixels.dtype, int(labels.sum())
        ((2, 3, 4), dtype('int16'), 24)
        """
        if n == 0:
            return None
        made = cls("", n, (int(shape[0]), int(shape[1])), kinds)
        try:
            stat = os.statvfs(folder)
        except OSError:
            return None
        # Leave headroom: other programs use this memory-backed folder too.
        if stat.f_bavail * stat.f_frsize < made.nbytes * 1.25:
            return None
        path = os.path.join(folder, f"daskmri-{uuid.uuid4().hex}.slots")
        with open(path, "wb") as fh:
            fh.truncate(made.nbytes)  # sparse: pages are only used as regions are written
        return dataclasses.replace(made, path=path)

    def holds(self, dtype: np.dtype) -> bool:
        """Whether pixels of ``dtype`` fit a region."""
        return np.dtype(dtype).itemsize <= SLOT_ITEMSIZE

    def map(self, regions: Sequence[tuple[int, int, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(pixels, labels)`` views of each region ``(start, count, dtype)``: the
        ``count`` records a chunk starting at slot ``start`` wrote, its pixels of
        ``dtype``. Each region is its own mapping, so the holes between them stay
        unmapped (and take no memory)."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            return [self._map(fd, *region) for region in regions]
        finally:
            os.close(fd)

    def _map(self, fd: int, start: int, count: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        labels = label_dtype(self.kinds)
        dims = (count, *self.shape)
        size = count * self._plane * (np.dtype(dtype).itemsize + labels.itemsize)
        offset = start * self.stride
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        # MAP_POPULATE: the region is already written, so map every page in one go
        # rather than taking a page fault per 4 KiB on first use.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        buffer = mmap.mmap(fd, offset - base + size, flags=flags, offset=base)
        at = offset - base
        pixels = np.frombuffer(buffer, dtype, count * self._plane, at).reshape(dims)
        at += pixels.nbytes
        return pixels, np.frombuffer(buffer, labels, count * self._plane, at).reshape(dims)

    def write(self, fd: int, start: int, pixels: np.ndarray, labels: np.ndarray) -> None:
        """Write one chunk's kept records into its region through ``fd`` (open on
        :attr:`path`): ``pixels`` (a dtype :meth:`holds`), then ``labels``.

        ``pwrite`` rather than stores into a mapping: the kernel then fills whole
        pages at once instead of faulting them in one by one, measured 2.2x faster.
        """
        offset = start * self.stride
        try:
            os.pwrite(fd, np.ascontiguousarray(pixels), offset)
            os.pwrite(fd, np.ascontiguousarray(labels), offset + pixels.nbytes)
        except OSError as exc:  # not the record's fault: the shared memory is full
            raise DaskmriError(
                f"cannot write the shared slots {self.path} ({exc.strerror or exc}): free "
                "memory in /dev/shm, or pass scheduler='threads'"
            ) from exc

    def unlink(self) -> None:
        """Remove the file (mapped views stay valid); safe to call twice."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeroed array without numpy's huge-page request.

    numpy asks the kernel for transparent huge pages on large arrays; where THP is
    in ``madvise`` mode that made allocating and first filling a chunk about 2x
    slower here (measured: 0.80 s vs 0.45 s for 775 MB). A bytearray's buffer is
    zeroed when it is made, with ordinary pages.
    """
    count = int(np.prod(shape))
    return np.frombuffer(bytearray(count * np.dtype(dtype).itemsize), dtype).reshape(shape)


#: The arrays of a chunk that hold its records (:class:`ChunkResult`), as a dataset or a
#: store holds them (see :mod:`daskmri.compact`).
COMPACT = ("pixels", "slope", "intercept", "labels")


@dataclass
class ChunkResult:
    """What one chunk task returns: the survivors' compact arrays (``pixels`` in the
    chunk's own ``dtype``, ``labels`` one bit per contour kind; both None when they were
    written to :class:`Slots`, or in a :meth:`summary`), their rescale (``slope``,
    ``intercept``: small, always there), which records survived, which of them have
    each kind (``has``), and why the rest failed."""

    pixels: np.ndarray | None
    labels: np.ndarray | None
    slope: np.ndarray
    intercept: np.ndarray
    kept: np.ndarray
    has: dict[str, np.ndarray]
    dropped: list[dict]
    #: Where each kept record's source slice sits in the frame: one row of the
    #: :data:`daskmri.fit.GEOMETRY` values per kept record.
    geometry: np.ndarray = field(default_factory=lambda: np.zeros((0, len(GEOMETRY))))
    #: The pixels' dtype (:func:`daskmri.compact.common_dtype` of its records).
    dtype: str = "float32"
    #: Whether the pixels went into the shared :class:`Slots`.
    in_slots: bool = False

    def array(self, name: str) -> np.ndarray:
        """The array ``name``: one of :data:`COMPACT`."""
        if name not in COMPACT:
            raise KeyError(f"a chunk holds {COMPACT}, not {name!r}")
        return getattr(self, name)

    def summary(self) -> ChunkResult:
        """The same result without pixels and labels: what travels to the client."""
        return dataclasses.replace(self, pixels=None, labels=None)


def parse_chunk(
    records: Sequence[Record],
    *,
    shape: tuple[int, int],
    reader: Callable[[Record], Parsed],
    kinds: Sequence[str],
    slots: Slots | None = None,
    start: int = 0,
    compact: bool = True,
    fit: str = "drop",
) -> ChunkResult:
    """Parse one chunk of records into their compact form; a record whose data is bad
    is dropped.

    A data error (:data:`~daskmri.errors.DATA_ERRORS`: a damaged or unreadable file)
    drops its record with the reason; anything else the reader raises is a bug and
    is raised as a :class:`~daskmri.errors.ReaderError` naming the record (wrap the
    reader in :class:`Dropping` to drop those too).

    Each record's image is kept as the source's integers and rescale where they widen
    to the reader's float32 image bit for bit (checked here, record by record:
    :func:`daskmri.compact.verified`), else as that float32 image; the chunk's pixels
    take the dtype that holds all of its records (:func:`daskmri.compact.common_dtype`).

    Parameters
    ----------
    records : sequence of Record
        The chunk.
    shape : (rows, columns)
        The dataset's image size; a record of another size is dropped.
    reader : callable
        ``reader(record) -> (image, *masks)``: one mask (or None) per kind.
    kinds : sequence of str
        The layout's contour kinds, in order (bit ``k`` of ``labels`` is ``kinds[k]``).
    slots : Slots, optional
        Write the kept records' pixels and labels into the region of this buffer that
        starts at slot ``start``, instead of returning them (unless their dtype is
        wider than the buffer :meth:`~Slots.holds`).
    start : int
        First slot of this chunk.
    compact : bool
        Return only the kept records (the default). With False the arrays keep one
        entry per record, zeros (slope 1) where a record was dropped, as a store region
        with one slot per planned record needs.
    fit : {"drop", "pad_or_crop"}
        What to do with an image of another size that a custom reader returns:
        drop its record, or centre it and its masks in the frame (an integer shift,
        so the masks stay exact).

    Returns
    -------
    ChunkResult
        The compact arrays and the tables of the chunk.

    Raises
    ------
    ReaderError
        If the reader raises anything but a data error, naming the record, with
        the reader's exception as its cause.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> from daskmri import synth
    >>> from daskmri.plan import plan_chunks
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> plan = plan_chunks(daskmri.scan(root))
    >>> kinds = daskmri.SUNNYBROOK.kinds
    >>> result = parse_chunk(plan.chunks[0], shape=(32, 32), reader=read_record, kinds=kinds)
    >>> result.pixels.shape, result.dtype, result.labels.dtype, result.dropped
    ((3, 32, 32), 'int16', dtype('uint8'), [])
    """
    n, kinds = len(records), tuple(kinds)
    records = fetched(records)
    labels = _zeros((n, *shape), label_dtype(len(kinds)))
    has = np.zeros((n, len(kinds)), dtype=bool)
    stack = _Stack(n, shape)
    geometry = np.zeros((n, len(GEOMETRY)))
    failures: list[dict] = []
    for k, (record, got) in enumerate(_outcomes(records, reader)):
        read = _read_one(record, got, shape, fit, kinds)
        if isinstance(read, dict):
            failures.append(read)
            continue
        found, masks, where = read
        stack.put(k, found)
        geometry[k] = where.row()
        pack_labels(dict(zip(kinds, masks, strict=True)), kinds, out=labels[k])
        has[k] = [mask is not None for mask in masks]
    kept = np.flatnonzero(stack.ok)
    flags = {kind: has[kept, j] for j, kind in enumerate(kinds)}
    pixels, slope, intercept = stack.arrays()
    if compact and len(kept) < n:
        pixels, slope, intercept, labels = (a[kept] for a in (pixels, slope, intercept, labels))
    result = ChunkResult(
        pixels, labels, slope, intercept, kept, flags, failures, geometry[kept], str(pixels.dtype)
    )
    if slots is not None and slots.holds(pixels.dtype):
        fd = os.open(slots.path, os.O_WRONLY)
        try:
            slots.write(fd, start, pixels, labels)
        finally:
            os.close(fd)
        return dataclasses.replace(result.summary(), in_slots=True)
    return result


class _Stack:
    """A chunk's ``(pixels, slope, intercept)``, filled record by record in the dtype
    that holds the records so far (:func:`daskmri.compact.common_dtype`), widened when
    one needs more; a slot no record fills stays zeros with slope 1.

    Each record's pixels are copied in as soon as it is read, so the file's bytes
    they view are freed at once: holding a chunk of them until the end made the
    allocator fetch fresh pages for every file (measured, 30% of a chunk's parse).
    """

    def __init__(self, n: int, shape: tuple[int, int]) -> None:
        self.n, self.shape = n, shape
        self.pixels: np.ndarray | None = None
        self.slope, self.intercept = np.ones(n), np.zeros(n)
        self.ok = np.zeros(n, dtype=bool)

    def put(self, k: int, found: Compact) -> None:
        dtype = found.pixels.dtype
        if self.pixels is None:
            self.pixels = _zeros((self.n, *self.shape), common_dtype([dtype]))
        elif not fits(dtype, self.pixels.dtype):
            wider = common_dtype([dtype, self.pixels.dtype])
            self.pixels, self.slope, self.intercept = to_dtype(
                self.pixels, self.slope, self.intercept, wider
            )
        values, s, i = to_dtype(
            found.pixels[None], [found.slope], [found.intercept], self.pixels.dtype
        )
        self.pixels[k], self.slope[k], self.intercept[k] = values[0], s[0], i[0]
        self.ok[k] = True

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.pixels is None:  # no record survived
            self.pixels = _zeros((self.n, *self.shape), common_dtype([]))
        return self.pixels, self.slope, self.intercept


def _unread(record: Record) -> Parsed:
    """What a placeholder "reads": a drop, never shown (its slot is retired)."""
    raise RecordError("", f"slot of {record.describe()} is taken by no record")


def _outcomes(records: Sequence[Record], reader) -> Iterator[tuple[Record, Any]]:
    """Each record with what its reader gives: a callable that reads it alone, or, for
    the records of one volume (:attr:`Record.unit`) and a reader that reads units
    (:class:`DefaultReader`), the result already read, once for all of them."""
    read_unit = getattr(reader, "read_unit", None)
    for unit, group in itertools.groupby(records, key=lambda record: record.unit):
        group = list(group)
        if unit is None or read_unit is None:
            for record in group:
                # A slot no record takes: a custom reader need not know about them.
                read = _unread if isinstance(record, Placeholder) else reader
                if read is reader and isinstance(reader, DefaultReader):
                    read = reader.compact_only
                yield record, functools.partial(read, record)
            continue
        try:
            results = read_unit(group)
        except Exception as exc:  # a bug: DefaultReader returns data errors, never raises them
            error = ReaderError(group[0].describe(), exc)
        else:
            yield from zip(group, results, strict=True)
            continue
        raise error from error.cause


def _read_one(
    record: Record,
    got: Any,
    shape: tuple[int, int],
    fit: str,
    kinds: tuple[str, ...],
) -> tuple | dict:
    """``(pixels, masks, geometry)`` of one record in the frame, or its
    :func:`~daskmri.dropped` row when its data is bad. ``got`` is what the reader gave
    for it (a result or an exception), or a callable that reads it. Any other exception
    is a bug (in the reader or here): raised, naming the record."""
    try:
        parsed = got() if callable(got) else got
        if isinstance(parsed, BaseException):
            raise parsed
        return _in_frame(record, parsed, shape, fit, kinds)
    except DATA_ERRORS as exc:  # one bad file drops its record, never the chunk
        logger.debug("dropped %s", record.describe(), exc_info=exc)
        return drop_row(record, exc)
    except Exception as exc:
        error = ReaderError(record.describe(), exc)
    # Raised out of the except block, so that no __context__ holds the raw exception:
    # tblib's reducers (which distributed installs) would pickle it to the caller.
    raise error from error.cause


@dataclass(frozen=True)
class DefaultReader:
    """daskmri's own reader (:func:`read_record`) bound to the limits, the frame, the
    fit and the spacing; it reads the records of one volume together
    (:meth:`read_unit`), each volume file once.

    Examples
    --------
    >>> reader = DefaultReader(shape=(32, 32))
    >>> reader.shape, reader.fit
    ((32, 32), 'drop')
    """

    limits: Limits = DEFAULT_LIMITS
    shape: tuple[int, int] | None = None
    fit: str = "drop"
    spacing: tuple[float, float] | None = None

    def __call__(self, record: Record) -> Parsed:
        return read_record(
            record, limits=self.limits, shape=self.shape, fit=self.fit, spacing=self.spacing
        )

    def compact_only(self, record: Record) -> Parsed:
        """:meth:`__call__` for a chunk task: the same record, but the float32 image is
        left out (None) where the compact form is the source's own integers, which
        widen to it by construction (:func:`daskmri.dicom.read_slice_compact`): a
        chunk keeps only the compact form, and the image would cost it two widenings
        and a comparison."""
        if record.volume is not None:
            return self(record)
        return dicom_contours.read(
            record,
            limits=self.limits,
            shape=self.shape,
            fit=self.fit,
            spacing=self.spacing,
            image=False,
        )

    def read_unit(self, records: Sequence[Record]) -> list:
        """One result per record of one volume: a :class:`Fitted`, or the data error
        (:data:`~daskmri.errors.DATA_ERRORS`) that drops it."""
        if records[0].volume is None:  # slices are read alone: one result each
            return [_data_or_fitted(self, record) for record in records]
        return volumes.read(
            records, limits=self.limits, shape=self.shape, fit=self.fit, spacing=self.spacing
        )


def _data_or_fitted(reader: DefaultReader, record: Record):
    try:
        return reader(record)
    except DATA_ERRORS as exc:
        return exc


@dataclass(frozen=True)
class Dropping:
    """A reader that drops its record on any exception (``on_error="drop"``), not
    only on the data errors (:data:`~daskmri.errors.DATA_ERRORS`) that every reader
    drops: for a reader that raises whatever its library raises on a damaged file.
    The reason keeps the exception's type.

    Examples
    --------
    >>> def fussy(record):
    ...     raise ValueError("no such thing")
    >>> Dropping(fussy)(Record("P", "O", 1, "/d/1.dcm"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.RecordError: /d/1.dcm: ValueError: no such thing
    """

    reader: Callable[[Record], Parsed]

    def __call__(self, record: Record) -> Parsed:
        try:
            return self.reader(record)
        except DATA_ERRORS:
            raise
        except Exception as exc:
            raise RecordError(record.image_path or "", one_line(exc)) from exc

    @property
    def read_unit(self) -> Callable | None:
        """The wrapped reader's ``read_unit``, when it has one, dropping on any error."""
        inner = getattr(self.reader, "read_unit", None)
        if inner is None:
            return None

        def read_unit(records: Sequence[Record]) -> list:
            try:
                return inner(records)
            except Exception as exc:
                error = RecordError(records[0].image_path or "", one_line(exc))
                error.__cause__ = exc
                return [error] * len(records)

        return read_unit


def _in_frame(
    record: Record, parsed: Parsed, shape: tuple[int, int], fit: str, kinds: tuple[str, ...]
) -> tuple:
    """A reader's ``(image, *masks)`` checked against the frame: the image's compact
    form (verified against the float32 image, else that image), the masks, and the
    :class:`~daskmri.fit.Geometry`: the default reader's, or that of a custom reader's
    image (centred in the frame with ``fit="pad_or_crop"``)."""
    if len(parsed) != 1 + len(kinds):
        raise RecordError(
            record.image_path or "",
            f"reader returned {len(parsed)} arrays; the layout needs the image and one "
            f"mask (or None) per contour kind {list(kinds)}",
        )
    pixels, *masks = parsed
    geometry = getattr(parsed, "geometry", None)
    candidate = getattr(parsed, "compact", None)
    if pixels is None and candidate is not None:  # DefaultReader.compact_only: exact
        if candidate.pixels.shape != shape:
            raise shape_error(record.image_path, candidate.pixels.shape, shape)
        _check_masks(record, masks, shape, kinds)
        return candidate, masks, geometry or Geometry(*shape)
    if pixels.shape != shape and geometry is None and fit == "pad_or_crop" and pixels.ndim == 2:
        _check_masks(record, masks, pixels.shape, kinds)
        geometry, candidate = place(pixels.shape, shape), None
        pixels, *masks = (
            None if a is None else paste(a, geometry.row_offset, geometry.column_offset, shape)
            for a in (pixels, *masks)
        )
    if pixels.shape != shape:
        raise shape_error(record.image_path, pixels.shape, shape)
    _check_masks(record, masks, shape, kinds)
    # The image as a dataset holds it (float32), and its compact form only where that
    # widens back to it bit for bit.
    found = verified(np.asarray(pixels, dtype=np.float32), candidate)
    return found, masks, geometry or Geometry(*shape)


def _check_masks(record: Record, masks: Sequence, shape: tuple[int, ...], kinds) -> None:
    for mask, name in zip(masks, kinds, strict=True):
        if mask is not None and np.shape(mask) != tuple(shape):
            raise RecordError(
                record.image_path, f"reader returned a {name} mask of shape {np.shape(mask)}"
            )


def fetched(records: Sequence[Record]) -> Sequence[Record]:
    """``records``, each holding its files' bytes when they are on a store (a
    dataset at a URL): every file of the chunk fetched in one call, concurrently,
    instead of one request after another as the reader reads. Local records are
    returned as they are.

    Examples
    --------
    >>> r = Record("P", "O", 1, "/d/1.dcm")
    >>> fetched([r])[0] is r
    True
    """
    groups: dict[int, list[Record]] = {}
    for record in records:
        if not record.fs.local:  # records of one scan share one fs object
            groups.setdefault(id(record.fs), []).append(record)
    if not groups:
        return records
    held = {}
    for key, group in groups.items():
        held[key] = group[0].fs.prefetch(path for r in group for path in _files(r))
    return [r if r.fs.local else dataclasses.replace(r, fs=held[id(r.fs)]) for r in records]


def _files(record: Record) -> list[str]:
    picks = () if record.rtstruct is None else record.rtstruct.picks
    rt = [path for _, found in picks for path, _ in found]
    return [record.image_path, *(path for _, path in record.contours), *rt]


def parse_partition(
    items: list[tuple[int, Record]],
    shape: tuple[int, int],
    reader: Callable[[Record], Parsed],
    slots: Slots | None = None,
    fit: str = "drop",
    *,
    kinds: Sequence[str],
) -> list[ChunkResult]:
    """One chunk task for a dataset held in memory: items are ``(slot, record)``
    pairs, because a task does not otherwise know where its chunk starts. A list,
    as a Dask bag partition is. Lives here so that worker processes unpickling it
    import only this module's light dependencies."""
    records = [record for _, record in items]
    chunk = parse_chunk(
        records, shape=shape, reader=reader, kinds=kinds, slots=slots, start=items[0][0], fit=fit
    )
    return [chunk]
