"""Reading a store: :func:`open_dataset` (also ``xr.open_dataset(store,
engine="daskmri")``) and :func:`read_dropped`."""

from __future__ import annotations

import json
import operator
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StaleStoreWarning, StoreError
from ..record import dropped_table
from ..schema import to_dataset
from .format import OK, kinds_in, pixel_names
from .freshness import check
from .spec import StoreSpec
from .state import StoreState, read_state

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["OpenStore", "open_dataset", "open_store", "read_dropped"]


def _select(array, keep_per_block: list[np.ndarray]):
    """The ``keep`` slots of each block of ``array``, one output chunk per store
    chunk: chunks stay aligned with the store, which dask's fancy indexing does not
    guarantee (it regroups the selected slots into chunks of its own)."""
    # Here, not at the top: dask.array imports xarray and pandas, and worker processes
    # import this package (for write_partition).
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = "daskmri-select-" + tokenize(array.name, [k.tobytes() for k in keep_per_block])
    graph: dict = {}
    sizes: list[int] = []
    for block, keep in enumerate(keep_per_block):
        if len(keep) == 0:
            continue
        source = (array.name, block, 0, 0)
        out = (name, len(sizes), 0, 0)
        if len(keep) == array.chunks[0][block]:
            graph[out] = (operator.getitem, source, (slice(None),))
        else:
            graph[out] = (operator.getitem, source, (keep,))
        sizes.append(len(keep))
    if not sizes:
        return da.zeros((0, *array.shape[1:]), dtype=array.dtype, chunks=-1)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[array])
    return da.Array(hlg, name, chunks=((*sizes,), *array.chunks[1:]), dtype=array.dtype)


def open_dataset(
    store: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open a store made by :func:`daskmri.build` as the daskmri dataset, lazily.

    Parameters
    ----------
    store : str or os.PathLike
        Local path or fsspec URL of the store.
    root : str or os.PathLike, optional
        The dataset folder. When given, the store is checked against it and a
        :class:`~daskmri.errors.StaleStoreWarning` says what changed since the build.
    storage_options : dict, optional
        Passed to fsspec for URLs.

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
    import dask.array as da
    from dask.base import tokenize

    spec = StoreSpec.of(store, storage_options)
    opened = open_store(spec)
    arrays = {
        # Named by the build, not only by the path: a store rebuilt in place must not
        # hit data a cluster still holds from before.
        name: _select(
            da.from_zarr(
                opened.group[name],
                chunks=opened.group[name].chunks,
                name=f"daskmri-{name}-{opened.attrs.get('build_id', '')}-{tokenize(spec.url)}",
            ),
            opened.keep_per_block,
        )
        for name in opened.pixel_names
    }
    ds = opened.dataset(arrays)
    if root is not None:
        freshness = check(store, root, storage_options=storage_options)
        if not freshness.fresh:
            warnings.warn(str(freshness), StaleStoreWarning, stacklevel=2)
    return ds


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
        """The store's pixel arrays: ``image`` and one per contour kind."""
        return pixel_names(kinds_in(self.attrs))

    @property
    def ok(self) -> np.ndarray:
        return self.state.status == OK

    @property
    def keep_per_block(self) -> list[np.ndarray]:
        """The ``ok`` slots of each store chunk, counted from the chunk's start."""
        size, ok = self.state.chunk_size, self.ok
        return [np.flatnonzero(ok[s : s + size]) for s in range(0, self.state.n_slots, size)]

    def dataset(self, arrays: dict) -> xr.Dataset:
        """The dataset with these pixel ``arrays`` (one per variable, over the ``ok``
        slots) and the store's tables and attributes."""
        state, ok = self.state, self.ok
        return to_dataset(
            arrays,
            has={kind: flags[ok] for kind, flags in state.has.items()},
            patient_id=state.patient_id[ok],
            original_id=state.original_id[ok],
            instance=state.instance[ok],
            geometry=np.asarray(self.group["geometry"][:])[ok],
            attrs={key: self.attrs[key] for key in KEPT_ATTRS if key in self.attrs}
            | {"dropped": self.attrs.get("dropped", "[]"), "store": self.url},
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
            f"the build of {spec.url!r} never finished, so it may lack records; run the same "
            "daskmri.build(...) (or `daskmri build`) again to finish it: complete chunks are "
            "kept, the rest are parsed"
        )
    return OpenStore(spec.url, spec.group("r"), state)


def read_dropped(
    store: str | os.PathLike[str], *, storage_options: dict | None = None
) -> pd.DataFrame:
    """:func:`daskmri.dropped` of a store, without opening its dataset."""
    attrs = StoreSpec.of(store, storage_options).group("r").attrs
    return dropped_table(json.loads(attrs.get("dropped", "[]")))
