"""Random batches for a training loop: :class:`BatchIterator` loads the plan of
:class:`~daskmri.batches.schema.BatchSchema`, chunk by chunk, with futures fetched
ahead, on one process or on each rank of a distributed run.

The plan says, for this rank and epoch, which records each batch holds and so which
chunks are needed when. The iterator asks for each chunk ``prefetch`` chunks before
it is first needed and drops it after its last use, so it holds about
``shuffle_chunks`` chunks being served plus ``prefetch`` chunks fetched ahead:
memory is bounded by the chunks in play, whatever the size of the dataset. A
background thread assembles the batches (and runs ``transform``) while the training
step runs. Once every chunk of an epoch has been asked for, the chunks that the next
epoch's first batch needs are fetched too (a warm start), and kept for that epoch
until it starts, :meth:`BatchIterator.close` or :meth:`BatchIterator.load_state_dict`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.optimization import cull

from ..errors import DaskmriError
from ..record import Problem, dropped_table
from ..schema import kinds_of
from ..verdicts import Exclusion, as_exclusion
from .schema import BatchSchema, RankPlan, Stretch

__all__ = ["BatchIterator"]

logger = logging.getLogger(__name__)

COORDS = ("patient_id", "instance")
#: The version of the epoch plan in :meth:`BatchIterator.state_dict`.
STATE_FORMAT = 2

Transform = Callable[[dict, np.random.Generator], dict]


def _chunks_of(ds, variables: Sequence[str], default: int = 64) -> tuple[int, ...]:
    data = ds[variables[0]].data
    chunks = getattr(data, "chunks", None)
    if chunks is not None:
        return tuple(int(c) for c in chunks[0])
    n = ds.sizes["record"]
    size = int(ds.attrs.get("chunk_size", default) or default)
    return tuple(min(size, n - s) for s in range(0, n, size))


def _process_group():
    """``torch.distributed`` when a process group is up, else None. torch is never
    imported here: a process that runs DDP has imported it already."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``rank`` and ``world_size``, each from the process group when not given, else
    0 and 1; one without the other is refused outside a process group."""
    dist = _process_group()
    if dist is not None:
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    elif (rank is None) != (world_size is None):
        given = "rank" if world_size is None else "world_size"
        raise ValueError(
            f"{given} was given without {'world_size' if given == 'rank' else 'rank'}, and "
            "torch.distributed is not initialised; pass both (rank=r, world_size=n)"
        )
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


def _seed(seed: int | None, world_size: int) -> int:
    """The seed: every rank must share it, so a random one comes from rank 0 of the
    process group; outside one, several ranks need an explicit seed."""
    if seed is not None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        return int(seed)
    seed = int(np.random.SeedSequence().entropy % 2**63)
    if world_size == 1:
        return seed
    dist = _process_group()
    if dist is None:
        raise ValueError(
            f"world_size={world_size} needs seed=: every rank must plan the same epochs, "
            "and a random seed would differ on each (pass the same seed=... on every rank)"
        )
    shared = [seed]
    dist.broadcast_object_list(shared, src=0)  # a collective: every rank makes its iterator
    return int(shared[0])


class _Fetcher:
    """Loads one chunk's records as numpy arrays, as a future: through a distributed
    client (the chunk's own tasks, gathered on a worker), or a local thread that runs
    the chunk's own small task graph."""

    def __init__(self, ds, variables, client, threads: int, compress: bool = False) -> None:
        self.arrays = {name: ds[name].data for name in variables}
        self.compress = compress
        self.coords = {name: np.asarray(ds[name].values) for name in COORDS}
        self.client = client
        self._graphs: dict[str, dict] = {}
        # Local loads, and gathers of persisted chunks from a cluster, run here.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="daskmri-prefetch"
        )

    def submit(self, chunk: int, start: int, stop: int):
        if self.client is None:
            return self.executor.submit(self._load, chunk)
        names = [n for n, a in self.arrays.items() if dask.is_dask_collection(a)]
        if not names:
            return _done({})
        blocks = [self._block(name, chunk) for name in names]
        held = [graph[key] for graph, key in blocks if len(graph) == 1]
        if not self.compress and len(held) == len(names) and _one_client(held):
            # Persisted: fetch the blocks straight from the workers that hold them, with
            # no task to schedule, through the futures' own client (only it may gather
            # them; self.client may be another client of the same scheduler).
            return self.executor.submit(_gather, names, held)
        # The blocks' own tasks (or, when persisted, their futures) and one task that
        # gathers them on the worker that holds them: no per-chunk dask array, whose
        # compute ends in a copy of every block (several times the worker CPU an epoch
        # needs: benchmarks/iterate.py), packed when it crosses a network.
        graph: dict = {}
        for task_graph, _ in blocks:
            graph.update(task_graph)
        packed = f"daskmri-pack-{uuid.uuid4().hex}"
        graph[packed] = (pack if self.compress else dict_of, names, [key for _, key in blocks])
        return self.client.get(graph, packed, sync=False)

    def _block(self, name: str, chunk: int) -> tuple[dict, tuple]:
        """The tasks that make block ``chunk`` of variable ``name``, culled from the
        array's graph (materialised once per epoch: a few hundred bytes per chunk, no
        data), and the block's key."""
        array = self.arrays[name]
        graph = self._graphs.get(name)
        if graph is None:
            graph = self._graphs[name] = dict(array.__dask_graph__())
        key = (array.name, chunk, *(0,) * (array.ndim - 1))
        return cull(graph, [key])[0], key

    def _load(self, chunk: int) -> dict:
        names = [n for n, a in self.arrays.items() if dask.is_dask_collection(a)]
        # A slice through dask.compute pays graph handling many times the blocks' own
        # tasks (benchmarks/iterate.py). All the chunk's blocks in one get: a task they
        # share (a store at a URL fetches a chunk's objects at once) runs once.
        graph: dict = {}
        keys = []
        for name in names:
            block_graph, key = self._block(name, chunk)
            graph.update(block_graph)
            keys.append(key)
        return {name: np.asarray(v) for name, v in zip(names, dask.get(graph, keys), strict=True)}

    def result(self, future, start: int, stop: int, timeout: float) -> dict[str, np.ndarray]:
        values = future.result(timeout=timeout)
        if self.compress and not isinstance(future, concurrent.futures.Future):
            values = unpack(values)  # packed by a task on a worker
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
        # Wait: no prefetch thread may outlive the iterator.
        self.executor.shutdown(wait=True, cancel_futures=True)


#: Arrays larger than this cross uncompressed: blosc takes at most 2 GiB at a time.
PACK_LIMIT = 2**31 - 64


def dict_of(names: Sequence[str], values: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """A chunk's arrays by name, as they are (a task on a worker)."""
    return dict(zip(names, values, strict=True))


def pack(names: Sequence[str], values: Sequence[np.ndarray]) -> dict[str, tuple]:
    """A chunk's arrays compressed for the trip from a worker to the client (a task
    on a worker): blosc-lz4 with byte shuffle, lossless, about 5x smaller for the
    float32 images and over 50x for the masks. It costs the workers about 6 ms per
    16.8 MB image chunk and the client 3 ms, against 13 ms to move the chunk over
    10 Gb/s; on one machine moving it costs less than packing.

    Examples
    --------
    >>> image = np.linspace(0, 1, 4096, dtype=np.float32).reshape(4, 32, 32)
    >>> packed = pack(["image"], [image])
    >>> len(packed["image"][0]) < image.nbytes
    True
    >>> np.array_equal(unpack(packed)["image"], image)
    True
    """
    import numcodecs

    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    out = {}
    for name, value in zip(names, values, strict=True):
        value = np.ascontiguousarray(value)
        if value.nbytes > PACK_LIMIT or value.dtype.hasobject:
            out[name] = (None, value)
        else:
            out[name] = (codec.encode(value), value.shape, value.dtype.str)
    return out


def unpack(packed: dict[str, tuple]) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack`, decompressed straight into new arrays."""
    import numcodecs

    codec = numcodecs.Blosc()
    out = {}
    for name, (raw, *rest) in packed.items():
        if raw is None:
            out[name] = rest[0]
            continue
        shape, dtype = rest
        array = np.empty(shape, dtype=dtype)
        codec.decode(raw, out=array.reshape(-1).view(np.uint8))
        out[name] = array
    return out


def remote_workers(client) -> bool:
    """Whether any of ``client``'s workers is on another host than this process:
    then chunks cross a network, and :func:`pack` pays for itself."""
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


def _is_future(value) -> bool:
    """Whether a graph holds ``value`` as a distributed future (a persisted block)."""
    return hasattr(value, "key") and hasattr(value, "release")


def _one_client(values: list) -> bool:
    """Whether ``values`` are all futures of one client (which can gather them)."""
    return all(map(_is_future, values)) and len({id(v.client) for v in values}) == 1


def _gather(names: list[str], futures: list) -> dict[str, np.ndarray]:
    """A persisted chunk's blocks, gathered by the client they belong to."""
    return dict_of(names, futures[0].client.gather(futures))


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
        :meth:`state_dict`). Every rank needs the same seed: under
        ``torch.distributed`` a random one is rank 0's, sent to all (a collective, so
        every rank makes its iterator at the same point); several ranks outside a
        process group need an explicit seed.
    prefetch : int
        Chunks fetched ahead, as futures.
    shuffle_chunks : int
        Chunks mixed at each step: a batch draws from this many chunks.
    drop_last : bool
        Make every batch full, leaving out fewer than ``world_size * batch_size``
        records of each epoch. Otherwise the last batch may be short, and when the
        epoch does not share out evenly a rank repeats one of its records, marked in
        ``batch["padding"]``.
    variables : sequence of str, optional
        Data variables to serve; default ``image`` and every mask (each variable
        with a ``has_<name>`` flag). ``patient_id``, ``instance`` and ``padding``
        always come along.
    rank, world_size : int, optional
        Serve share ``rank`` of ``world_size`` of every epoch. Each defaults to
        ``torch.distributed``'s when a process group is initialised, else 0 and 1.
        Every rank serves the same number of batches, ``len(it)``.
    transform : callable, optional
        ``transform(batch, rng) -> batch``, run in the background thread on every
        batch; ``rng`` is a :class:`numpy.random.Generator` seeded from
        ``(seed, epoch, global batch index)``, so reruns and resumes are identical.
    client : distributed.Client or str, optional
        Fetch through this cluster (each chunk's own tasks, gathered on a worker).
        By default a dataset persisted on a cluster is fetched through that
        cluster's client; anything else through a local thread pool. For a
        persisted dataset it must be (a client of, or the address of) the scheduler
        that holds it. A client made here from an address is closed by
        :meth:`close` (or when the iterator is garbage); a client you pass never is.
    compress : bool, optional
        With a client: compress each chunk on its worker before it crosses to this
        process (blosc-lz4, lossless; :func:`pack`). By default only when a worker is
        on another host: on one machine moving a chunk costs less than packing it.
    retries : int
        Times a failed chunk fetch is tried again before it is raised.
    timeout : float
        Seconds to wait for one chunk before giving up with an error.
    security : distributed.Security, optional
        TLS settings when ``client`` is a ``tls://`` address.
    exclude : str, os.PathLike or daskmri.verdicts.Exclusion, optional
        Records to leave out of every epoch: a ``verdicts.csv`` with ``exclude`` in
        the ``verdict`` column of each record to leave out (see
        :func:`daskmri.load_dataset`), read here, so a bad file fails at once. The
        iterator serves ``ds`` less those records, exactly as it would serve
        ``ds.isel(record=kept)``: the plan never indexes them, on any rank, and a
        store chunk that holds one is still read whole (its other records are
        served). :attr:`dropped` lists them beside the dataset's own dropped records.
        :meth:`state_dict` records the exclusion (the keys it left out), and
        :meth:`load_state_dict` refuses a state saved with another one. Without
        ``exclude`` the batches are those of an iterator without it, for the same
        seed. Records it names that ``ds`` does not hold are ignored (logged at INFO).

    Attributes
    ----------
    chunks_fetched, bytes_fetched : int
        Chunks loaded so far, and the bytes of their served variables.
    epoch_chunks : list of int
        The chunks loaded for the latest epoch, in order.
    dropped : pandas.DataFrame
        The records never served, as :func:`daskmri.dropped` gives them: the
        dataset's dropped records, then those ``exclude`` left out (``path`` None:
        the dataset does not hold it; ``reason`` ``"excluded by <exclude>"``).

    Raises
    ------
    ValueError
        If the dataset lacks a variable to serve, an argument is out of range, or
        several ranks outside a process group have no ``seed``.
    DaskmriError
        If ``client`` is for another scheduler than the one holding a persisted
        dataset, the client that persisted it is closed, or the address cannot be
        reached.
    FileNotFoundError, TypeError
        If ``exclude`` names no file, or is neither a path, an Exclusion nor None
        (a malformed verdicts file raises ValueError, naming the line).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=8, shape=(16, 16))
    >>> ds = daskmri.load_dataset(root, chunk_size=4, scheduler="sync")
    >>> with BatchIterator(ds, batch_size=4, seed=0) as it:
    ...     batches = list(it)
    >>> len(it), len(batches), sorted(batches[0])
    (3, 3, ['icontour', 'image', 'instance', 'ocontour', 'padding', 'patient_id'])
    >>> batches[0]["image"].shape, it.epoch
    ((4, 16, 16), 1)

    Rank 1 of 2 serves its half of every epoch:

    >>> it = BatchIterator(ds, batch_size=4, seed=0, rank=1, world_size=2)
    >>> len(it), [len(b["image"]) for b in it]
    (2, [4, 1])

    Leave out the records a verdicts file excludes:

    >>> import pathlib
    >>> verdicts = pathlib.Path(tempfile.mkdtemp()) / "verdicts.csv"
    >>> _ = verdicts.write_text("patient_id,instance,verdict\\nSYN0001,2,exclude\\n")
    >>> with BatchIterator(ds, batch_size=4, seed=0, exclude=verdicts) as it:
    ...     served = sum(len(b["image"]) for b in it)
    >>> served, it.dropped[["patient_id", "instance"]].values.tolist()
    (9, [['SYN0001', 2]])
    """

    #: The fingerprint of the keys ``exclude=`` left out (None: none), and their rows.
    _exclusion: str | None = None
    _excluded: tuple[dict, ...] = ()

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
        rank: int | None = None,
        world_size: int | None = None,
        transform: Transform | None = None,
        client: Any = None,
        compress: bool | None = None,
        retries: int = 2,
        timeout: float = 300.0,
        security: Any = None,
        exclude: Any = None,
    ) -> None:
        exclusion = as_exclusion(exclude)  # a bad file fails before anything is planned
        variables = tuple(("image", *kinds_of(ds)) if variables is None else variables)
        missing = [v for v in (*variables, *COORDS) if v not in ds.variables]
        if missing:
            raise ValueError(
                f"the dataset has no {missing}; BatchIterator needs a daskmri dataset "
                f"(load_dataset or open_dataset) with {list(variables) + list(COORDS)}"
            )
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable (batch, rng) -> batch, got {transform!r}")
        rank, world_size = _ranks(rank, world_size)
        seed = _seed(seed, world_size)
        self._dataset = ds
        ds, self._excluded, self._exclusion = _leave_out(ds, exclusion)
        self.ds, self.variables, self.transform = ds, variables, transform
        self.prefetch, self.retries, self.timeout = prefetch, retries, timeout
        self.schema = BatchSchema(
            chunks=_chunks_of(ds, variables),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            shuffle_chunks=shuffle_chunks,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.client, self._made_client = self._client(client, security)
        if compress is None:
            compress = self.client is not None and remote_workers(self.client)
        self.compress = bool(compress)
        self.epoch = 0
        self._position = 0  # batches of the current stretch already served
        self._history: tuple[Stretch, ...] = ()  # earlier stretches of this epoch
        self.chunks_fetched, self.bytes_fetched = 0, 0
        self.epoch_chunks: list[int] = []
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._closed = False
        # The next epoch's first chunks, fetched while an epoch ends (see _Warm).
        self._warm: _Warm | None = None
        self._warm_lock = threading.Lock()

    def _client(self, client, security=None):
        """The client to fetch through (None: local threads), and whether it was made
        here from an address (then :meth:`close` closes it)."""
        if client is None and "distributed" not in sys.modules:
            return None, False  # nothing can be persisted on a cluster
        from distributed import futures_of

        from ..execute import client_for_futures

        return client_for_futures(futures_of(self.ds), client, security=security)

    @property
    def dropped(self):
        """The records this iterator never serves, as :func:`daskmri.dropped` lists
        them: the dataset's dropped records (none for a dataset not made by daskmri),
        then those ``exclude=`` left out.

        Returns
        -------
        pandas.DataFrame
            Columns ``patient_id``, ``original_id``, ``instance``, ``path``, ``reason``.
        """
        import json

        rows = json.loads(self._dataset.attrs.get("dropped", "[]"))
        return dropped_table([*rows, *self._excluded])

    @property
    def seed(self) -> int:
        """The seed of every epoch's plan (the same on every rank)."""
        return self.schema.seed

    @property
    def rank(self) -> int:
        """This process's share of every epoch."""
        return self.schema.rank

    @property
    def world_size(self) -> int:
        """The number of shares of every epoch."""
        return self.schema.world_size

    def __len__(self) -> int:
        """Batches this rank serves in the current stretch of the epoch: the whole
        epoch, also after a resume with the same world size and batch size (which
        goes on from ``state_dict()["batch"]``, as an uninterrupted run would); after
        a resume with others, the batches of the rest of the epoch."""
        if not self._history:
            return len(self.schema)
        return self.schema.n_batches(len(self.schema.remaining(self.epoch, self._history)))

    def plan(self) -> RankPlan:
        """This rank's plan for the current stretch of the epoch: its records (global
        indices), padding, chunks and steps. Pure: loads nothing.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> ds = xr.Dataset({"image": ("record", np.zeros(5))},
        ...                 coords={"patient_id": ("record", list("AABBC")),
        ...                         "instance": ("record", np.arange(5))})
        >>> plan = BatchIterator(ds, batch_size=2, seed=0, rank=1, world_size=2).plan()
        >>> len(plan.records), plan.padding.tolist()  # 3 + 2 records: rank 1 repeats one
        (3, [False, False, True])
        """
        return self.schema.plan(self.epoch, self._history)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._closed:
            raise DaskmriError("this BatchIterator is closed; make a new one")
        epoch = _Epoch(self, self.epoch, self._history, self._position)
        self._live.add(epoch)
        return epoch

    def _settings(self) -> dict:
        s = self.schema
        return {
            "shuffle": s.shuffle,
            "shuffle_chunks": s.shuffle_chunks,
            "drop_last": s.drop_last,
            "chunks": list(s.chunks),
        }

    def state_dict(self) -> dict:
        """Where the iteration stands, globally: enough to resume with
        :meth:`load_state_dict`, on as many ranks as before or on another number.

        Take it when every rank has served the same number of batches (as DDP
        keeps them): then the state of any rank is the state of all.

        Examples
        --------
        >>> it = BatchIterator.__new__(BatchIterator)
        >>> it.schema = BatchSchema(chunks=(8,), batch_size=2, seed=5, world_size=2)
        >>> it.epoch, it._position, it._history = 3, 1, ()
        >>> state = it.state_dict()
        >>> state["epoch"], state["batch"], state["world_size"]
        (3, 1, 2)
        >>> it._position = 2  # the last batch is out: the next epoch is where it stands
        >>> it.state_dict()["epoch"], it.state_dict()["batch"]
        (4, 0)
        """
        s = self.schema
        epoch, position, history = self.epoch, self._position, self._history
        if position and position >= len(self):
            epoch, position, history = epoch + 1, 0, ()
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "batch": position,
            "seed": s.seed,
            "batch_size": s.batch_size,
            "world_size": s.world_size,
            "history": [[h.world_size, h.batch_size, h.batches] for h in history],
            **self._settings(),
            "exclude": self._exclusion,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next iteration serves the rest of that
        epoch. With the same world size and batch size it goes on batch for batch as
        the interrupted run would have; with others, the records not yet served are
        shared out again, each served once across the new ranks.

        Raises
        ------
        ValueError
            If the state is from an iterator with other settings or another dataset,
            or of another format (another daskmri version).
        """
        found = state.get("format")
        if found != STATE_FORMAT:
            if isinstance(found, int) and found > STATE_FORMAT:
                raise ValueError(
                    f"the state has format {found}, newer than this daskmri's "
                    f"({STATE_FORMAT}); upgrade daskmri to resume from it"
                )
            # An earlier epoch order: resuming mid-epoch would serve other records.
            raise ValueError(
                f"the state has format {found}, from a daskmri before 0.2.0 (this one reads "
                f"{STATE_FORMAT}); it cannot be resumed: start a new epoch without load_state_dict"
            )
        if state.get("exclude") != self._exclusion:
            raise ValueError(
                f"the state was saved with {_shown(state.get('exclude'))}, this iterator has "
                f"{_shown(self._exclusion)}; make it with the exclude= the saved run had (the "
                "verdicts file as it was then), or start a new epoch without load_state_dict"
            )
        for key, value in self._settings().items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"the state was saved with {key}={state[key]!r}, this iterator has "
                    f"{value!r}; make the iterator with the same settings and dataset"
                )
        self._drop_warm()  # fetched for an epoch that may not come now
        history = tuple(Stretch(*h) for h in state.get("history", ()))
        saved = Stretch(int(state.get("world_size", 1)), int(state["batch_size"]), 0)
        s = self.schema
        self.schema = BatchSchema(
            **{**self._settings(), "chunks": s.chunks},
            batch_size=s.batch_size,
            seed=int(state["seed"]),
            rank=s.rank,
            world_size=s.world_size,
        )
        self.epoch = int(state["epoch"])
        if (saved.world_size, saved.batch_size) == (s.world_size, s.batch_size):
            self._history, self._position = history, int(state["batch"])
        else:  # the saved stretch ends here; this configuration starts a new one
            finished = Stretch(saved.world_size, saved.batch_size, int(state["batch"]))
            self._history, self._position = (*history, finished), 0
        if self._position > len(self):
            raise ValueError(
                f"the state says batch {self._position} of an epoch of {len(self)} batches; "
                "it is from another dataset or was edited"
            )

    def close(self) -> None:
        """Stop every epoch in progress and release every future it holds; close the
        client made from a ``client=`` address (never a client that was passed)."""
        self._closed = True
        for epoch in list(self._live):
            epoch.close()
        self._drop_warm()
        if getattr(self, "_made_client", False):  # False too when __init__ failed early
            self._made_client = False
            self.client.close()

    def _drop_warm(self) -> None:
        """Release the next epoch's first chunks, if any are held."""
        warm = self._swap_warm(None)
        if warm is not None:
            warm.release()

    def _swap_warm(self, warm: _Warm | None) -> _Warm | None:
        with self._warm_lock:
            old, self._warm = self._warm, warm
            return old

    def _keep_warm(self, warm: _Warm) -> bool:
        """Keep the next epoch's first chunks for it, unless the iterator is closed."""
        with self._warm_lock:
            if self._closed or self._warm is not None:
                return False
            self._warm = warm
            return True

    def _fetched(self, chunk: int, values: dict[str, np.ndarray]) -> None:
        self.chunks_fetched += 1
        self.bytes_fetched += sum(values[name].nbytes for name in self.variables)
        self.epoch_chunks.append(chunk)

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown anything may be gone
            self.close()


def _leave_out(ds, exclusion: Exclusion | None) -> tuple[Any, tuple[dict, ...], str | None]:
    """``ds`` less the records ``exclusion`` names (the dataset itself when it names
    none of them: a plain dataset keeps its fast paths), their :func:`daskmri.dropped`
    rows, and the fingerprint of the keys left out (None when none were)."""
    if exclusion is None:
        return ds, (), None
    patients = np.asarray(ds["patient_id"].values).astype(str).tolist()
    instances = np.asarray(ds["instance"].values).astype(np.int64).tolist()
    hit = np.array(
        [(p, i) in exclusion.keys for p, i in zip(patients, instances, strict=True)], dtype=bool
    )
    matched = exclusion.only((patients[k], instances[k]) for k in np.flatnonzero(hit))
    exclusion.report_unmatched(len(matched.keys))
    if not hit.any():
        return ds, (), None
    original = ds["original_id"].values if "original_id" in ds.variables else None
    rows = tuple(
        Problem(
            None,
            exclusion.reason,
            patients[k],
            None if original is None else str(original[k]),
            instances[k],
        ).row()
        for k in np.flatnonzero(hit)
    )
    # Chunk by chunk, as the dataset's: dask keeps each chunk's remaining records together.
    return ds.isel(record=np.flatnonzero(~hit)), rows, matched.fingerprint()


def _shown(exclusion: str | None) -> str:
    """An exclusion fingerprint in a message."""
    return "no exclusion" if exclusion is None else f"exclusion {exclusion[:12]}"


class _Epoch:
    """One pass over the data. A background thread assembles the batches (a copy of
    each record, which numpy does without holding the GIL) into a small queue while
    the training step runs, so ``next()`` only takes a batch that is ready."""

    def __init__(
        self, owner: BatchIterator, epoch: int, history: tuple[Stretch, ...], position: int
    ) -> None:
        self.owner = owner
        self.epoch = epoch
        self.position = position
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # bounded by _produce
        self._stop = threading.Event()
        # The thread holds the generator, not this object: dropping the epoch (a
        # `break`) lets __del__ stop the thread.
        self._thread = threading.Thread(
            target=_produce,
            args=(_batches(owner, epoch, history, position), self._queue, self._stop),
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
        self.owner._position, self.owner._history = 0, ()
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
#: How often the batch thread looks for room in a full queue: from the first value,
#: doubling up to the second while the queue stays full.
ROOM_POLL = (0.0005, 0.005)


def _produce(batches: Iterator[dict], ready: queue.SimpleQueue, stop: threading.Event) -> None:
    """The batch thread: run the epoch's generator into ``ready`` until it ends, fails
    or is told to stop; closing the generator releases its futures and threads.

    The thread looks for room itself rather than wait to be woken: a bounded queue
    wakes it from inside every ``next()``, which cost the training loop about 85 us a
    batch here (1% of a 10 ms step) against 18 us for a look every few ms."""

    def put(item) -> bool:
        delay = ROOM_POLL[0]
        while not stop.is_set():
            if ready.qsize() < READY_BATCHES:
                ready.put(item)
                return True
            stop.wait(delay)
            delay = min(2 * delay, ROOM_POLL[1])
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


def _batches(
    owner: BatchIterator, epoch: int, history: tuple[Stretch, ...], position: int
) -> Iterator[dict[str, np.ndarray]]:
    """This rank's batches of ``epoch`` after ``history``, from batch ``position`` on:
    the plan, loaded."""
    schema = owner.schema
    plan = schema.plan(epoch, history)
    chunks, first, last = plan.fetches(min(position * schema.batch_size, len(plan.records)))
    done_after = dict(zip(chunks.tolist(), last.tolist(), strict=True))
    fetcher, carried = _fetcher_for(owner, epoch, history, position, chunks)
    ahead = _Ahead(owner, fetcher, chunks, carried)
    # Batch k of rank r is global batch `offset + k * world_size + r` of the epoch.
    offset = sum(h.world_size * h.batches for h in history)
    owner.epoch_chunks = []
    following: list = []  # the next epoch's first chunks, once all of this one's are asked for
    warmed = completed = False
    try:
        for k in range(position, len(plan)):
            where = plan.batch(k)
            needed = int(np.searchsorted(first, where.stop))  # chunks first used by now
            ahead.submit_until(needed + owner.prefetch)
            if not warmed and ahead.submitted == len(ahead.chunks):
                following, warmed = _warm_start(owner, epoch + 1, fetcher), True
            ahead.take_until(needed)
            records, in_chunk = plan.records[where], plan.chunks[where]
            batch = _assemble(ahead.loaded, in_chunk, records - schema.starts[in_chunk])
            batch["padding"] = plan.padding[where].copy()
            for chunk in [c for c in ahead.loaded if done_after[c] < where.stop]:
                del ahead.loaded[chunk]  # its last record is served
            if owner.transform is not None:
                index = offset + k * schema.world_size + schema.rank
                batch = _transform(owner, batch, epoch, index)
            yield batch
        completed = True
    finally:
        ahead.release()
        warm = _Warm(epoch + 1, fetcher, following)
        if not (completed and following and owner._keep_warm(warm)):
            warm.release()


@dataclass
class _Warm:
    """The first chunks of epoch ``epoch``, submitted through ``fetcher`` while the
    epoch before it ended, so that its first batch does not wait for them."""

    epoch: int
    fetcher: _Fetcher
    pending: list[tuple[int, Any]]

    def release(self) -> None:
        for _, future in self.pending:
            self.fetcher.release(future)
        self.fetcher.close()


def _warm_start(owner: BatchIterator, epoch: int, fetcher: _Fetcher) -> list[tuple[int, Any]]:
    """Submit the chunks that the first batch of ``epoch`` (from its start) needs."""
    schema = owner.schema
    plan = schema.plan(epoch, ())
    if not len(plan):
        return []
    chunks, first, _ = plan.fetches(0)
    needed = int(np.searchsorted(first, plan.batch(0).stop))
    return [(c, _submit(schema, fetcher, c)) for c in chunks[:needed].tolist()]


def _submit(schema: BatchSchema, fetcher: _Fetcher, chunk: int):
    """Ask ``fetcher`` for chunk ``chunk``'s records; a future."""
    start = int(schema.starts[chunk])
    return fetcher.submit(chunk, start, start + int(schema.chunks[chunk]))


def _fetcher_for(owner: BatchIterator, epoch: int, history, position: int, chunks: np.ndarray):
    """The fetcher for an epoch and the futures it already holds: those of a warm
    start that matches (this epoch, from its start), else a new fetcher."""
    warm = owner._swap_warm(None)
    if warm is not None:
        carried = [c for c, _ in warm.pending]
        if (warm.epoch, history, position) == (epoch, (), 0) and carried == list(
            chunks[: len(carried)]
        ):
            return warm.fetcher, warm.pending
        warm.release()
    threads = max(1, owner.prefetch)
    return _Fetcher(owner.ds, owner.variables, owner.client, threads, owner.compress), []


class _Ahead:
    """The chunks of a plan, submitted ahead of the batch that first needs them:
    ``pending`` holds ``(chunk, future)`` in fetch order, ``loaded`` the arrays of the
    chunks in use."""

    def __init__(
        self, owner: BatchIterator, fetcher: _Fetcher, chunks: np.ndarray, carried: list
    ) -> None:
        self.owner, self.fetcher, self.chunks = owner, fetcher, chunks.tolist()
        # Futures of the first chunks, submitted while the previous epoch ended.
        self.pending: collections.deque = collections.deque(carried)
        self.submitted, self.taken = len(carried), 0
        self.loaded: dict[int, dict[str, np.ndarray]] = {}

    def submit_until(self, n: int) -> None:
        """Submit the first ``n`` chunks of the fetch order."""
        while self.submitted < min(n, len(self.chunks)):
            c = self.chunks[self.submitted]
            self.pending.append((c, _submit(self.owner.schema, self.fetcher, c)))
            self.submitted += 1

    def take_until(self, n: int) -> None:
        """Wait for the first ``n`` chunks of the fetch order."""
        while self.taken < n:
            chunk, future = self.pending.popleft()
            self.loaded[chunk] = _take(self.owner, self.fetcher, chunk, future)
            self.owner._fetched(chunk, self.loaded[chunk])
            self.taken += 1

    def release(self) -> None:
        for _, future in self.pending:
            self.fetcher.release(future)
        self.pending.clear()
        self.loaded.clear()


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
    loaded: dict[int, dict], chunks: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """A batch: row ``rows[j]`` of loaded chunk ``chunks[j]``, for each j, copied once
    into fresh arrays that the caller may keep."""
    first = loaded[int(chunks[0])] if len(chunks) else next(iter(loaded.values()))
    out = {
        name: np.empty((len(rows), *values.shape[1:]), dtype=values.dtype)
        for name, values in first.items()
    }
    for j, (c, r) in enumerate(zip(chunks.tolist(), rows.tolist(), strict=True)):
        chunk = loaded[c]
        for name, values in out.items():
            values[j] = chunk[name][r]
    return out


def _transform(owner: BatchIterator, batch: dict, epoch: int, index: int) -> dict:
    """``owner.transform`` on one batch, with its own seeded generator; a failure names
    the batch's records, since it is raised far from here, in the training loop."""
    rng = np.random.default_rng([owner.seed, epoch, 3, index])
    # Named before the call: the transform may change or drop them.
    records = list(zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True))
    padding = batch["padding"]
    try:
        out = owner.transform(batch, rng)
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
