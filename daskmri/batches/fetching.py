"""Chunks of a dataset loaded as numpy arrays, ahead of their use: one interface,
:meth:`Fetcher.submit` ``(chunk) -> Fetch``, whatever the backend.

=======================  =====================================================
backend                  when
=======================  =====================================================
local threads            no client: each chunk's own small task graph, culled
                         from the variables' graphs, run by ``dask.get`` on a
                         thread of the fetcher's pool
persisted futures        a client, every block a future of one client, no
                         compression: gathered straight from the workers that
                         hold them (no task to schedule)
a cluster's graph        otherwise with a client: the blocks' own tasks and one
                         task that gathers them on a worker, as they are
                         (:func:`~daskmri.batches.wire.dict_of`) or compressed
                         (:func:`~daskmri.batches.wire.pack`)
=======================  =====================================================

Nothing here assumes a variable's name, dtype or shape beyond its first axis being
``record``. Beside it, the two facts about a cluster the fetcher and the iterator
need: whether a value is a persisted block (:func:`is_future`, duck-typed: a graph
may hold futures of any distributed version), and whether workers are on another
host (:func:`remote_workers`: then packing pays for itself).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.optimization import cull

from .wire import dict_of, pack, unpack

__all__ = [
    "COORDS",
    "Fetch",
    "FetchSettings",
    "Fetcher",
    "Stopped",
    "direct_gather",
    "is_future",
    "one_client",
    "remote_workers",
]

#: Coordinates every batch carries, whatever the variables.
COORDS = ("patient_id", "instance")
#: How often a wait for a chunk looks whether it was told to stop (seconds).
STOP_POLL = 0.1


class Stopped(Exception):
    """Raised by :meth:`Fetch.result` when told to stop while waiting."""


@dataclass(frozen=True)
class Fetch:
    """One chunk on its way (a future-like): :meth:`result` gives its arrays.

    Attributes
    ----------
    chunk, start, stop : int
        The chunk, and its records ``start:stop`` in the dataset.
    future : concurrent.futures.Future or distributed.Future
        What the backend returned.
    finish : callable
        From the future's value to the chunk's arrays by name.
    """

    chunk: int
    start: int
    stop: int
    future: Any
    finish: Callable[[Any], dict[str, np.ndarray]]

    def result(self, timeout: float, stop: threading.Event | None = None) -> dict[str, np.ndarray]:
        """The chunk's arrays (every variable and coordinate), waiting at most ``timeout``
        seconds, and no longer once ``stop`` is set.

        Raises
        ------
        TimeoutError
            If the chunk did not arrive in time.
        Stopped
            If ``stop`` was set while waiting.
        Exception
            Whatever loading the chunk raised.
        """
        if stop is not None:
            started = time.monotonic()
            self._wait(timeout, stop)
            timeout = max(STOP_POLL, timeout - (time.monotonic() - started))
        # Done (or no stop to watch): the value, which a distributed future still has to
        # move here, within what is left of the time.
        value = self.future.result(timeout=timeout)
        return self.finish(value)

    def _wait(self, timeout: float, stop: threading.Event) -> None:
        """Wait until the future is done (not for its value: a distributed future's
        value moves on ``result``, and an interrupted move starts again), looking at
        ``stop`` every :data:`STOP_POLL` seconds; at most ``timeout`` seconds."""
        done = threading.Event()
        self.future.add_done_callback(lambda _: done.set())
        deadline = time.monotonic() + timeout
        while not done.wait(min(STOP_POLL, max(0.0, deadline - time.monotonic()))):
            if stop.is_set():
                raise Stopped(f"stopped while waiting for chunk {self.chunk}")
            if time.monotonic() >= deadline:
                raise concurrent.futures.TimeoutError(f"chunk {self.chunk}: timed out")

    def release(self) -> None:
        """Let the chunk go: forget it on the cluster, or cancel it if not yet started."""
        if hasattr(self.future, "release"):  # a distributed future
            self.future.release()
        else:
            self.future.cancel()


@dataclass(frozen=True)
class FetchSettings:
    """What a :class:`Fetcher` loads, and through what.

    Attributes
    ----------
    ds : xarray.Dataset
        The dataset (records along ``record``).
    variables : tuple of str
        The variables to load, of any dtype.
    chunks : tuple of int
        Records per chunk, in dataset order.
    client : distributed.Client or None
        None: local threads.
    compress : bool
        With a client: pack each chunk on its worker.
    threads : int
        Threads of the local pool.
    direct : bool or None
        Gather a persisted chunk from its workers straight to this process (True), by
        way of the scheduler (False), or as the futures' client is set (None: its
        ``direct_to_workers``, by default through the scheduler).
    """

    ds: Any
    variables: tuple[str, ...]
    chunks: tuple[int, ...]
    client: Any = None
    compress: bool = False
    threads: int = 1
    direct: bool | None = None

    def fetcher(self) -> Fetcher:
        """A new :class:`Fetcher` (with a pool of its own; close it)."""
        return Fetcher(self)


class Fetcher:
    """Loads chunks of a dataset's variables as numpy arrays, as :class:`Fetch` es.

    Parameters
    ----------
    settings : FetchSettings
        The dataset, variables, chunks and backend.

    Examples
    --------
    >>> import xarray as xr, dask.array as da
    >>> ds = xr.Dataset({"pixels": ("record", da.arange(5, chunks=2, dtype=np.int16))},
    ...                 coords={"patient_id": ("record", list("AABBC")),
    ...                         "instance": ("record", np.arange(5))})
    >>> fetcher = FetchSettings(ds, ("pixels",), (2, 2, 1)).fetcher()
    >>> got = fetcher.submit(1).result(timeout=10)
    >>> got["pixels"], got["patient_id"]
    (array([2, 3], dtype=int16), array(['B', 'B'], dtype='<U1'))
    >>> fetcher.close()
    """

    def __init__(self, settings: FetchSettings) -> None:
        ds = settings.ds
        self.settings = settings
        self.arrays = {name: ds[name].data for name in settings.variables}
        self.coords = {name: np.asarray(ds[name].values) for name in COORDS}
        self.client, self.compress = settings.client, settings.compress
        self.starts = np.concatenate([[0], np.cumsum(settings.chunks)]).astype(np.int64)
        self.lazy = [n for n, a in self.arrays.items() if dask.is_dask_collection(a)]
        self._graphs: dict[str, dict] = {}
        self._lock = threading.Lock()  # a retry may submit while another thread does
        # Local loads, and gathers of persisted chunks from a cluster, run here.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="daskmri-prefetch"
        )

    def submit(self, chunk: int) -> Fetch:
        """Ask for chunk ``chunk``'s records: a :class:`Fetch` at once, loaded behind."""
        start, stop = int(self.starts[chunk]), int(self.starts[chunk + 1])
        future, packed = self._future(chunk)
        return Fetch(chunk, start, stop, future, self._finisher(start, stop, packed))

    def _future(self, chunk: int) -> tuple[Any, bool]:
        """The backend's future for the chunk's lazy blocks, and whether it is packed."""
        if self.client is None:
            return self.executor.submit(self._load, chunk), False
        if not self.lazy:
            return _done({}), False
        blocks = [self._block(name, chunk) for name in self.lazy]
        held = [graph[key] for graph, key in blocks if len(graph) == 1]
        if not self.compress and len(held) == len(self.lazy) and one_client(held):
            # Persisted: fetch the blocks straight from the workers that hold them, with
            # no task to schedule, through the futures' own client (only it may gather
            # them; self.client may be another client of the same scheduler).
            return self.executor.submit(_gather, self.lazy, held, self.settings.direct), False
        # The blocks' own tasks (or, when persisted, their futures) and one task that
        # gathers them on the worker that holds them: no per-chunk dask array, whose
        # compute ends in a copy of every block (several times the worker CPU an epoch
        # needs: benchmarks/iterate.py), packed when it crosses a network.
        graph: dict = {}
        for task_graph, _ in blocks:
            graph.update(task_graph)
        name = f"daskmri-pack-{uuid.uuid4().hex}"
        graph[name] = (pack if self.compress else dict_of, self.lazy, [k for _, k in blocks])
        return self.client.get(graph, name, sync=False), self.compress

    def _finisher(self, start: int, stop: int, packed: bool) -> Callable[[Any], dict]:
        def finish(values: dict) -> dict[str, np.ndarray]:
            if packed:
                values = unpack(values)  # packed by a task on a worker
            arrays = {}
            for name, array in self.arrays.items():
                value = values[name] if name in values else array[start:stop]
                arrays[name] = np.asarray(value)
            for name, coord in self.coords.items():
                arrays[name] = coord[start:stop]
            return arrays

        return finish

    def _block(self, name: str, chunk: int) -> tuple[dict, tuple]:
        """The tasks that make block ``chunk`` of variable ``name``, culled from the
        array's graph (materialised once per fetcher: a few hundred bytes per chunk,
        no data), and the block's key."""
        array = self.arrays[name]
        with self._lock:
            graph = self._graphs.get(name)
            if graph is None:
                graph = self._graphs[name] = dict(array.__dask_graph__())
        key = (array.name, chunk, *(0,) * (array.ndim - 1))
        return cull(graph, [key])[0], key

    def _load(self, chunk: int) -> dict[str, np.ndarray]:
        # A slice through dask.compute pays graph handling many times the blocks' own
        # tasks (benchmarks/iterate.py). All the chunk's blocks in one get: a task they
        # share (a store at a URL fetches a chunk's objects at once) runs once.
        graph: dict = {}
        keys = []
        for name in self.lazy:
            block_graph, key = self._block(name, chunk)
            graph.update(block_graph)
            keys.append(key)
        values = dask.get(graph, keys)
        return {name: np.asarray(v) for name, v in zip(self.lazy, values, strict=True)}

    def close(self, *, wait: bool = True) -> None:
        """Cancel the loads not yet started and end the pool's threads.

        Parameters
        ----------
        wait : bool
            Wait for the loads under way (so that no thread outlives the call);
            False only tells the threads to end once they are done.
        """
        self.executor.shutdown(wait=wait, cancel_futures=True)


def is_future(value: Any) -> bool:
    """Whether a graph holds ``value`` as a distributed future (a persisted block).

    Parameters
    ----------
    value : object
        A value of a dask graph.

    Returns
    -------
    bool
        True for anything with a ``key`` and a ``release`` (duck-typed).

    Examples
    --------
    >>> is_future(("task", 1)), is_future(np.zeros(1))
    (False, False)
    """
    return hasattr(value, "key") and hasattr(value, "release")


def one_client(values: Sequence[Any]) -> bool:
    """Whether ``values`` are all futures of one client (which can gather them).

    Parameters
    ----------
    values : sequence
        Values of a dask graph.

    Returns
    -------
    bool
        True when every one :func:`is_future` and they share one client.

    Examples
    --------
    >>> one_client([("task", 1)])
    False
    """
    return all(map(is_future, values)) and len({id(v.client) for v in values}) == 1


def remote_workers(client: Any) -> bool:
    """Whether any of ``client``'s workers is on another host than this process.

    Then chunks cross a network, and :func:`~daskmri.batches.wire.pack` pays for
    itself.

    Parameters
    ----------
    client : distributed.Client
        Anything with ``scheduler_info`` (every worker's address is its key).

    Returns
    -------
    bool
        True if a worker's host is neither a loopback address nor this host.

    Examples
    --------
    >>> class Reported:
    ...     def scheduler_info(self, n_workers=-1):
    ...         return {"workers": {"tcp://127.0.0.1:4000": {}}}
    >>> remote_workers(Reported())
    False
    """
    import ipaddress
    import socket

    from distributed.comm import get_address_host
    from distributed.utils import get_ip

    from ..execute import scheduler_info

    here = {"localhost", socket.gethostname(), get_ip()}
    info = scheduler_info(client, n_workers=-1)  # every worker, not the first few
    for address in info.get("workers", {}):
        host = get_address_host(address)
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        if host not in here:
            return True
    return False


def _gather(names: list[str], futures: list, direct: bool | None) -> dict[str, np.ndarray]:
    """A persisted chunk's blocks, gathered by the client they belong to."""
    return dict_of(names, futures[0].client.gather(futures, direct=direct))


def direct_gather(client: Any, *, remote: bool | None = None) -> bool | None:
    """How a persisted chunk should reach this process from ``client``'s workers:
    straight from them (True) where they all run on this host, else as the client is
    set (None: its ``direct_to_workers``, by default by way of the scheduler, the one
    address a client is sure to reach).

    Through the scheduler, every chunk crosses two connections and the scheduler's
    event loop, which on a :class:`~distributed.LocalCluster` shares this process:
    the direct route serves a persisted epoch faster there (``benchmarks/compact.py``).

    Parameters
    ----------
    client : distributed.Client
        The client whose workers hold the chunks.
    remote : bool, optional
        :func:`remote_workers` of ``client``, when already known.

    Returns
    -------
    bool or None
        True, or None to leave it to the client.

    Examples
    --------
    >>> class Local:
    ...     direct_to_workers = None
    ...     def scheduler_info(self, n_workers=-1):
    ...         return {"workers": {"tcp://127.0.0.1:4000": {}}}
    >>> direct_gather(Local())
    True
    """
    if getattr(client, "direct_to_workers", None) is not None:
        return None  # the user's own choice
    if remote is None:
        remote = remote_workers(client)
    return None if remote else True


def _done(value: Any) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(value)
    return future
