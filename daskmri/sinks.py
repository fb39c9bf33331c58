"""Stage 5, sink, in memory: where the chunks' pixels go when the dataset is not
written to a store (for that sink, Zarr regions, see :mod:`daskmri.store`).

- :class:`LocalMemory`: this machine. Local worker processes write their chunks'
  compact arrays straight into shared slots (:class:`~daskmri.parse.Slots`, in
  ``/dev/shm``) and send back summaries; in-process tasks return their arrays as they
  are. No copy either way.
- :class:`ClusterMemory`: a cluster's workers keep the pixels of the chunks they
  parsed; the result is persisted there and only summaries reach the client.

Both turn the chunk results into the same ``xarray.Dataset`` (:func:`assemble`), which
holds the compact arrays only (:mod:`daskmri.compact`); ``image`` and the masks are
derived from them lazily (:func:`daskmri.schema.with_derived`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np

from .compact import FALLBACK, common_dtype, label_dtype, widen
from .parse import ChunkResult, Slots, parse_partition
from .plan import ChunkPlan
from .schema import COMPACT, plane_coords, to_dataset, with_derived

__all__ = ["ClusterMemory", "LocalMemory", "assemble", "memory_sink"]


class LocalMemory:
    """Chunks held in this process's memory. With ``shared`` (local worker
    processes), in regions of a shared buffer when ``/dev/shm`` has the room."""

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
        self._views: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def task(self) -> Callable:
        return functools.partial(
            parse_partition, shape=self.shape, slots=self.slots, fit=self.fit, kinds=self.kinds
        )

    def summaries(self, results: list, starts: list[int]) -> list[ChunkResult]:
        summaries = [result[0] for result in results]
        if self.slots is not None:
            regions = [
                (k, (start, len(s.kept), s.dtype))
                for k, (s, start) in enumerate(zip(summaries, starts, strict=True))
                if s.in_slots and len(s.kept)
            ]
            views = self.slots.map([region for _, region in regions])
            self._views = {k: view for (k, _), view in zip(regions, views, strict=True)}
            self.slots.unlink()  # the mappings keep the memory alive
        return summaries

    def blocks(self, result: Any, k: int, summary: ChunkResult) -> tuple[da.Array, da.Array]:
        """The ``pixels`` and ``labels`` of chunk ``k``: views of its region of the shared
        slots, or the chunk's own arrays."""
        if summary.in_slots:
            pixels, labels = self._views[k]
        else:
            pixels, labels = result[0].pixels, result[0].labels
        return _wrap(pixels), _wrap(labels)

    def finish(self, ds: Any, results: list) -> Any:
        return with_derived(ds)

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

    def summaries(self, results: list, starts: list[int]) -> list[ChunkResult]:
        return self.client.gather(self.client.map(_first_summary, results))

    def blocks(self, result: Any, k: int, summary: ChunkResult) -> tuple[da.Array, da.Array]:
        dims = (len(summary.kept), *self.shape)
        pixels = da.from_delayed(dask.delayed(_field)(result, "pixels"), dims, summary.dtype)
        labels = dask.delayed(_field)(result, "labels")
        return pixels, da.from_delayed(labels, dims, label_dtype(len(self.kinds)))

    def finish(self, ds: Any, results: list) -> Any:
        from distributed import futures_of, wait

        # Persist the compact arrays, then drop the whole-chunk results: each chunk's
        # pixels are then held once, on the worker that parsed them. The image and the
        # masks are derived from them afterwards, so they are never held.
        ds = self.client.persist(ds)
        # As the current client: wait() would otherwise look for a default one, and
        # the caller's client need not be the default.
        with self.client.as_current():
            wait(futures_of(ds))
        results.clear()
        return with_derived(ds)

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


def _in_dtype(pixels: da.Array, summary: ChunkResult, dtype: np.dtype) -> tuple:
    """One chunk's pixels in the dataset's ``dtype``, lazily (a cast, or a widening to
    float32: then slope 1 and intercept 0), with its slope and intercept."""
    slope, intercept = summary.slope, summary.intercept
    if pixels.dtype == dtype:
        return pixels, slope, intercept
    if dtype == FALLBACK:
        meta = np.empty((0, 0, 0), np.float32)
        pixels = pixels.map_blocks(widen, slope, intercept, dtype=np.float32, meta=meta)
        return pixels, np.ones_like(slope), np.zeros_like(intercept)
    return pixels.astype(dtype), slope, intercept


def assemble(plan: ChunkPlan, sink: Any, results: list, *, shape: tuple[int, int], attrs: dict):
    """The dataset of a run: the kept records of every chunk, in plan order, with
    the scan's and the chunks' drops in ``attrs["dropped"]``. Its pixels take the
    dtype that holds every chunk's (:func:`daskmri.compact.common_dtype`): a chunk of
    another dtype is brought to it lazily."""
    import json

    starts = np.cumsum([0] + [len(chunk) for chunk in plan.chunks])[:-1].tolist()
    summaries = sink.summaries(results, starts)
    dtype = common_dtype(s.dtype for s in summaries if len(s.kept))
    pieces: dict[str, list] = {name: [] for name in COMPACT}
    kept = [[chunk[k] for k in s.kept] for chunk, s in zip(plan.chunks, summaries, strict=True)]
    dropped = list(plan.dropped)
    for k, (summary, result) in enumerate(zip(summaries, results, strict=True)):
        dropped.extend(summary.dropped)
        if len(summary.kept):
            pixels, labels = sink.blocks(result, k, summary)
            pixels, slope, intercept = _in_dtype(pixels, summary, dtype)
            for name, part in zip(COMPACT, (pixels, slope, intercept, labels), strict=True):
                pieces[name].append(part)
    empty = {"pixels": dtype, "labels": label_dtype(len(sink.kinds))}
    arrays = {
        name: da.concatenate(pieces[name])
        if pieces[name]
        else da.zeros((0, *shape), empty[name], chunks=-1)
        for name in empty
    }
    records = [record for chunk in kept for record in chunk]
    ds = to_dataset(
        arrays,
        slope=_joined(pieces["slope"], np.float64),
        intercept=_joined(pieces["intercept"], np.float64),
        has={kind: _joined([s.has[kind] for s in summaries], bool) for kind in sink.kinds},
        geometry=np.concatenate([s.geometry for s in summaries]) if summaries else None,
        patient_id=[r.patient_id for r in records],
        original_id=[r.original_id for r in records],
        instance=[r.instance for r in records],
        planes=plane_coords(attrs, _plane_columns(records)),
        attrs=attrs | {"dropped": json.dumps(dropped)},
        derived=False,
    )
    return sink.finish(ds, results)


def _plane_columns(records: list) -> dict[str, list]:
    planes = [r.volume for r in records if r.volume is not None]
    return {name: [getattr(p, name) for p in planes] for name in ("frame", "slice", "phase")}


def _joined(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
