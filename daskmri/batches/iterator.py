"""Random batches for a training loop: :class:`BatchIterator` loads the plan of
:class:`~daskmri.batches.schema.BatchSchema`, chunk by chunk, with chunks fetched
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

The iterator itself resolves its arguments and keeps the latest
:class:`~daskmri.batches.epoch.Epoch`, which it asks where the iteration stands; the
rest lives beside it: ranks and seed in :mod:`~daskmri.batches.ranks`, the random
streams in :mod:`~daskmri.batches.rng`, chunk fetching (local threads, a cluster,
persisted futures, compression) in :mod:`~daskmri.batches.fetching` and
:mod:`~daskmri.batches.wire`, the plan loaded in :mod:`~daskmri.batches.loading`,
the epoch's thread and states in :mod:`~daskmri.batches.epoch`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import DaskmriError
from ..record import Problem, dropped_table
from ..verdicts import Exclusion, as_exclusion
from .buffers import Recycler
from .epoch import READY_BATCHES, Cursor, Epoch
from .fetching import COORDS, FetchSettings, direct_gather, remote_workers
from .loading import FetchCounts, Loading, Transform, WarmSlot, WarmStart
from .ranks import resolve_ranks, resolve_seed
from .schema import BatchSchema, RankPlan, Stretch
from .serving import Serving

__all__ = ["BatchIterator", "remote_workers"]

#: The version of the epoch plan in :meth:`BatchIterator.state_dict`.
STATE_FORMAT = 2
#: Seconds an explicit close waits for the threads beyond ``timeout``.
CLOSE_GRACE = 10.0


def _chunks_of(ds, variables: Sequence[str], default: int = 64) -> tuple[int, ...]:
    data = ds[variables[0]].data
    chunks = getattr(data, "chunks", None)
    if chunks is not None:
        return tuple(int(c) for c in chunks[0])
    n = ds.sizes["record"]
    size = int(ds.attrs.get("chunk_size", default) or default)
    return tuple(min(size, n - s) for s in range(0, n, size))


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
        with a ``has_<name>`` flag), or with ``compact=True`` the four compact
        arrays. ``patient_id``, ``instance`` and ``padding`` always come along.
    rank, world_size : int, optional
        Serve share ``rank`` of ``world_size`` of every epoch. Each defaults to
        ``torch.distributed``'s when a process group is initialised, else 0 and 1.
        Every rank serves the same number of batches, ``len(it)``.
    transform : callable, optional
        ``transform(batch, rng) -> batch``, run in the background thread on every
        batch (with ``compact=True``, the compact batch as it is: ``pixels``,
        ``slope``, ``intercept``, ``labels``); ``rng`` is a
        :class:`numpy.random.Generator` seeded from ``(seed, epoch, global batch
        index)``, so reruns and resumes are identical.
    client : distributed.Client or str, optional
        Fetch through this cluster (each chunk's own tasks, gathered on a worker).
        By default a dataset persisted on a cluster is fetched through that
        cluster's client; anything else through a local thread pool. For a
        persisted dataset it must be (a client of, or the address of) the scheduler
        that holds it. A client made here from an address is closed by
        :meth:`close` (or when the iterator is garbage); a client you pass never is.
    compress : bool, optional
        With a client: compress each chunk on its worker before it crosses to this
        process (blosc-lz4, lossless; :func:`~daskmri.batches.wire.pack`). By
        default only when a worker is on another host: on one machine moving a chunk
        costs less than packing it.
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
    compact : bool
        Hand out the records as the dataset holds them (issue 26's compact form):
        ``pixels`` (the source's integers, or float32), ``slope`` and ``intercept``
        (float64, one per record) and ``labels`` (bit ``k`` is kind
        ``iterator.kinds[k]``), beside the coordinates, for a training step that
        widens them where it runs (:class:`daskmri.torch.TorchBatches` with
        ``device=``): ``image = float32(float64(pixels) * slope + intercept)``, the
        :func:`daskmri.compact.widen` of every batch of ``compact=False``, bit for
        bit, for the same seed. False (the default): today's float32 ``image`` and
        bool masks; from a dataset that holds the compact arrays they are still what
        is fetched (fewer bytes), then widened in the background thread. Not part of
        the plan: a :meth:`state_dict` resumes under either.

    Attributes
    ----------
    chunks_fetched, bytes_fetched : int
        Chunks loaded so far, and the bytes of their served variables.
    epoch_chunks : list of int
        The chunks loaded for the latest epoch, in order.
    kinds : tuple of str
        The dataset's kinds, in the order of the bits of ``labels``.
    dropped : pandas.DataFrame
        The records never served, as :func:`daskmri.dropped` gives them: the
        dataset's dropped records, then those ``exclude`` left out (``path`` None:
        the dataset does not hold it; ``reason`` ``"excluded by <exclude>"``).

    Raises
    ------
    ValueError
        If the dataset lacks a variable to serve (with ``compact=True``: the compact
        arrays), an argument is out of range, or several ranks outside a process
        group have no ``seed``.
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

    Compact batches, from a dataset that holds the compact arrays (here made by hand
    in the float32 fallback form: the image itself, slope 1, intercept 0):

    >>> from daskmri.compact import pack_labels, unpack_labels, widen
    >>> kinds, n = ("icontour", "ocontour"), ds.sizes["record"]
    >>> labels = pack_labels({k: ds[k].values for k in kinds}, kinds)
    >>> held = ds.assign(pixels=ds["image"], slope=("record", np.ones(n)),
    ...                  intercept=("record", np.zeros(n)), labels=(ds["image"].dims, labels))
    >>> with BatchIterator(held, batch_size=4, seed=0, compact=True) as it:
    ...     batch = next(iter(it))
    >>> it.kinds, sorted(batch)  # doctest: +NORMALIZE_WHITESPACE
    (('icontour', 'ocontour'),
     ['instance', 'intercept', 'labels', 'padding', 'patient_id', 'pixels', 'slope'])
    >>> today = next(iter(BatchIterator(held, batch_size=4, seed=0)))
    >>> image = widen(batch["pixels"], batch["slope"], batch["intercept"])
    >>> bool((image == today["image"]).all())
    True
    >>> bool((unpack_labels(batch["labels"], it.kinds)["ocontour"] == today["ocontour"]).all())
    True
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
        compact: bool = False,
    ) -> None:
        exclusion = as_exclusion(exclude)  # a bad file fails before anything is planned
        self.serving = Serving.resolve(ds, variables, compact=bool(compact))
        fetched, variables = self.serving.fetched, self.serving.served
        missing = [v for v in (*fetched, *COORDS) if v not in ds.variables]
        if missing:
            raise ValueError(
                f"the dataset has no {missing}; BatchIterator needs a daskmri dataset "
                f"(load_dataset or open_dataset) with {list(fetched) + list(COORDS)}"
            )
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable (batch, rng) -> batch, got {transform!r}")
        rank, world_size = resolve_ranks(rank, world_size)
        seed = resolve_seed(seed, world_size)
        self._dataset = ds
        ds, self._excluded, self._exclusion = _leave_out(ds, exclusion)
        self.ds, self.variables, self.transform = ds, variables, transform
        self.prefetch, self.retries, self.timeout = prefetch, retries, timeout
        self.schema = BatchSchema(
            chunks=_chunks_of(ds, fetched),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            shuffle_chunks=shuffle_chunks,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.client, self._made_client = self._client(client, security)
        remote = self.client is not None and remote_workers(self.client)
        self.compress = bool(remote if compress is None else compress)
        self._direct = None if self.client is None else direct_gather(self.client, remote=remote)
        # A batch's arrays are reused once no one holds them: room for those queued
        # (READY_BATCHES), the one being made, the one waiting to be queued, the loop's
        # current and previous ones, and one more; beyond that, fresh arrays (a loop
        # that keeps batches gets fresh ones, and the pool never holds more than this).
        self._buffers = Recycler(capacity=(READY_BATCHES + 5) * len(self.serving.served))
        self._counts = FetchCounts()
        # The next epoch's first chunks, fetched while an epoch ends (see WarmStart).
        self._warm_slot = WarmSlot()
        self._live: weakref.WeakSet = weakref.WeakSet()  # epochs that may run
        self._threads: weakref.WeakSet = weakref.WeakSet()  # their threads, while they run
        self._closed = False
        self._epoch = self._planned(Cursor(0))

    def _planned(self, start: Cursor) -> Epoch:
        """A new epoch from ``start``, planned with the iterator's settings of now; the
        latest from now on."""
        loading = Loading(
            schema=self.schema,
            fetching=FetchSettings(
                self.ds,
                self.serving.fetched,
                self.schema.chunks,
                client=self.client,
                compress=self.compress,
                threads=max(1, self.prefetch),
                direct=self._direct,
            ),
            prefetch=self.prefetch,
            retries=self.retries,
            timeout=self.timeout,
            transform=self.transform,
            counts=self._counts,
            warm=self._warm_slot,
            serving=self.serving,
            buffers=self._buffers,
        )
        return Epoch(loading, start, started=self._threads.add)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration serves (settable: the plan of any epoch)."""
        return self._epoch.resume_point().epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        where = self._epoch.resume_point()
        self._epoch = self._planned(Cursor(int(value), where.history, where.position))

    @property
    def compact(self) -> bool:
        """Whether batches hold the compact arrays (``compact=True``)."""
        return self.serving.compact

    @property
    def kinds(self) -> tuple[str, ...]:
        """The dataset's kinds, in the order of the bits of ``labels``.

        Kind ``kinds[k]`` is ``(labels >> k) & 1``.
        """
        return self.serving.kinds

    @property
    def chunks_fetched(self) -> int:
        """Chunks loaded so far."""
        return self._counts.chunks

    @property
    def bytes_fetched(self) -> int:
        """Bytes of the served variables of the chunks loaded so far."""
        return self._counts.nbytes

    @property
    def epoch_chunks(self) -> list[int]:
        """The chunks loaded for the latest epoch, in order."""
        return self._counts.epoch_chunks

    @property
    def _warm(self) -> WarmStart | None:
        """The next epoch's first chunks, if they are held (tests look)."""
        return self._warm_slot.held

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
        where = self._epoch.resume_point()
        if not where.history:
            return len(self.schema)
        return self.schema.n_batches(len(self.schema.remaining(where.epoch, where.history)))

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
        where = self._epoch.resume_point()
        return self.schema.plan(where.epoch, where.history)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._closed:
            raise DaskmriError("this BatchIterator is closed; make a new one")
        self._epoch = self._planned(self._epoch.resume_point())
        self._live.add(self._epoch)
        return _Batches(self, self._epoch)

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
        >>> import xarray as xr
        >>> ds = xr.Dataset({"image": ("record", np.zeros(8))},
        ...                 coords={"patient_id": ("record", list("AABBCCDD")),
        ...                         "instance": ("record", np.arange(8))})
        >>> it = BatchIterator(ds, batch_size=2, seed=5, rank=0, world_size=2)
        >>> it.epoch = 3
        >>> batches = iter(it)
        >>> _ = next(batches)
        >>> state = it.state_dict()
        >>> state["epoch"], state["batch"], state["world_size"]
        (3, 1, 2)
        >>> _ = next(batches)  # the last batch is out: the next epoch is where it stands
        >>> it.state_dict()["epoch"], it.state_dict()["batch"]
        (4, 0)
        >>> it.close()
        """
        s = self.schema
        where = self._epoch.resume_point()
        epoch, position, history = where.epoch, where.position, where.history
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
        self._warm_slot.drop()  # fetched for an epoch that may not come now
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
        if (saved.world_size, saved.batch_size) == (s.world_size, s.batch_size):
            start = Cursor(int(state["epoch"]), history, int(state["batch"]))
        else:  # the saved stretch ends here; this configuration starts a new one
            finished = Stretch(saved.world_size, saved.batch_size, int(state["batch"]))
            start = Cursor(int(state["epoch"]), (*history, finished), 0)
        self._epoch = self._planned(start)
        if start.position > len(self):
            raise ValueError(
                f"the state says batch {start.position} of an epoch of {len(self)} batches; "
                "it is from another dataset or was edited"
            )

    def close(self) -> None:
        """Stop every epoch in progress, release every chunk it holds, and wait for
        their threads; close the client made from a ``client=`` address (never a
        client that was passed).

        The wait is bounded: at most ``timeout`` + 10 seconds in all (a chunk load
        under way in a local thread cannot be interrupted, only waited for). Garbage
        collection never waits: see :meth:`__del__`.
        """
        self._release(wait=True)

    def _release(self, *, wait: bool) -> None:
        """Stop the epochs and let go of what they hold; ``wait`` for their threads
        (bounded), or only tell them to end."""
        self._closed = True
        deadline = CLOSE_GRACE + self.timeout
        for epoch in list(self._live):
            epoch.cancel()
        threads = list(self._threads)
        if wait:
            _join(threads, deadline)
        self._warm_slot.close(wait=wait)
        if getattr(self, "_made_client", False):  # False too when __init__ failed early
            self._made_client = False
            if wait:
                self.client.close()
            else:  # after the threads, which may still release futures through it
                _close_later(self.client, threads, deadline)

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        """Garbage: tell every epoch's thread to stop and release what is held, and
        return at once. Nothing waits here (garbage collection may run in any thread,
        at any time, where a wait could stall or deadlock): the threads end on their
        own within moments, or once a chunk load under way ends; a client made from an
        address is closed by a thread of its own after them."""
        with contextlib.suppress(Exception):  # at interpreter exit anything may be gone
            self._release(wait=False)


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


class _Batches:
    """What ``iter(BatchIterator)`` gives: one epoch's batches. It holds the
    BatchIterator (a loop over a temporary iterator keeps it alive) and asks the
    epoch for each batch; dropped (a ``break``, an exception), it cancels the epoch
    and waits for nothing."""

    def __init__(self, owner: BatchIterator, epoch: Epoch) -> None:
        self._owner, self._epoch = owner, epoch

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self._epoch.next_batch()

    def close(self) -> None:
        """Stop the epoch and wait (bounded) for its thread."""
        self._epoch.close(self._owner.timeout + CLOSE_GRACE)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit anything may be gone
            self._epoch.cancel()


def _join(threads: list[threading.Thread], seconds: float) -> None:
    """Wait for ``threads``, at most ``seconds`` in all."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _close_later(client: Any, threads: list[threading.Thread], seconds: float) -> None:
    """Close ``client`` from a thread of its own once ``threads`` end (at most
    ``seconds``): a close where garbage is collected could wait on itself."""

    def close() -> None:
        _join(threads, seconds)
        with contextlib.suppress(Exception):  # a scheduler already gone: nothing to close
            client.close()

    threading.Thread(target=close, name="daskmri-close-client", daemon=True).start()
