"""Crash isolation, one policy for local worker processes and for a Dask cluster.

A worker process that dies (a crash in a C decoder, an OOM kill, a hang that is
killed) takes down the chunks it was running. :class:`CrashPolicy` decides, as a
pure state machine, what happens next: the lost chunks become *suspects* and run
again, each alone; a chunk that died alone has its records searched one at a time
(:func:`~daskmri.execute.find_killers`) and runs once more with the killers
skipped (:class:`Skipping`); a chunk that keeps dying although none of its records
kills alone stops the run. The executors only report deaths and searches to it.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ..errors import DaskmriError, RecordError
from ..record import Parsed, Record

__all__ = ["POISON_REASON", "CrashPolicy", "Isolation", "Skipping"]

logger = logging.getLogger(__name__)

#: The reason given for a record whose parsing killed the worker process.
POISON_REASON = (
    "the worker process died while parsing this record (a crash in a decoder, or out of "
    "memory); it was isolated by parsing its chunk's records one at a time"
)

Key = tuple[str, int]


@dataclass(frozen=True)
class Skipping:
    """A reader that drops the records in ``skip`` (``(patient_id, instance)`` keys)
    without reading them, and reads the rest with ``reader``."""

    reader: Callable[[Record], Parsed]
    skip: frozenset

    def __call__(self, record: Record) -> Parsed:
        if record.key in self.skip:
            raise RecordError(record.image_path or "", POISON_REASON)
        return self.reader(record)


@dataclass(frozen=True)
class Isolation:
    """Records found to kill the process that parsed them, and the time spent finding
    them (probing records one at a time and restarting workers)."""

    records: tuple[Key, ...] = ()
    seconds: float = 0.0

    def __add__(self, other: Isolation) -> Isolation:
        return Isolation(
            tuple(sorted({*self.records, *other.records})), self.seconds + other.seconds
        )

    def log(self) -> None:
        if self.records:
            logger.warning(
                "isolated %d record(s) that killed their worker process (%s) in %.1f s",
                len(self.records),
                ", ".join(f"{p}/{i}" for p, i in self.records),
                self.seconds,
            )


class CrashPolicy:
    """Which chunk runs next, and with which records skipped, as workers die.

    Chunks are indexes into ``parts`` (each a list of ``(slot, record)``).

    Examples
    --------
    Two chunks were running when a process died: both are suspects and run again,
    one at a time. Chunk 1 then dies alone, so its records are searched.

    >>> parts = [[(0, Record("P", "O", 1, None))], [(1, Record("P", "O", 2, None))]]
    >>> policy = CrashPolicy(parts, reader=print)
    >>> policy.take(running=[]), policy.take(running=[0])
    (0, 1)
    >>> policy.died([0, 1])  # several lost: none is known to be the killer
    []
    >>> policy.take(running=[]), policy.take(running=[0])  # suspects run alone
    (0, None)
    >>> policy.finished(0); policy.take(running=[]), policy.died([1])
    (1, [1])
    >>> policy.convict(1, [("P", 2)]); policy.reader_for(1).skip
    frozenset({('P', 2)})
    """

    #: Times a chunk may die alone with no killer found among its records before
    #: the run gives up (the crash then is not one record's).
    MAX_SOLO_DEATHS = 3

    def __init__(self, parts: Sequence[Sequence[tuple[int, Record]]], reader: Callable) -> None:
        self.parts, self.reader = parts, reader
        self.queue: deque[int] = deque(range(len(parts)))
        self.poisoned: set[Key] = set()
        self.suspects: set[int] = set()
        self.deaths: Counter[int] = Counter()
        self.seconds = 0.0

    @property
    def pending(self) -> bool:
        return bool(self.queue)

    def take(self, running: Collection[int]) -> int | None:
        """The next chunk to start while ``running`` run, or None to wait: a suspect
        runs alone, so that if a process dies, the chunk that killed it is known."""
        if not self.queue:
            return None
        if running and (self.queue[0] in self.suspects or self.suspects & set(running)):
            return None
        return self.queue.popleft()

    def finished(self, chunk: int) -> None:
        """``chunk`` ran to the end (its records may still have been dropped)."""

    def died(self, chunks: Sequence[int], *, alone: bool | None = None) -> list[int]:
        """``chunks`` were lost with their worker. They run again, first, as suspects.
        Returns those whose records must be searched now: the chunks known to have
        killed (``alone``, by default when a single chunk was lost)."""
        alone = len(chunks) == 1 if alone is None else alone
        self.suspects.update(chunks)
        self.queue.extendleft(sorted(chunks, reverse=True))
        if not alone:
            return []
        self.deaths.update(chunks)
        return list(chunks)

    def convict(self, chunk: int, killers: Sequence[Key]) -> None:
        """The search of ``chunk`` found ``killers``; they are skipped from now on.

        Raises
        ------
        DaskmriError
            When ``chunk`` died alone more than :attr:`MAX_SOLO_DEATHS` times and none
            of its records kills alone.
        """
        self.poisoned.update(killers)
        if not killers and self.deaths[chunk] > self.MAX_SOLO_DEATHS:
            part = self.parts[chunk]
            raise DaskmriError(
                f"a chunk of {len(part)} records (from {part[0][1].image_path}) killed "
                f"its worker process {self.deaths[chunk]} times, although none of its "
                "records does alone; is the machine out of memory?"
            )

    def reader_for(self, chunk: int) -> Callable:
        """The reader for ``chunk``: skipping its records known to kill."""
        skip = frozenset(record.key for _, record in self.parts[chunk]) & self.poisoned
        return Skipping(self.reader, skip) if skip else self.reader

    def isolation(self) -> Isolation:
        return Isolation(tuple(sorted(self.poisoned)), self.seconds)
