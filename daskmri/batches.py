"""Random batches for a training loop: :class:`BatchSchema` plans an epoch,
:class:`BatchIterator` loads it, chunk by chunk, with futures fetched ahead.

The plan is pure (xbatcher's split): for epoch ``e`` the chunks are visited in a
random order seeded by ``(seed, e)``; consecutive groups of ``shuffle_chunks``
chunks form a *window*, whose records are shuffled together (seeded by
``(seed, e, window)``), and the epoch's record stream is the windows one after
the other, cut into batches. Every record appears exactly once per epoch, and a
batch position always maps to the same records, which is what makes resuming
mid-epoch exact.

The iterator holds the current window and at most ``prefetch`` chunks fetched
ahead: memory is bounded by ``shuffle_chunks + prefetch`` chunks, whatever the
size of the dataset.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.optimization import cull

from .errors import DaskmriError

__all__ = ["BatchIterator", "BatchSchema"]

logger = logging.getLogger(__name__)

VARIABLES = ("image", "icontour", "ocontour")
COORDS = ("patient_id", "instance")


@dataclass(frozen=True)
class BatchSchema:
    """The plan of every epoch: which records each batch holds. Pure; loads nothing.

    Parameters
    ----------
    chunks : tuple of int
        Records per chunk, in dataset order (the dataset's ``record`` chunks).
    batch_size : int
        Records per batch.
    shuffle : bool
        Visit chunks in a random order and shuffle records within windows.
    seed : int
        Seed of every random choice; epoch ``e`` uses ``(seed, e)``.
    shuffle_chunks : int
        Chunks per window: records are shuffled across this many chunks.
    drop_last : bool
        Leave out the last batch of an epoch when it is short.

    Examples
    --------
    >>> schema = BatchSchema(chunks=(3, 3, 2), batch_size=3, seed=0, shuffle_chunks=2)
    >>> len(schema), schema.n_records
    (3, 8)
    >>> batches = [b.tolist() for b in schema.batches(epoch=0)]
    >>> sorted(sum(batches, []))  # every record once
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> batches == [b.tolist() for b in schema.batches(epoch=0)]  # same seed, same order
    True
    """

    chunks: tuple[int, ...]
    batch_size: int = 8
    shuffle: bool = True
    seed: int = 0
    shuffle_chunks: int = 4
    drop_last: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "shuffle_chunks"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def n_records(self) -> int:
        return int(sum(self.chunks))

    @property
    def starts(self) -> np.ndarray:
        """First record of each chunk."""
        return np.concatenate([[0], np.cumsum(self.chunks)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.n_records, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def windows(self, epoch: int) -> list[np.ndarray]:
        """The chunk indices of each window of ``epoch``, in visiting order."""
        order = np.arange(len(self.chunks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        order = order[np.asarray(self.chunks)[order] > 0]  # empty chunks hold nothing
        step = self.shuffle_chunks
        return [order[i : i + step] for i in range(0, len(order), step)]

    def window_records(self, epoch: int, window: int, chunks: np.ndarray) -> np.ndarray:
        """The records of a window in the order they are served (global indices)."""
        starts = self.starts
        records = np.concatenate(
            [np.arange(starts[c], starts[c] + self.chunks[c]) for c in chunks]
        ).astype(np.int64)
        if self.shuffle:
            records = np.random.default_rng([self.seed, epoch, window]).permutation(records)
        return records

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The records of each batch of ``epoch`` (global indices)."""
        stream = [
            self.window_records(epoch, w, chunks) for w, chunks in enumerate(self.windows(epoch))
        ]
        records = np.concatenate(stream) if stream else np.zeros(0, np.int64)
        for k in range(len(self)):
            yield records[k * self.batch_size : (k + 1) * self.batch_size]


def _chunks_of(ds, variables: Sequence[str], default: int = 64) -> tuple[int, ...]:
    data = ds[variables[0]].data
    chunks = getattr(data, "chunks", None)
    if chunks is not None:
        return tuple(int(c) for c in chunks[0])
    n = ds.sizes["record"]
    size = int(ds.attrs.get("chunk_size", default) or default)
    return tuple(min(size, n - s) for s in range(0, n, size))


class _Fetcher:
    """Loads one chunk's records as numpy arrays, as a future: through a distributed
    client (``client.compute`` on the chunk's selection), or a local thread that runs
    the chunk's own small task graph."""

    def __init__(self, ds, variables, client, threads: int) -> None:
        self.arrays = {name: ds[name].data for name in variables}
        self.coords = {name: np.asarray(ds[name].values) for name in COORDS}
        self.client = client
        self._graphs: dict[str, dict] = {}
        self.executor = (
            None
            if client is not None
            else concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="daskmri-prefetch"
            )
        )

    def submit(self, chunk: int, start: int, stop: int):
        if self.client is not None:
            lazy = {
                name: array.blocks[chunk]
                for name, array in self.arrays.items()
                if dask.is_dask_collection(array)
            }
            return self.client.compute(lazy) if lazy else _done({})
        return self.executor.submit(self._load, chunk)

    def _load(self, chunk: int) -> dict:
        out = {}
        for name, array in self.arrays.items():
            if not dask.is_dask_collection(array):
                continue
            # The block's own tasks, culled from the array's graph (materialised once per
            # epoch: a few hundred bytes per chunk, no data): computing a slice through
            # dask.compute costs ~10 ms of graph handling per chunk, this ~0.4 ms.
            graph = self._graphs.get(name)
            if graph is None:
                graph = self._graphs[name] = dict(array.__dask_graph__())
            key = (array.name, chunk, *(0,) * (array.ndim - 1))
            out[name] = np.asarray(dask.get(cull(graph, [key])[0], key))
        return out

    def result(self, future, start: int, stop: int, timeout: float) -> dict[str, np.ndarray]:
        values = future.result(timeout=timeout)
        arrays = {}
        for name, array in self.arrays.items():
            value = values[name] if name in values else array[start:stop]
            arrays[name] = np.asarray(value)
        for name, coord in self.coords.items():
            arrays[name] = coord[start:stop]
        return arrays

    def release(self, future) -> None:
        if hasattr(future, "release"):  # a distributed future: forget it on the cluster
            future.release()
        else:
            future.cancel()

    def close(self) -> None:
        if self.executor is not None:
            # Wait: no prefetch thread may outlive the iterator.
            self.executor.shutdown(wait=True, cancel_futures=True)


def _done(value):
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


class BatchIterator:
    """Random batches of records for a training loop, one epoch per iteration.

    Parameters
    ----------
    ds : xarray.Dataset
        In memory, dask-backed (``load_dataset``, persisted or not), or lazy from a
        Zarr store (``open_dataset``).
    batch_size : int
        Records per batch.
    shuffle : bool
        Random chunk order and shuffling within windows; False serves records in
        dataset order.
    seed : int, optional
        Seed of the whole sequence of epochs; random when None (and then kept in
        :meth:`state_dict`).
    prefetch : int
        Chunks fetched ahead, as futures.
    shuffle_chunks : int
        Chunks per shuffling window: a batch mixes records from this many chunks.
    drop_last : bool
        Leave out the last, short, batch of each epoch.
    variables : sequence of str, optional
        Data variables to serve; default ``image``, ``icontour``, ``ocontour``.
        ``patient_id`` and ``instance`` always come along.
    client : distributed.Client or str, optional
        Fetch through this cluster (``client.compute`` on each chunk's selection).
        By default a dataset persisted on a cluster is fetched through that
        cluster's client; anything else through a local thread pool.
    retries : int
        Times a failed chunk fetch is tried again before it is raised.
    timeout : float
        Seconds to wait for one chunk before giving up with an error.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=8, shape=(16, 16))
    >>> ds = daskmri.load_dataset(root, chunk_size=4, scheduler="sync")
    >>> with BatchIterator(ds, batch_size=4, seed=0) as it:
    ...     batches = list(it)
    >>> len(it), len(batches), sorted(batches[0])
    (3, 3, ['icontour', 'image', 'instance', 'ocontour', 'patient_id'])
    >>> batches[0]["image"].shape, it.epoch
    ((4, 16, 16), 1)
    """

    def __init__(
        self,
        ds,
        batch_size: int = 8,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        prefetch: int = 2,
        shuffle_chunks: int = 4,
        drop_last: bool = False,
        variables: Sequence[str] | None = None,
        client: Any = None,
        retries: int = 2,
        timeout: float = 300.0,
    ) -> None:
        variables = tuple(VARIABLES if variables is None else variables)
        missing = [v for v in (*variables, *COORDS) if v not in ds.variables]
        if missing:
            raise ValueError(
                f"the dataset has no {missing}; BatchIterator needs a daskmri dataset "
                f"(load_dataset or open_dataset) with {list(variables) + list(COORDS)}"
            )
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % 2**63)
        self.ds = ds
        self.variables = variables
        self.prefetch = prefetch
        self.retries = retries
        self.timeout = timeout
        self.schema = BatchSchema(
            chunks=_chunks_of(ds, variables),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            shuffle_chunks=shuffle_chunks,
            drop_last=drop_last,
        )
        self.client = self._client(client)
        self.epoch = 0
        self._position = 0  # batches of the current epoch already served
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._closed = False

    def _client(self, client):
        if client is not None:
            from .cluster import resolve_client

            return resolve_client(client)
        try:
            from distributed import futures_of
        except ImportError:  # pragma: no cover - distributed is a core dependency
            return None
        futures = futures_of(self.ds)
        return futures[0].client if futures else None

    @property
    def seed(self) -> int:
        return self.schema.seed

    def __len__(self) -> int:
        return len(self.schema)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._closed:
            raise DaskmriError("this BatchIterator is closed; make a new one")
        epoch = _Epoch(self, self.epoch, self._position)
        self._live.add(epoch)
        return epoch

    def state_dict(self) -> dict:
        """Where the iteration stands: enough to resume with :meth:`load_state_dict`.

        Examples
        --------
        >>> it = BatchIterator.__new__(BatchIterator)
        >>> it.schema = BatchSchema(chunks=(4,), batch_size=2, seed=5)
        >>> it.epoch, it._position = 3, 1
        >>> it.state_dict()["epoch"], it.state_dict()["batch"]
        (3, 1)
        """
        s = self.schema
        return {
            "epoch": self.epoch,
            "batch": self._position,
            "seed": s.seed,
            "batch_size": s.batch_size,
            "shuffle": s.shuffle,
            "shuffle_chunks": s.shuffle_chunks,
            "drop_last": s.drop_last,
            "chunks": list(s.chunks),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next iteration serves the rest of that
        epoch, batch for batch as the interrupted run would have.

        Raises
        ------
        ValueError
            If the state is from an iterator with other settings or another dataset.
        """
        s = self.schema
        mine = {
            "batch_size": s.batch_size,
            "shuffle": s.shuffle,
            "shuffle_chunks": s.shuffle_chunks,
            "drop_last": s.drop_last,
            "chunks": list(s.chunks),
        }
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"the state was saved with {key}={state[key]!r}, this iterator has "
                    f"{value!r}; make the iterator with the same settings and dataset"
                )
        self.schema = BatchSchema(**{**mine, "chunks": s.chunks, "seed": int(state["seed"])})
        self.epoch = int(state["epoch"])
        self._position = int(state["batch"])

    def close(self) -> None:
        """Stop every epoch in progress and release every future it holds."""
        self._closed = True
        for epoch in list(self._live):
            epoch.close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown anything may be gone
            self.close()


class _Epoch:
    """One pass over the data: an iterator that owns its futures and threads."""

    def __init__(self, owner: BatchIterator, epoch: int, position: int) -> None:
        self.owner = owner
        self.epoch = epoch
        self.schema = owner.schema
        self._gen = self._run(position)

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def __del__(self) -> None:
        self._gen.close()

    def _run(self, position: int) -> Iterator[dict[str, np.ndarray]]:
        owner, schema = self.owner, self.schema
        batch_size = schema.batch_size
        windows = schema.windows(self.epoch)
        sizes = [int(sum(schema.chunks[c] for c in w)) for w in windows]
        ends = np.cumsum(sizes)
        skip = position * batch_size  # records already served this epoch
        first = int(np.searchsorted(ends, skip, side="right")) if len(ends) else 0
        skip -= int(ends[first - 1]) if first else 0
        order = [int(c) for w in windows[first:] for c in w]
        needed_by = np.cumsum([len(w) for w in windows[first:]])
        starts = schema.starts
        fetcher = _Fetcher(owner.ds, owner.variables, owner.client, max(1, owner.prefetch))
        pending: collections.deque = collections.deque()  # (chunk, future), in order
        submitted = 0

        def submit_until(count: int) -> None:
            nonlocal submitted
            while submitted < min(count, len(order)):
                c = order[submitted]
                pending.append((c, fetcher.submit(c, starts[c], starts[c] + schema.chunks[c])))
                submitted += 1

        carry: dict[str, np.ndarray] | None = None
        served = position
        try:
            for w, window in enumerate(windows[first:], start=first):
                # This window, plus `prefetch` chunks of what follows.
                submit_until(int(needed_by[w - first]) + owner.prefetch)
                loaded = [self._take(fetcher, pending, starts) for _ in window]
                records = schema.window_records(self.epoch, w, window)
                offsets = np.concatenate([[0], np.cumsum([schema.chunks[c] for c in window])])
                rows = _local_positions(records, window, starts, offsets)[skip:]
                skip = 0
                part = np.searchsorted(offsets, rows, side="right") - 1
                local = rows - offsets[part]
                n, i = len(rows), 0
                if carry is not None:
                    # A batch that straddles two windows.
                    i = min(batch_size - len(carry["instance"]), n)
                    head = _assemble(loaded, part[:i], local[:i])
                    carry = {name: np.concatenate([carry[name], head[name]]) for name in head}
                    if len(carry["instance"]) < batch_size:
                        continue
                    served += 1
                    owner._position = served
                    yield carry
                    carry = None
                while i + batch_size <= n:
                    batch = _assemble(loaded, part[i : i + batch_size], local[i : i + batch_size])
                    served += 1
                    owner._position = served
                    yield batch
                    i += batch_size
                if i < n:
                    carry = _assemble(loaded, part[i:], local[i:])
                del loaded
            if carry is not None and not schema.drop_last:
                served += 1
                owner._position = served
                yield carry
            owner.epoch = self.epoch + 1
            owner._position = 0
        finally:
            for _, future in pending:
                fetcher.release(future)
            pending.clear()
            fetcher.close()

    def _take(self, fetcher: _Fetcher, pending: collections.deque, starts) -> dict:
        owner = self.owner
        chunk, future = pending.popleft()
        start, stop = int(starts[chunk]), int(starts[chunk] + self.schema.chunks[chunk])
        for attempt in range(owner.retries + 1):
            try:
                values = fetcher.result(future, start, stop, owner.timeout)
                fetcher.release(future)
                return values
            except concurrent.futures.TimeoutError:
                fetcher.release(future)
                raise DaskmriError(
                    f"records {start}:{stop} (chunk {chunk}) did not arrive within "
                    f"{owner.timeout:g} s; is the cluster alive? (BatchIterator(timeout=...))"
                ) from None
            except Exception as exc:
                fetcher.release(future)
                if attempt == owner.retries:
                    raise DaskmriError(
                        f"could not load records {start}:{stop} (chunk {chunk}) after "
                        f"{owner.retries + 1} tries: {type(exc).__name__}: {exc}"
                    ) from exc
                logger.warning("fetching chunk %d failed (%s); trying again", chunk, exc)
                future = fetcher.submit(chunk, start, stop)
        raise AssertionError("unreachable")  # pragma: no cover


def _local_positions(records, window, starts, offsets) -> np.ndarray:
    """Map global record indices of a window to rows of the window's concatenated data."""
    positions = np.empty(len(records), dtype=np.int64)
    for j, c in enumerate(window):
        lo, hi = starts[c], starts[c] + (offsets[j + 1] - offsets[j])
        inside = (records >= lo) & (records < hi)
        positions[inside] = records[inside] - lo + offsets[j]
    return positions


def _assemble(loaded: list[dict], part: np.ndarray, local: np.ndarray) -> dict[str, np.ndarray]:
    """A batch: record ``local[k]`` of chunk ``part[k]``, for each k, copied once into
    fresh arrays that the caller may keep."""
    out = {}
    for name, first in loaded[0].items():
        out[name] = np.empty((len(part), *first.shape[1:]), dtype=first.dtype)
    for k, (j, r) in enumerate(zip(part.tolist(), local.tolist(), strict=True)):
        chunk = loaded[j]
        for name, values in out.items():
            values[k] = chunk[name][r]
    return out
