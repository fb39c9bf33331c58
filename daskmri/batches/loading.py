"""An epoch's plan, loaded: :func:`load_batches` turns this rank's plan into batches,
asking a :class:`~daskmri.batches.fetching.Fetcher` for each chunk ``prefetch``
chunks before it is first needed and dropping it after its last use; it runs on the
epoch's background thread (:mod:`daskmri.batches.epoch`).

Once every chunk of an epoch has been asked for, the chunks that the next epoch's
first batch needs are fetched too (a :class:`WarmStart`), and handed to that epoch
through the iterator's :class:`WarmSlot`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import DaskmriError
from .buffers import Recycler
from .fetching import Fetch, Fetcher, FetchSettings, Stopped
from .rng import Stream, generator
from .schema import BatchSchema, Stretch
from .serving import Serving, take_rows

__all__ = [
    "Ahead",
    "FetchCounts",
    "Loading",
    "Transform",
    "WarmSlot",
    "WarmStart",
    "apply_transform",
    "assemble",
    "load_batches",
    "take",
]

logger = logging.getLogger(__name__)

Transform = Callable[[dict, np.random.Generator], dict]


class FetchCounts:
    """What the epochs loaded: written by the batch threads, read by the iterator.

    Attributes
    ----------
    chunks, nbytes : int
        Chunks loaded so far, and the bytes of their served variables.
    epoch_chunks : list of int
        The chunks loaded for the latest epoch, in order (a new list each epoch).

    Examples
    --------
    >>> counts = FetchCounts()
    >>> counts.begin_epoch()
    >>> counts.count(4, {"image": np.zeros(3, np.float32)}, ("image",))
    >>> counts.chunks, counts.nbytes, counts.epoch_chunks
    (1, 12, [4])
    """

    def __init__(self) -> None:
        self.chunks, self.nbytes = 0, 0
        self.epoch_chunks: list[int] = []

    def begin_epoch(self) -> None:
        """Start the list of an epoch's chunks afresh (one kept earlier stays as it is)."""
        self.epoch_chunks = []

    def count(self, chunk: int, values: dict[str, np.ndarray], variables: tuple) -> None:
        """Count chunk ``chunk``, loaded as ``values``."""
        self.chunks += 1
        self.nbytes += sum(values[name].nbytes for name in variables)
        self.epoch_chunks.append(chunk)


@dataclass
class WarmStart:
    """The first chunks of epoch ``epoch``, submitted through ``fetcher`` while the
    epoch before it ended, so that its first batch does not wait for them.

    Attributes
    ----------
    epoch : int
        The epoch they are for (from its start).
    fetcher : Fetcher
        The fetcher that holds them; the epoch goes on with it.
    pending : list of (int, Fetch)
        The chunks, in fetch order, and their fetches.
    """

    epoch: int
    fetcher: Fetcher
    pending: list[tuple[int, Fetch]]

    def release(self, *, wait: bool = True) -> None:
        """Let the chunks go and close the fetcher (``wait``: for its threads too)."""
        for _, fetch in self.pending:
            fetch.release()
        self.fetcher.close(wait=wait)


class WarmSlot:
    """Where a finished epoch leaves its :class:`WarmStart` for the next one: at most
    one at a time, none once closed. Thread-safe (epochs end on their own threads).

    Examples
    --------
    >>> slot = WarmSlot()
    >>> slot.held is None, slot.take() is None
    (True, True)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: WarmStart | None = None
        self._closed = False

    @property
    def held(self) -> WarmStart | None:
        """The warm start held for the next epoch, if any."""
        return self._held

    def take(self) -> WarmStart | None:
        """The warm start held, which the slot no longer holds."""
        with self._lock:
            held, self._held = self._held, None
            return held

    def keep(self, warm: WarmStart) -> bool:
        """Hold ``warm`` for the next epoch; False (kept by no one) when the slot is
        closed or holds one already."""
        with self._lock:
            if self._closed or self._held is not None:
                return False
            self._held = warm
            return True

    def drop(self, *, wait: bool = True) -> None:
        """Release the warm start held, if any (``wait``: for its threads too)."""
        held = self.take()
        if held is not None:
            held.release(wait=wait)

    def close(self, *, wait: bool = True) -> None:
        """Release what is held and hold nothing from now on."""
        with self._lock:
            self._closed = True
        self.drop(wait=wait)


@dataclass(frozen=True, kw_only=True)
class Loading:
    """Everything an epoch's batch thread needs, fixed when the epoch is made.

    Attributes
    ----------
    schema : BatchSchema
        The plan of every epoch.
    fetching : FetchSettings
        The dataset, variables and backend.
    prefetch, retries : int
        Chunks fetched ahead; times a failed fetch is tried again.
    timeout : float
        Seconds to wait for one chunk.
    transform : callable or None
        ``transform(batch, rng) -> batch``.
    counts : FetchCounts
        Where loaded chunks are counted.
    warm : WarmSlot
        Where warm starts are left and found.
    serving : Serving, optional
        What a batch holds, made from the fetched arrays (None: the fetched arrays).
    buffers : Recycler
        Where the batches' arrays come from.
    """

    schema: BatchSchema
    fetching: FetchSettings
    prefetch: int
    retries: int
    timeout: float
    transform: Transform | None
    counts: FetchCounts
    warm: WarmSlot
    serving: Serving | None = None
    buffers: Recycler = field(default_factory=lambda: Recycler(capacity=0))


def load_batches(
    loading: Loading,
    epoch: int,
    history: tuple[Stretch, ...],
    position: int,
    stop: threading.Event,
) -> Iterator[dict[str, np.ndarray]]:
    """This rank's batches of ``epoch`` after ``history``, from batch ``position`` on:
    the plan, loaded. Closing the generator releases every fetch it holds.

    Parameters
    ----------
    loading : Loading
        The plan, the fetching and the rest.
    epoch, position : int
        The epoch, and the first batch of its current stretch to serve.
    history : tuple of Stretch
        The stretches of the epoch served before.
    stop : threading.Event
        Set to stop: a wait for a chunk ends within moments.

    Returns
    -------
    iterator of dict
        Each batch: the variables, ``patient_id``, ``instance`` and ``padding``.

    Raises
    ------
    DaskmriError
        If a chunk cannot be loaded (after the retries), does not arrive in time, or
        the transform fails.
    daskmri.batches.fetching.Stopped
        If told to stop while waiting for a chunk.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({"v": ("record", np.arange(4))},
    ...                 coords={"patient_id": ("record", list("AABB")),
    ...                         "instance": ("record", np.arange(4))})
    >>> schema = BatchSchema(chunks=(4,), batch_size=3, shuffle=False)
    >>> loading = Loading(schema=schema, fetching=FetchSettings(ds, ("v",), (4,)),
    ...                   prefetch=1, retries=0, timeout=10.0, transform=None,
    ...                   counts=FetchCounts(), warm=WarmSlot())
    >>> [b["v"].tolist() for b in load_batches(loading, 0, (), 0, threading.Event())]
    [[0, 1, 2], [3]]
    """
    schema = loading.schema
    plan = schema.plan(epoch, history)
    chunks, first, last = plan.fetches(min(position * schema.batch_size, len(plan.records)))
    done_after = dict(zip(chunks.tolist(), last.tolist(), strict=True))
    fetcher, carried = _fetcher_for(loading, epoch, history, position, chunks)
    ahead = Ahead(loading, fetcher, chunks.tolist(), carried, stop)
    # Batch k of rank r is global batch `offset + k * world_size + r` of the epoch.
    offset = sum(h.world_size * h.batches for h in history)
    loading.counts.begin_epoch()
    following: list = []  # the next epoch's first chunks, once all of this one's are asked for
    warmed = completed = False
    try:
        for k in range(position, len(plan)):
            where = plan.batch(k)
            needed = int(np.searchsorted(first, where.stop))  # chunks first used by now
            ahead.submit_until(needed + loading.prefetch)
            if not warmed and ahead.submitted == len(ahead.chunks):
                following, warmed = _warm_start(schema, epoch + 1, fetcher), True
            ahead.take_until(needed)
            records, in_chunk = plan.records[where], plan.chunks[where]
            rows = records - schema.starts[in_chunk]
            empty = loading.buffers.empty
            if loading.serving is not None and loading.serving.widens:
                # Widened here, off the training loop, as the records are gathered.
                batch = loading.serving.gather(ahead.loaded, in_chunk, rows, empty)
            else:
                batch = assemble(ahead.loaded, in_chunk, rows, empty)
            batch["padding"] = plan.padding[where].copy()
            ahead.forget(c for c in list(ahead.loaded) if done_after[c] < where.stop)
            if loading.transform is not None:
                index = offset + k * schema.world_size + schema.rank
                batch = apply_transform(loading, batch, epoch, index)
            yield batch
        completed = True
    finally:
        ahead.release()
        warm = WarmStart(epoch + 1, fetcher, following)
        if not (completed and following and loading.warm.keep(warm)):
            warm.release()


def _warm_start(schema: BatchSchema, epoch: int, fetcher: Fetcher) -> list[tuple[int, Fetch]]:
    """Submit the chunks that the first batch of ``epoch`` (from its start) needs."""
    plan = schema.plan(epoch, ())
    if not len(plan):
        return []
    chunks, first, _ = plan.fetches(0)
    needed = int(np.searchsorted(first, plan.batch(0).stop))
    return [(c, fetcher.submit(c)) for c in chunks[:needed].tolist()]


def _fetcher_for(
    loading: Loading, epoch: int, history: tuple, position: int, chunks: np.ndarray
) -> tuple[Fetcher, list[tuple[int, Fetch]]]:
    """The fetcher for an epoch and the fetches it already holds: those of a warm
    start that matches (this epoch, from its start), else a new fetcher."""
    warm = loading.warm.take()
    if warm is not None:
        carried = [c for c, _ in warm.pending]
        if (warm.epoch, history, position) == (epoch, (), 0) and carried == list(
            chunks[: len(carried)]
        ):
            return warm.fetcher, warm.pending
        warm.release()
    return loading.fetching.fetcher(), []


class Ahead:
    """The chunks of a plan, submitted ahead of the batch that first needs them:
    ``pending`` holds ``(chunk, fetch)`` in fetch order, ``loaded`` the arrays of the
    chunks in use. Its counts (``submitted``, ``taken``) move only by its methods.

    Parameters
    ----------
    loading : Loading
        Retries, timeout and counts.
    fetcher : Fetcher
        Where chunks are asked for.
    chunks : list of int
        The fetch order.
    carried : list of (int, Fetch)
        Fetches of the first chunks, submitted while the previous epoch ended.
    stop : threading.Event
        Set to stop waiting.
    """

    def __init__(
        self,
        loading: Loading,
        fetcher: Fetcher,
        chunks: list[int],
        carried: list[tuple[int, Fetch]],
        stop: threading.Event,
    ) -> None:
        self.loading, self.fetcher, self.chunks, self.stop = loading, fetcher, chunks, stop
        self.pending: collections.deque = collections.deque(carried)
        self.loaded: dict[int, dict[str, np.ndarray]] = {}
        self._submitted, self._taken = len(carried), 0

    @property
    def submitted(self) -> int:
        """Chunks of the fetch order asked for so far."""
        return self._submitted

    @property
    def taken(self) -> int:
        """Chunks of the fetch order loaded so far."""
        return self._taken

    def submit_until(self, n: int) -> None:
        """Submit the first ``n`` chunks of the fetch order."""
        while self._submitted < min(n, len(self.chunks)):
            c = self.chunks[self._submitted]
            self.pending.append((c, self.fetcher.submit(c)))
            self._submitted += 1

    def take_until(self, n: int) -> None:
        """Wait for the first ``n`` chunks of the fetch order."""
        while self._taken < n:
            chunk, fetch = self.pending.popleft()
            self.loaded[chunk] = take(self.loading, self.fetcher, fetch, self.stop)
            self.loading.counts.count(chunk, self.loaded[chunk], self.fetcher.settings.variables)
            self._taken += 1

    def forget(self, chunks) -> None:
        """Drop loaded ``chunks``: their last record is served."""
        for chunk in chunks:
            del self.loaded[chunk]

    def release(self) -> None:
        """Let every pending fetch go and drop the loaded chunks."""
        for _, fetch in self.pending:
            fetch.release()
        self.pending.clear()
        self.loaded.clear()


def take(
    loading: Loading, fetcher: Fetcher, fetch: Fetch, stop: threading.Event | None = None
) -> dict[str, np.ndarray]:
    """A chunk's arrays from its fetch: retried, and bounded in time.

    Parameters
    ----------
    loading : Loading
        ``retries`` and ``timeout``.
    fetcher : Fetcher
        Where a retry asks again.
    fetch : Fetch
        The chunk on its way.
    stop : threading.Event, optional
        Set to stop waiting.

    Returns
    -------
    dict
        The chunk's arrays by name.

    Raises
    ------
    DaskmriError
        If the chunk does not arrive within ``timeout`` seconds, or still fails after
        ``retries`` more tries.
    daskmri.batches.fetching.Stopped
        If ``stop`` is set while waiting.
    """
    where = f"records {fetch.start}:{fetch.stop} (chunk {fetch.chunk})"
    for attempt in range(loading.retries + 1):
        try:
            values = fetch.result(loading.timeout, stop)
            fetch.release()
            return values
        except concurrent.futures.TimeoutError:
            fetch.release()
            raise DaskmriError(
                f"{where} did not arrive within {loading.timeout:g} s; is the cluster "
                "alive? (BatchIterator(timeout=...))"
            ) from None
        except Stopped:
            fetch.release()
            raise
        except Exception as exc:
            fetch.release()
            if attempt == loading.retries:
                raise DaskmriError(
                    f"could not load {where} after {loading.retries + 1} tries: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            logger.warning("fetching chunk %d failed (%s); trying again", fetch.chunk, exc)
            fetch = fetcher.submit(fetch.chunk)
    raise AssertionError("unreachable")  # pragma: no cover


def assemble(
    loaded: dict[int, dict], chunks: np.ndarray, rows: np.ndarray, empty: Callable = np.empty
) -> dict[str, np.ndarray]:
    """A batch: row ``rows[j]`` of loaded chunk ``chunks[j]``, for each j, copied once
    into fresh arrays that the caller may keep (any dtype and shape).

    Parameters
    ----------
    loaded : dict
        ``{chunk: {name: array}}``.
    chunks, rows : numpy.ndarray
        Each record's chunk and row in it.
    empty : callable
        ``empty(shape, dtype)``: where the batch's arrays come from
        (:meth:`~daskmri.batches.buffers.Recycler.empty` reuses the memory of batches
        no one holds any more).

    Returns
    -------
    dict
        ``{name: array}``, first axis the batch.

    Raises
    ------
    KeyError
        If a chunk is not loaded.

    Examples
    --------
    >>> loaded = {3: {"v": np.array([10, 11], np.int16)}, 5: {"v": np.array([20], np.int16)}}
    >>> assemble(loaded, np.array([5, 3]), np.array([0, 1]))
    {'v': array([20, 11], dtype=int16)}
    """
    first = loaded[int(chunks[0])] if len(chunks) else next(iter(loaded.values()))
    out = {
        name: empty((len(rows), *values.shape[1:]), values.dtype) for name, values in first.items()
    }
    take_rows(loaded, chunks, rows, out)
    return out


def apply_transform(loading: Loading, batch: dict, epoch: int, index: int) -> dict:
    """``loading.transform`` on one batch, with its own generator (stream
    :attr:`~daskmri.batches.rng.Stream.TRANSFORM`, keyed by the global batch index).

    Parameters
    ----------
    loading : Loading
        The transform and the seed.
    batch : dict
        The batch.
    epoch, index : int
        The epoch and the batch's global index in it.

    Returns
    -------
    dict
        What the transform returned, with ``padding`` always present.

    Raises
    ------
    DaskmriError
        Naming the batch's records (it is raised far from here, in the training loop)
        if the transform fails, or returns something other than a dict.
    """
    rng = generator(loading.schema.seed, epoch, Stream.TRANSFORM, index)
    # Named before the call: the transform may change or drop them.
    records = list(zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True))
    padding = batch["padding"]
    try:
        out = loading.transform(batch, rng)
    except Exception as exc:
        raise DaskmriError(
            f"transform failed on batch {index} of epoch {epoch}, records "
            f"(patient_id, instance) {records}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, dict):
        raise DaskmriError(
            f"transform returned {type(out).__name__}, not the batch; it must return a dict "
            "of arrays (transform(batch, rng) -> batch)"
        )
    out.setdefault("padding", padding)  # always present, whatever the transform kept
    return out
