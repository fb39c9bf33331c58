"""The xarray backend: ``xr.open_dataset(store, engine="daskmri")``.

Registered as the ``daskmri`` entry point of ``xarray.backends`` (see
``pyproject.toml``), following xarray's ``BackendEntrypoint``. As with xarray's
own backends, the pixel variables are lazily indexed (a selection reads only its
records' store chunks), and ``chunks={}`` gives dask arrays in the store's own
chunks, the same as :func:`daskmri.open_dataset`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from ..errors import StoreError
from .reading import open_store
from .spec import StoreSpec, what_is_there

__all__ = ["DaskmriBackendEntrypoint"]


class StoreArray(BackendArray):
    """One pixel array of a store, indexed by record (the ``ok`` slots)."""

    def __init__(self, array: Any, slots: np.ndarray) -> None:
        self.array, self.slots = array, slots
        self.shape = (len(slots), *array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.lock = threading.Lock()

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple) -> np.ndarray:
        slots = self.slots[key[0]]
        rows = np.atleast_1d(slots)
        if len(rows) and np.all(np.diff(rows) == 1):  # one run: read it as a slice
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
        picked = np.asarray(self.array.oindex[(rows, *key[1:])])
        return picked[0] if np.ndim(slots) == 0 else picked


class Sliced:
    """A :class:`StoreArray` indexed as numpy is (a tuple of slices), for dask: what
    ``image`` and the masks are derived from."""

    def __init__(self, array: StoreArray) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, 3

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self.array._read(tuple(key))


class DaskmriBackendEntrypoint(BackendEntrypoint):
    """Open a store made by :func:`daskmri.build` with ``xr.open_dataset``.

    Examples
    --------
    >>> import tempfile, daskmri, xarray as xr
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=9, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> _ = daskmri.build(root, store, chunk_size=4, scheduler="sync")
    >>> ds = xr.open_dataset(store, engine="daskmri", chunks={})
    >>> ds.image.chunks[0], ds.identical(daskmri.open_dataset(store))
    ((4, 2), True)
    """

    description = "Open a daskmri Zarr store (MRI images and contour masks)"
    url = "https://github.com/daskmri/daskmri"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "storage_options")

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[str],
        *,
        drop_variables: Any = None,
        storage_options: dict | None = None,
    ):
        opened = open_store(StoreSpec.of(filename_or_obj, storage_options))
        slots = np.flatnonzero(opened.ok)
        held = {name: StoreArray(opened.group[name], slots) for name in opened.pixel_names}
        arrays = {name: indexing.LazilyIndexedArray(array) for name, array in held.items()}
        record_chunks = tuple(len(keep) for keep in opened.keep_per_block if len(keep)) or (0,)
        sources = {name: Sliced(array) for name, array in held.items()}
        ds = opened.dataset(arrays, chunks=record_chunks, sources=sources)
        rows, columns = opened.group["pixels"].shape[1:]
        chunks = {"record": record_chunks, "y": rows, "x": columns}
        for name in ds.data_vars:
            if ds[name].dims == ("record", "y", "x"):  # held and derived alike
                ds[name].encoding.update(preferred_chunks=chunks)
        return ds.drop_vars(drop_variables or [], errors="ignore")

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            return what_is_there(StoreSpec.of(filename_or_obj)) == "daskmri"
        except (TypeError, StoreError, OSError):
            return False
