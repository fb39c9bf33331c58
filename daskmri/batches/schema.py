"""The plan of every epoch: which records each rank serves, in which order, and
which chunks it must fetch for them. Pure: nothing here loads data.

An epoch's records are laid out once, the same on every rank, from ``(seed, epoch)``:
the chunks in a random order, each chunk's records shuffled within it. This *base
order* is cut into ``world_size`` contiguous shares, so a rank's records come from
about ``1 / world_size`` of the chunks and a chunk falls into at most two shares
(when a share holds at least one chunk). Within its share a rank deals each chunk
out in ``shuffle_chunks`` parts over as many consecutive *steps*, and shuffles each
step: a batch mixes records of several chunks, and the rank holds about
``shuffle_chunks`` chunks at a time, whatever the size of the dataset.

Shares are even: with ``drop_last=False`` a short share repeats its own last record
(marked as padding) so that every rank serves the same number of batches; with
``drop_last=True`` the base order's tail is left out (fewer than
``world_size * batch_size`` records) so that every batch is full.

An epoch may be served in several *stretches*, one per configuration (world size
and batch size): a run that stops after every rank has served ``k`` batches is
described by :class:`Stretch` ``(world_size, batch_size, k)``. The records it served
are known from that alone, so another configuration can go on with exactly the rest,
in base order, cut into its own shares.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .rng import Stream, generator

__all__ = ["BatchSchema", "RankPlan", "Stretch"]


@dataclass(frozen=True)
class Stretch:
    """Part of an epoch already served: ``batches`` batches of ``batch_size`` records
    on each of ``world_size`` ranks.

    Examples
    --------
    >>> Stretch(world_size=2, batch_size=8, batches=3)
    Stretch(world_size=2, batch_size=8, batches=3)
    """

    world_size: int
    batch_size: int
    batches: int

    def __post_init__(self) -> None:
        for name in ("world_size", "batch_size"):
            _check_positive(name, getattr(self, name))
        if not isinstance(self.batches, (int, np.integer)) or self.batches < 0:
            raise ValueError(f"batches must be an int >= 0, got {self.batches!r}")


@dataclass(frozen=True)
class RankPlan:
    """What one rank serves in the current stretch of an epoch.

    Attributes
    ----------
    records : numpy.ndarray
        Global record indices, in serving order (padding included).
    padding : numpy.ndarray
        True where a record repeats one served before, to even out the shares.
    chunks : numpy.ndarray
        The chunk of each record.
    steps : numpy.ndarray
        The step of each record: a chunk's records span ``shuffle_chunks``
        consecutive steps.
    batch_size : int
        Records per batch.
    """

    records: np.ndarray
    padding: np.ndarray
    chunks: np.ndarray
    steps: np.ndarray
    batch_size: int

    def __len__(self) -> int:
        """Batches in the plan."""
        return -(-len(self.records) // self.batch_size)

    def batch(self, k: int) -> slice:
        """Positions of batch ``k`` in :attr:`records`."""
        return slice(k * self.batch_size, min((k + 1) * self.batch_size, len(self.records)))

    def fetches(self, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunks to fetch to serve positions ``start`` on, in the order they are
        first needed: ``(chunk, first use, last use)``, positions in :attr:`records`.

        Examples
        --------
        >>> plan = RankPlan(np.arange(5), np.zeros(5, bool), np.array([2, 2, 0, 2, 1]),
        ...                 np.zeros(5, np.int64), 2)
        >>> [a.tolist() for a in plan.fetches(1)]
        [[2, 0, 1], [1, 2, 4], [3, 2, 4]]
        """
        chunks = self.chunks[start:]
        unique, first = np.unique(chunks, return_index=True)
        _, from_end = np.unique(chunks[::-1], return_index=True)
        last = len(chunks) - 1 - from_end
        order = np.argsort(first, kind="stable")
        return unique[order], first[order] + start, last[order] + start


@dataclass(frozen=True)
class BatchSchema:
    """The order of every epoch, for every rank, planned before anything is loaded.

    The plan of every epoch: which records each batch of each rank holds. Pure;
    loads nothing.

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
        Make every batch full by leaving out the base order's tail (fewer than
        ``world_size * batch_size`` records); otherwise short shares are padded.
    rank, world_size : int
        This process's share of every epoch: ``rank`` of ``world_size``.

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

    Two ranks share the epoch, each with the same number of batches:

    >>> ranks = [BatchSchema(chunks=(3, 3, 2), batch_size=3, seed=0, rank=r, world_size=2)
    ...          for r in (0, 1)]
    >>> [len(s) for s in ranks]
    [2, 2]
    >>> sorted(np.concatenate([s.plan(0).records for s in ranks]).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7]
    """

    chunks: tuple[int, ...]
    batch_size: int = 8
    shuffle: bool = True
    seed: int = 0
    shuffle_chunks: int = 4
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "shuffle_chunks", "world_size"):
            _check_positive(name, getattr(self, name))
        if not isinstance(self.rank, (int, np.integer)) or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank must be an int in [0, world_size={self.world_size}), got {self.rank!r}"
            )

    @property
    def n_records(self) -> int:
        """Records in the dataset."""
        return int(sum(self.chunks))

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """First record of each chunk (read-only; computed once: the batch loop asks
        for it twice a batch)."""
        starts = np.concatenate([[0], np.cumsum(self.chunks)[:-1]]).astype(np.int64)
        starts.flags.writeable = False
        return starts

    @property
    def span(self) -> int:
        """Chunks mixed at each step (1 when not shuffling)."""
        return self.shuffle_chunks if self.shuffle else 1

    def chunk_of(self, records: np.ndarray) -> np.ndarray:
        """The chunk that holds each record."""
        ends = np.cumsum(np.asarray(self.chunks, dtype=np.int64))
        return np.searchsorted(ends, records, side="right").astype(np.int32)

    def __len__(self) -> int:
        """Batches this rank serves in a whole epoch."""
        return self.n_batches(self.n_records)

    def n_batches(
        self, n: int, *, world_size: int | None = None, batch_size: int | None = None
    ) -> int:
        """Batches each rank serves when ``n`` records are shared out.

        Parameters
        ----------
        n : int
            Records to share out.
        world_size, batch_size : int, optional
            Default: the schema's.

        Examples
        --------
        >>> BatchSchema(chunks=(10,), batch_size=2, world_size=3).n_batches(10)  # 4, 3, 3 + pad
        2
        >>> BatchSchema(chunks=(10,), batch_size=2, world_size=3, drop_last=True).n_batches(10)
        1
        """
        w = self.world_size if world_size is None else world_size
        b = self.batch_size if batch_size is None else batch_size
        if self.drop_last:
            return n // (w * b)
        share = -(-n // w)
        return -(-share // b)

    def order(self, epoch: int) -> np.ndarray:
        """The chunks in visiting order (empty chunks hold nothing and are skipped)."""
        order = np.arange(len(self.chunks))
        if self.shuffle:
            order = generator(self.seed, epoch, Stream.ORDER).permutation(order)
        return order[np.asarray(self.chunks, dtype=np.int64)[order] > 0]

    def base(self, epoch: int) -> np.ndarray:
        """Every record of ``epoch``, the same on every rank: chunk by chunk in
        :meth:`order`, each chunk's records shuffled within it."""
        order, starts = self.order(epoch), self.starts
        sizes = np.asarray(self.chunks, dtype=np.int64)[order]
        group = np.repeat(np.arange(len(order)), sizes)
        records = np.repeat(starts[order] - np.cumsum(sizes) + sizes, sizes) + np.arange(
            int(sizes.sum())
        )
        if self.shuffle:
            noise = generator(self.seed, epoch, Stream.NOISE).random(len(records))
            records = records[np.lexsort((noise, group))]
        return records

    def remaining(self, epoch: int, history: Sequence[Stretch] = ()) -> np.ndarray:
        """The records of ``epoch`` not served by the stretches of ``history``, in
        base order."""
        records = self.base(epoch)
        for generation, stretch in enumerate(history):
            served = np.zeros(self.n_records, dtype=bool)
            for rank in range(stretch.world_size):
                plan = self._rank_plan(epoch, records, generation, stretch, rank)
                done = min(stretch.batches * stretch.batch_size, len(plan.records))
                served[plan.records[:done][~plan.padding[:done]]] = True
            records = records[~served[records]]
        return records

    def plan(self, epoch: int, history: Sequence[Stretch] = ()) -> RankPlan:
        """This rank's records for the stretch of ``epoch`` that follows ``history``."""
        stretch = Stretch(self.world_size, self.batch_size, 0)
        records = self.remaining(epoch, history)
        return self._rank_plan(epoch, records, len(history), stretch, self.rank)

    def batches(self, epoch: int, history: Sequence[Stretch] = ()) -> Iterator[np.ndarray]:
        """The records of each of this rank's batches (global indices)."""
        plan = self.plan(epoch, history)
        for k in range(len(plan)):
            yield plan.records[plan.batch(k)]

    def _share(self, n: int, world_size: int, batch_size: int, rank: int) -> tuple[int, int, int]:
        """``(start, length, padded length)`` of ``rank``'s share of ``n`` records."""
        if self.drop_last:
            take = n // (world_size * batch_size) * batch_size
            return rank * take, take, take
        q, extra = divmod(n, world_size)
        return rank * q + min(rank, extra), q + (rank < extra), q + (extra > 0)

    def _rank_plan(
        self, epoch: int, records: np.ndarray, generation: int, stretch: Stretch, rank: int
    ) -> RankPlan:
        start, length, padded = self._share(
            len(records), stretch.world_size, stretch.batch_size, rank
        )
        share = records[start : start + length]
        share, steps = self._deal(
            share, generator(self.seed, epoch, Stream.RANK_SHARE, generation, rank)
        )
        if padded > length:
            # A repeat of the rank's own last record: its chunk is still at hand.
            filler = share[-1] if length else records[rank % len(records)]
            share = np.append(share, np.full(padded - length, filler, dtype=np.int64))
            filler_step = steps[-1] if length else 0
            steps = np.append(steps, np.full(padded - length, filler_step, dtype=np.int32))
        padding = np.arange(padded) >= length
        return RankPlan(share, padding, self.chunk_of(share), steps, stretch.batch_size)

    def _deal(self, share: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Deal each chunk of ``share`` (consecutive runs) out over ``span`` steps and
        shuffle each step with ``rng``: the serving order, and each record's step."""
        chunks = self.chunk_of(share)
        new = np.ones(len(share), dtype=bool)
        new[1:] = chunks[1:] != chunks[:-1]
        piece = np.cumsum(new) - 1  # k: the piece (a chunk's run) of each record
        head = np.flatnonzero(new)
        within = np.arange(len(share)) - head[piece]
        size = np.diff(np.append(head, len(share)))[piece]
        steps = (piece + _part_of(within, size, self.span)).astype(np.int32)
        if not self.shuffle:
            return share, steps
        noise = rng.random(len(share))
        order = np.lexsort((noise, steps))
        return share[order], steps[order]


def _part_of(index: np.ndarray, size: np.ndarray, parts: int) -> np.ndarray:
    """Which of ``parts`` near-equal consecutive parts (the larger ones first) of a run
    of ``size`` items holds item ``index``.

    Examples
    --------
    >>> _part_of(np.arange(7), np.full(7, 7), 3).tolist()  # parts of 3, 2, 2
    [0, 0, 0, 1, 1, 2, 2]
    """
    small, extra = size // parts, size % parts
    in_large = index < extra * (small + 1)
    large_part = index // (small + 1)
    small_part = extra + (index - extra * (small + 1)) // np.maximum(small, 1)
    return np.where(in_large, large_part, small_part).astype(np.int64)


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
