"""Random batches for a training loop: :class:`BatchSchema` plans an epoch,
:class:`BatchIterator` loads it, chunk by chunk, with futures fetched ahead.

The plan is pure (xbatcher's split). For epoch ``e`` the chunks are visited in a
random order seeded by ``(seed, e)``. Each chunk's records are shuffled and dealt
out in ``shuffle_chunks`` parts over as many consecutive *steps*; a step serves
one part of each of the ``shuffle_chunks`` chunks it overlaps, shuffled together,
and the epoch's record stream is the steps one after the other, cut into batches.
So a batch mixes records from several chunks, every record appears exactly once
per epoch, and a batch position always maps to the same records, which is what
makes resuming mid-epoch exact.

Each step needs one new chunk and finishes one old one, so the iterator holds
``shuffle_chunks`` chunks being served plus at most ``prefetch`` chunks fetched
ahead: memory is bounded by ``shuffle_chunks + prefetch`` chunks, whatever the
size of the dataset, and every new chunk is asked for ``prefetch`` steps before
it is needed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
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
        Visit chunks in a random order and shuffle records across chunks.
    seed : int
        Seed of every random choice; epoch ``e`` uses ``(seed, e)``.
    shuffle_chunks : int
        Chunks mixed at each step: records are shuffled across this many chunks.
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

    @property
    def span(self) -> int:
        """Chunks mixed at each step (1 when not shuffling)."""
        return self.shuffle_chunks if self.shuffle else 1

    def order(self, epoch: int) -> np.ndarray:
        """The chunks in visiting order (empty chunks hold nothing and are skipped)."""
        order = np.arange(len(self.chunks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(order)
        return order[np.asarray(self.chunks, dtype=np.int64)[order] > 0]

    def n_steps(self, epoch: int) -> int:
        k = len(self.order(epoch))
        return k + self.span - 1 if k else 0

    def _part_sizes(self, size: int) -> np.ndarray:
        span = self.span
        return np.full(span, size // span) + (np.arange(span) < size % span)

    def step_sizes(self, epoch: int) -> np.ndarray:
        """Records served at each step, known without loading anything."""
        order, span = self.order(epoch), self.span
        sizes = np.zeros(self.n_steps(epoch), dtype=np.int64)
        for k, chunk in enumerate(order):
            sizes[k : k + span] += self._part_sizes(self.chunks[chunk])
        return sizes

    def step(self, epoch: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The records of step ``t``, in serving order: for each, the position of its
        chunk in :meth:`order` and its row within that chunk.

        Chunk ``order[k]`` is shuffled once (seeded by its position) and dealt out
        in ``span`` parts over steps ``k .. k + span - 1``; step ``t`` serves part
        ``t - k`` of each of the ``span`` chunks it overlaps, shuffled together.
        So each step needs one new chunk, and a chunk is done ``span`` steps later.
        """
        order, span = self.order(epoch), self.span
        positions, rows = [], []
        for k in range(max(0, t - span + 1), min(t, len(order) - 1) + 1):
            size = self.chunks[order[k]]
            chunk_rows = np.arange(size)
            if self.shuffle:
                chunk_rows = np.random.default_rng([self.seed, epoch, 1, k]).permutation(size)
            ends = np.cumsum(self._part_sizes(size))
            part = t - k
            chunk_rows = chunk_rows[ends[part] - self._part_sizes(size)[part] : ends[part]]
            positions.append(np.full(len(chunk_rows), k, dtype=np.int64))
            rows.append(chunk_rows.astype(np.int64))
        positions = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        if self.shuffle:
            mix = np.random.default_rng([self.seed, epoch, 2, t]).permutation(len(rows))
            positions, rows = positions[mix], rows[mix]
        return positions, rows

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The records of each batch of ``epoch`` (global indices)."""
        order, starts = self.order(epoch), self.starts
        stream = [
            starts[order[positions]] + rows
            for positions, rows in (self.step(epoch, t) for t in range(self.n_steps(epoch)))
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
        Random chunk order and shuffling across chunks; False serves records in
        dataset order.
    seed : int, optional
        Seed of the whole sequence of epochs; random when None (and then kept in
        :meth:`state_dict`).
    prefetch : int
        Chunks fetched ahead, as futures.
    shuffle_chunks : int
        Chunks mixed at each step: a batch draws from this many chunks.
    drop_last : bool
        Leave out the last, short, batch of each epoch.
    variables : sequence of str, optional
        Data variables to serve; default ``image`` and every contour kind's mask
        (``icontour``, ``ocontour`` in the Sunnybrook layout).
        ``patient_id`` and ``instance`` always come along.
    client : distributed.Client or str, optional
        Fetch through this cluster (``client.compute`` on each chunk's selection).
        By default a dataset persisted on a cluster is fetched through that
        cluster's client; anything else through a local thread pool.
    retries : int
        Times a failed chunk fetch is tried again before it is raised.
    timeout : float
        Seconds to wait for one chunk before giving up with an error.
    security : distributed.Security, optional
        TLS settings when ``client`` is a ``tls://`` address.

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
        security: Any = None,
    ) -> None:
        if variables is None:  # the image and every mask that has its has_<kind>
            masks = [v for v in ds.data_vars if f"has_{v}" in ds.data_vars]
            variables = ("image", *masks) if masks else VARIABLES
        variables = tuple(variables)
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
        self.client = self._client(client, security)
        self.epoch = 0
        self._position = 0  # batches of the current epoch already served
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._closed = False

    def _client(self, client, security=None):
        if client is not None:
            from .execute import resolve_client

            return resolve_client(client, security=security)
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
    """One pass over the data. A background thread assembles the batches (a copy of
    each record, which numpy does without holding the GIL) into a small queue while
    the training step runs, so ``next()`` only takes a batch that is ready."""

    def __init__(self, owner: BatchIterator, epoch: int, position: int) -> None:
        self.owner = owner
        self.epoch = epoch
        self.position = position
        self._queue: queue.Queue = queue.Queue(maxsize=READY_BATCHES)
        self._stop = threading.Event()
        # The thread holds the generator, not this object: dropping the epoch (a
        # `break`) lets __del__ stop the thread.
        self._thread = threading.Thread(
            target=_produce,
            args=(_batches(owner, epoch, position), self._queue, self._stop),
            name="daskmri-prefetch-batches",
            daemon=True,
        )
        self._started = False
        self._finished = False

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._finished:
            raise StopIteration
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            try:
                kind, value = self._queue.get(timeout=POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise DaskmriError("the batch thread stopped unexpectedly") from None
        if kind == "batch":
            self.position += 1
            self.owner._position = self.position
            return value
        self._finished = True
        self._join()
        if kind == "error":
            raise value
        self.owner.epoch = self.epoch + 1
        self.owner._position = 0
        raise StopIteration

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        self._join()

    def _join(self) -> None:
        if self._started and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.owner.timeout + 10)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


#: Batches assembled ahead of the training loop, and how often waits look up.
READY_BATCHES = 2
POLL = 0.1


def _produce(batches: Iterator[dict], ready: queue.Queue, stop: threading.Event) -> None:
    """The batch thread: run the epoch's generator into ``ready`` until it ends, fails
    or is told to stop; closing the generator releases its futures and threads."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    try:
        for batch in batches:
            if not put(("batch", batch)):
                return
        put(("end", None))
    except BaseException as exc:  # handed to the consumer, raised there
        put(("error", exc))
    finally:
        batches.close()


def _batches(owner: BatchIterator, epoch: int, position: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches of ``epoch`` from batch ``position`` on: the plan, loaded."""
    schema = owner.schema
    batch_size, span = schema.batch_size, schema.span
    order = schema.order(epoch)
    ends = np.cumsum(schema.step_sizes(epoch))
    skip = position * batch_size  # records already served this epoch
    first = int(np.searchsorted(ends, skip, side="right")) if len(ends) else 0
    skip -= int(ends[first - 1]) if first else 0
    fetcher = _Fetcher(owner.ds, owner.variables, owner.client, max(1, owner.prefetch))
    # The chunks the first step needs, onward.
    ahead = _Ahead(fetcher, schema, order, max(0, first - span + 1))
    pending = ahead.pending
    loaded: dict[int, dict[str, np.ndarray]] = {}

    carry: dict[str, np.ndarray] | None = None
    try:
        for t in range(first, len(ends)):
            # This step's new chunk, plus `prefetch` chunks after it.
            ahead.submit_until(t + owner.prefetch)
            while pending and pending[0][0] <= t:
                k, future = pending.popleft()
                loaded[k] = _take(owner, fetcher, int(order[k]), future)
            positions, rows = schema.step(epoch, t)
            positions, rows = positions[skip:], rows[skip:]
            skip = 0
            n, i = len(rows), 0
            if carry is not None:
                # A batch that straddles two steps.
                i = min(batch_size - len(carry["instance"]), n)
                head = _assemble(loaded, positions[:i], rows[:i])
                carry = {name: np.concatenate([carry[name], head[name]]) for name in head}
                if len(carry["instance"]) < batch_size:
                    loaded.pop(t - span + 1, None)
                    continue
                yield carry
                carry = None
            while i + batch_size <= n:
                yield _assemble(loaded, positions[i : i + batch_size], rows[i : i + batch_size])
                i += batch_size
            if i < n:
                carry = _assemble(loaded, positions[i:], rows[i:])
            # Chunk t - span + 1 has served its last part.
            loaded.pop(t - span + 1, None)
        if carry is not None and not schema.drop_last:
            yield carry
    finally:
        for _, future in pending:
            fetcher.release(future)
        pending.clear()
        loaded.clear()
        fetcher.close()


class _Ahead:
    """The chunks of an epoch submitted ahead of the step that needs them: ``pending``
    holds ``(position in order, future)``, oldest first."""

    def __init__(self, fetcher: _Fetcher, schema: BatchSchema, order, first: int) -> None:
        self.fetcher, self.schema, self.order = fetcher, schema, order
        self.submitted = first
        self.pending: collections.deque = collections.deque()

    def submit_until(self, k_last: int) -> None:
        """Submit every chunk up to position ``k_last`` in the order."""
        starts, sizes = self.schema.starts, self.schema.chunks
        while self.submitted <= min(k_last, len(self.order) - 1):
            c = int(self.order[self.submitted])
            future = self.fetcher.submit(c, starts[c], starts[c] + sizes[c])
            self.pending.append((self.submitted, future))
            self.submitted += 1


def _take(owner: BatchIterator, fetcher: _Fetcher, chunk: int, future) -> dict:
    """Chunk ``chunk``'s arrays from its future: retried, and bounded in time."""
    start = int(owner.schema.starts[chunk])
    stop = start + int(owner.schema.chunks[chunk])
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


def _assemble(
    loaded: dict[int, dict], positions: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """A batch: row ``rows[j]`` of loaded chunk ``positions[j]``, for each j, copied once
    into fresh arrays that the caller may keep."""
    first = next(iter(loaded.values()))
    out = {
        name: np.empty((len(rows), *values.shape[1:]), dtype=values.dtype)
        for name, values in first.items()
    }
    for j, (k, r) in enumerate(zip(positions.tolist(), rows.tolist(), strict=True)):
        chunk = loaded[k]
        for name, values in out.items():
            values[j] = chunk[name][r]
    return out
