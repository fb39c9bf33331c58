"""Stage 5, sink, in memory: where the chunks' pixels go when the dataset is not
written to a store (for that sink, Zarr regions, see :mod:`daskmri.store`).

- :class:`LocalMemory`: this machine. Local worker processes write pixels straight
  into shared slots (:class:`~daskmri.parse.Slots`, in ``/dev/shm``) and send back
  summaries; in-process tasks return their arrays as they are. No copy either way.
- :class:`ClusterMemory`: a cluster's workers keep the pixels of the chunks they
  parsed; the result is persisted there and only summaries reach the client.

Both turn the chunk results into the same ``xarray.Dataset`` (:func:`assemble`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np

from .parse import ChunkResult, Slots, parse_partition
from .plan import ChunkPlan
from .schema import pixels, plane_coords, to_dataset

__all__ = ["ClusterMemory", "LocalMemory", "assemble", "memory_sink"]


class LocalMemory:
    """Chunks held in this process's memory. With ``shared`` (local worker
    processes), in slots of a shared buffer when ``/dev/shm`` has the room."""

    def __init__(
        self,
        n_records: int,
        shape: tuple[int, int],
        *,
        shared: bool,
        fit: str = "drop",
        kinds: tuple[str, ...],
    ) -> None:
        self.shape, self.fit, self.kinds = shape, fit, kinds
        self.slots = Slots.create(n_records, shape, kinds=len(kinds)) if shared else None
        self._views: tuple[np.ndarray, ...] | None = None

    @property
    def task(self) -> Callable:
        return functools.partial(
            parse_partition, shape=self.shape, slots=self.slots, fit=self.fit, kinds=self.kinds
        )

    def summaries(self, results: list) -> list[ChunkResult]:
        if self.slots is not None:
            self._views = self.slots.map()  # also removes the file: the mapping stays
        return [result[0] for result in results]

    def block(self, result: Any, name: str, summary: ChunkResult, slots: slice) -> da.Array:
        """The pixels ``name`` of one chunk: a view of the shared slots (the slots of
        dropped records skipped by a copy), or the chunk's own array."""
        if self._views is None:
            return _wrap(result[0].array(name))
        view = self._views[list(pixels(self.kinds)).index(name)][slots]
        kept = summary.kept
        return _wrap(view if len(kept) == slots.stop - slots.start else view[kept])

    def finish(self, ds: Any, results: list) -> Any:
        return ds

    def close(self) -> None:
        if self.slots is not None:
            self.slots.unlink()


def _first_summary(chunk: list[ChunkResult]) -> ChunkResult:
    return chunk[0].summary()


def _field(chunk: list[ChunkResult], name: str) -> np.ndarray:
    return chunk[0].array(name)


class ClusterMemory:
    """Chunks held on a cluster's workers, each on the worker that parsed it."""

    def __init__(
        self,
        client: Any,
        shape: tuple[int, int],
        *,
        fit: str = "drop",
        kinds: tuple[str, ...],
    ) -> None:
        self.client, self.shape, self.fit, self.kinds = client, shape, fit, kinds

    @property
    def task(self) -> Callable:
        return functools.partial(
            parse_partition, shape=self.shape, slots=None, fit=self.fit, kinds=self.kinds
        )

    def summaries(self, results: list) -> list[ChunkResult]:
        return self.client.gather(self.client.map(_first_summary, results))

    def block(self, result: Any, name: str, summary: ChunkResult, slots: slice) -> da.Array:
        value = dask.delayed(_field)(result, name)
        return da.from_delayed(value, (len(summary.kept), *self.shape), pixels(self.kinds)[name])

    def finish(self, ds: Any, results: list) -> Any:
        from distributed import futures_of, wait

        # Persist the per-variable pieces, then drop the whole-chunk results: each
        # chunk's pixels are then held once, on the worker that parsed them.
        ds = self.client.persist(ds)
        # As the current client: wait() would otherwise look for a default one, and
        # the caller's client need not be the default.
        with self.client.as_current():
            wait(futures_of(ds))
        results.clear()
        return ds

    def close(self) -> None:
        """The pixels belong to the dataset now."""


def memory_sink(
    executor: Any,
    n_records: int,
    shape: tuple[int, int],
    *,
    fit: str = "drop",
    kinds: tuple[str, ...],
):
    """The memory sink for ``executor``."""
    if executor.kind == "cluster":
        return ClusterMemory(executor.client, shape, fit=fit, kinds=kinds)
    shared = executor.kind == "processes"
    return LocalMemory(n_records, shape, shared=shared, fit=fit, kinds=kinds)


def _wrap(array: np.ndarray) -> da.Array:
    """A one-chunk dask array over ``array`` itself. ``da.from_array`` would copy the
    array (a second full copy of the dataset) and hashing it for a name costs as much."""
    name = f"daskmri-chunk-{uuid.uuid4().hex}"
    return da.Array(
        {(name, 0, 0, 0): array}, name, chunks=tuple((n,) for n in array.shape), dtype=array.dtype
    )


def assemble(plan: ChunkPlan, sink: Any, results: list, *, shape: tuple[int, int], attrs: dict):
    """The dataset of a run: the kept records of every chunk, in plan order, with
    the scan's and the chunks' drops in ``attrs["dropped"]``."""
    import json

    summaries = sink.summaries(results)
    dtypes = pixels(sink.kinds)
    pieces: dict[str, list] = {name: [] for name in dtypes}
    kept = [[chunk[k] for k in s.kept] for chunk, s in zip(plan.chunks, summaries, strict=True)]
    dropped = list(plan.dropped)
    start = 0
    for chunk, summary, result in zip(plan.chunks, summaries, results, strict=True):
        slots, start = slice(start, start + len(chunk)), start + len(chunk)
        dropped.extend(summary.dropped)
        if len(summary.kept):
            for name in dtypes:
                pieces[name].append(sink.block(result, name, summary, slots))
    arrays = {
        name: da.concatenate(parts) if parts else da.zeros((0, *shape), dtypes[name], chunks=-1)
        for name, parts in pieces.items()
    }
    records = [record for chunk in kept for record in chunk]
    ds = to_dataset(
        arrays,
        has={kind: _joined([s.has[kind] for s in summaries]) for kind in sink.kinds},
        geometry=np.concatenate([s.geometry for s in summaries]) if summaries else None,
        patient_id=[r.patient_id for r in records],
        original_id=[r.original_id for r in records],
        instance=[r.instance for r in records],
        planes=plane_coords(attrs, _plane_columns(records)),
        attrs=attrs | {"dropped": json.dumps(dropped)},
    )
    return sink.finish(ds, results)


def _plane_columns(records: list) -> dict[str, list]:
    planes = [r.volume for r in records if r.volume is not None]
    return {name: [getattr(p, name) for p in planes] for name in ("frame", "slice", "phase")}


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, bool)
