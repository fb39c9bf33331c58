"""Reading a store: :func:`open_dataset` (also ``xr.open_dataset(store,
engine="daskmri")``) and :func:`read_dropped`."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StaleStoreWarning, StoreError
from ..record import dropped_table
from ..schema import plane_coords, to_dataset
from .format import OK, RESCALE, kinds_in, pixel_names
from .freshness import check
from .spec import StoreSpec
from .state import StoreState, read_state

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["OpenStore", "open_dataset", "open_store", "read_dropped"]


def _codec_of(array) -> str | None:
    """The codec of ``array`` when :class:`Blocks` can decode it itself: the bytes
    codec in this machine's byte order, then blosc, zstd or nothing; else None."""
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    codecs = tuple(array.metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    endian = codecs[0].endian
    if endian is not None and endian.value != sys.byteorder and array.dtype.itemsize > 1:
        return None
    rest = codecs[1:]
    if not rest:
        return "none"
    if len(rest) == 1 and isinstance(rest[0], BloscCodec):
        return "blosc"
    if len(rest) == 1 and isinstance(rest[0], ZstdCodec):
        return "zstd"
    return None


@dataclass(frozen=True)
class Blocks:
    """Reads whole chunks of one pixel array of a store: one object per chunk, its
    bytes decoded straight into a new array.

    Zarr's own read path costs about twice the CPU of this for a whole chunk
    (measured on a 16.8 MB image chunk with blosc-lz4: its indexing, an event-loop
    round trip, a decode into a buffer of its own and a copy out of it); a daskmri
    store's chunks are always read whole, with codecs it knows. An array with any
    other codecs (``codec`` None) is read through zarr.
    """

    spec: StoreSpec
    name: str
    chunks: tuple[int, ...]
    dtype: str
    codec: str | None
    fill_value: Any

    @classmethod
    def of(cls, spec: StoreSpec, array) -> Blocks:
        codec = _codec_of(array)
        return cls(
            spec,
            array.basename,
            tuple(array.chunks),
            str(array.dtype),
            codec,
            array.fill_value.item() if hasattr(array.fill_value, "item") else array.fill_value,
        )

    def read(self, key: str, start: int, rows: int, fetched: dict | None = None) -> np.ndarray:
        """The first ``rows`` rows of the chunk stored at ``key`` (which starts at
        row ``start``); its bytes from ``fetched`` (by array name, see :func:`fetch`)
        when given, else fetched here.

        Raises
        ------
        StoreError
            If the chunk's object cannot be decoded (the store is damaged).
        """
        if self.codec is None:
            return np.asarray(self.spec.array(self.name, mode="r")[start : start + rows])
        out = np.empty(self.chunks, dtype=self.dtype)
        raw = self._bytes(key) if fetched is None else fetched[self.name]
        if raw is None:  # never written: zarr's fill value, as zarr reads it
            out[:rows] = self.fill_value
            return out[:rows]
        try:
            self._decode(raw, out)
        except Exception as exc:
            raise StoreError(
                f"chunk {key!r} of {self.name!r} in {self.spec.shown!r} cannot be decoded "
                f"({type(exc).__name__}: {exc}); the store is damaged: rebuild it with "
                "daskmri.build(..., mode='overwrite')"
            ) from exc
        return out[:rows]

    def _bytes(self, key: str) -> bytes | None:
        if "://" not in self.spec.url:
            try:
                with open(os.path.join(self.spec.url, self.name, key), "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                return None
        fs, path = self.spec.filesystem()
        try:
            return fs.cat_file(f"{path.rstrip('/')}/{self.name}/{key}")
        except FileNotFoundError:
            return None

    def _decode(self, raw: bytes, out: np.ndarray) -> None:
        flat = out.reshape(-1).view(np.uint8)
        if self.codec == "none":
            if len(raw) != flat.nbytes:
                raise ValueError(f"{len(raw)} bytes, expected {flat.nbytes}")
            flat[:] = np.frombuffer(raw, np.uint8)
            return
        import numcodecs

        codec = numcodecs.Blosc() if self.codec == "blosc" else numcodecs.Zstd()
        size = np.asarray(codec.decode(raw, out=flat)).nbytes
        if size != flat.nbytes:
            raise ValueError(f"{size} bytes, expected {flat.nbytes}")


def fetch(blocks: tuple[Blocks, ...], key: str) -> dict[str, bytes | None]:
    """A dask task: the objects of one store chunk of several pixel arrays of a store
    at a URL, requested at once (s3fs, gcsfs, ... send them concurrently), by array
    name; None for a chunk never written.

    On an object store each request costs its latency (tens of ms), not its bytes:
    fetched one after another, a chunk's image and masks cost three latencies.

    Raises
    ------
    OSError
        If an object cannot be read for another reason than not being there.
    """
    fs, path = blocks[0].spec.filesystem()
    paths = {b.name: f"{path.rstrip('/')}/{b.name}/{key}" for b in blocks}
    # cat_ranges, not cat: cat would expand a store path with [ or * in it as a glob,
    # and read another store's chunk.
    found = fs.cat_ranges(list(paths.values()), None, None, on_error="return")
    out: dict[str, bytes | None] = {}
    for name, value in zip(paths, found, strict=True):
        if isinstance(value, FileNotFoundError):
            value = None
        elif isinstance(value, BaseException):
            raise value
        out[name] = value
    return out


def _read_block(blocks: Blocks, key: str, start: int, rows: int, keep, fetched=None) -> np.ndarray:
    """A dask task: the ``keep`` rows (all when None) of one store chunk."""
    values = blocks.read(key, start, rows, fetched)
    return values if keep is None else values[keep]


def _lazy(array, blocks: Blocks, keep_per_block: list[np.ndarray], token: str, shared=None):
    """The ``keep`` slots of each chunk of ``array``, one dask chunk per store chunk
    (so chunks stay aligned with the store), each read by :class:`Blocks`. With
    ``shared`` (the :func:`fetch` tasks of a store at a URL, by block), each block
    is decoded from the bytes its block's fetch task got."""
    # Here, not at the top: dask.array imports xarray and pandas, and worker processes
    # import this package (for write_partition).
    import dask.array as da
    from dask.base import tokenize

    name = f"daskmri-{blocks.name}-" + tokenize(token, [k.tobytes() for k in keep_per_block])
    size, n = array.chunks[0], array.shape[0]
    graph: dict = {}
    sizes: list[int] = []
    for block, keep in enumerate(keep_per_block):
        if len(keep) == 0:
            continue
        start = block * size
        rows = min(size, n - start)
        key = array.metadata.encode_chunk_key((block, *(0,) * (array.ndim - 1)))
        selection = None if len(keep) == rows else keep
        task = (_read_block, blocks, key, start, rows, selection)
        if shared is not None:
            # A key of the task's graph: dask runs it once for all the arrays.
            graph[shared[block][0]] = shared[block][1]
            task = (*task, shared[block][0])
        graph[(name, len(sizes), 0, 0)] = task
        sizes.append(len(keep))
    if not sizes:
        return da.zeros((0, *array.shape[1:]), dtype=array.dtype, chunks=-1)
    chunks = ((*sizes,), *((s,) for s in array.shape[1:]))
    return da.Array(graph, name, chunks=chunks, dtype=array.dtype)


def open_dataset(
    store: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    storage_options: dict | None = None,
    source_options: dict | None = None,
) -> xr.Dataset:
    """Open a store made by :func:`daskmri.build` as the daskmri dataset, lazily.

    Parameters
    ----------
    store : str or os.PathLike
        Local path or fsspec URL of the store.
    root : str or os.PathLike, optional
        The dataset folder. When given, the store is checked against it and a
        :class:`~daskmri.errors.StaleStoreWarning` says what changed since the build
        (:func:`daskmri.check`: also the verdicts file of ``build(..., exclude=)``,
        read again).
    storage_options : dict, optional
        Passed to fsspec for a store at a URL.
    source_options : dict, optional
        Passed to fsspec for a ``root`` at a URL.

    Returns
    -------
    xarray.Dataset
        The same variables, coordinates and attributes as
        :func:`daskmri.load_dataset`, dask-backed, one ``record`` chunk per store
        chunk (less the records that were dropped from it). Reading a chunk reads
        one object per variable from the store.

    Raises
    ------
    StoreError
        If there is no store there, it is not a daskmri store, or its build never
        finished (run the same ``daskmri.build`` again to finish it).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=9, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> _ = daskmri.build(root, store, chunk_size=4, scheduler="sync")
    >>> ds = daskmri.open_dataset(store)
    >>> ds.sizes["record"], ds.image.chunks[0]
    (6, (4, 2))
    """
    from dask.base import tokenize

    spec = StoreSpec.of(store, storage_options)
    opened = open_store(spec)
    # Named by the build, not only by the path: a store rebuilt in place must not hit
    # data a cluster still holds from before.
    token = tokenize(opened.attrs.get("build_id", ""), spec.url)
    blocks = {name: Blocks.of(spec, opened.group[name]) for name in opened.pixel_names}
    shared = _shared_fetches(spec, opened, blocks, token)
    arrays = {}
    for name in opened.pixel_names:
        array, keep = opened.group[name], opened.keep_per_block
        share = shared if blocks[name].codec is not None else None  # else read through zarr
        arrays[name] = _lazy(array, blocks[name], keep, token, share)
    ds = opened.dataset(arrays)
    if root is not None:
        freshness = check(
            store, root, storage_options=storage_options, source_options=source_options
        )
        if not freshness.fresh:
            warnings.warn(str(freshness), StaleStoreWarning, stacklevel=2)
    return ds


def _shared_fetches(spec: StoreSpec, opened: OpenStore, blocks: dict, token: str) -> list | None:
    """For a store at a URL, one :func:`fetch` task per store chunk that gets the
    objects of every pixel array at once, as ``(key, task)`` by block; None for a
    local store (a file read costs no latency worth hiding). Arrays that
    :class:`Blocks` cannot decode itself are read through zarr, and left out."""
    from dask.base import tokenize

    readable = tuple(b for b in blocks.values() if b.codec is not None)
    if "://" not in spec.url or len(readable) < 2:
        return None
    name = "daskmri-fetch-" + tokenize(token, [k.tobytes() for k in opened.keep_per_block])
    array = opened.group[readable[0].name]
    shared = []
    for block in range(len(opened.keep_per_block)):
        key = array.metadata.encode_chunk_key((block, *(0,) * (array.ndim - 1)))
        shared.append(((name, block), (fetch, readable, key)))
    return shared


#: The store attributes a dataset carries.
KEPT_ATTRS = (
    "title",
    "source",
    "layout",
    "labels",
    "kinds",
    "chunk_size",
    "created_by",
    "created",
    "input_fingerprint",
    "compressor",
    "fit",
    "spacing",
)


@dataclass(frozen=True)
class OpenStore:
    """A complete store, opened: its group, attributes and per-slot tables, and
    which slots are the dataset's records (``ok``)."""

    url: str
    group: Any
    state: StoreState

    @property
    def attrs(self) -> dict:
        return self.state.attrs

    @property
    def pixel_names(self) -> tuple[str, ...]:
        """The store's ``(record, y, x)`` arrays: ``pixels`` and ``labels``."""
        return pixel_names(kinds_in(self.attrs))

    @property
    def ok(self) -> np.ndarray:
        return self.state.status == OK

    @property
    def keep_per_block(self) -> list[np.ndarray]:
        """The ``ok`` slots of each store chunk, counted from the chunk's start."""
        size, ok = self.state.chunk_size, self.ok
        return [np.flatnonzero(ok[s : s + size]) for s in range(0, self.state.n_slots, size)]

    def dataset(
        self, arrays: dict, *, chunks: tuple[int, ...] | None = None, sources: dict | None = None
    ) -> xr.Dataset:
        """The dataset with these ``pixels`` and ``labels`` ``arrays`` (over the ``ok``
        slots), the store's tables (each slot's rescale too: 16 bytes a record, read
        now) and attributes; ``image`` and the masks derived lazily."""
        state, ok = self.state, self.ok
        rescale = {name: np.asarray(self.group[name][:], dtype=np.float64)[ok] for name in RESCALE}
        return to_dataset(
            arrays,
            **rescale,
            has={kind: flags[ok] for kind, flags in state.has.items()},
            patient_id=state.patient_id[ok],
            original_id=state.original_id[ok],
            instance=state.instance[ok],
            planes=plane_coords(self.attrs, {k: v[ok] for k, v in state.planes.items()}),
            geometry=np.asarray(self.group["geometry"][:])[ok],
            attrs={key: self.attrs[key] for key in KEPT_ATTRS if key in self.attrs}
            | {"dropped": self.attrs.get("dropped", "[]"), "store": self.url},
            chunks=chunks,
            sources=sources,
        )


def open_store(spec: StoreSpec) -> OpenStore:
    """Open the store at ``spec`` for reading.

    Raises
    ------
    StoreError
        If there is no daskmri store there, or its build never finished.
    """
    state = read_state(spec, markers=False, names=True)
    if not state.attrs.get("complete"):
        raise StoreError(
            f"the build of {spec.shown!r} never finished, so it may lack records; run the same "
            "daskmri.build(...) (or `daskmri build`) again to finish it: complete chunks are "
            "kept, the rest are parsed"
        )
    return OpenStore(spec.shown, spec.group("r"), state)


def read_dropped(
    store: str | os.PathLike[str], *, storage_options: dict | None = None
) -> pd.DataFrame:
    """:func:`daskmri.dropped` of a store, without opening its dataset."""
    attrs = StoreSpec.of(store, storage_options).group("r").attrs
    return dropped_table(json.loads(attrs.get("dropped", "[]")))
