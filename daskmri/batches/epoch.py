"""One pass over the data, as a state machine that owns its state: :class:`Epoch`.

A background thread (its :class:`Feed`) runs :func:`~daskmri.batches.loading.
load_batches` into a small queue while the training step runs, so that taking a
batch only takes one that is ready. The epoch's states::

    PLANNED --next--> RUNNING --last batch taken--> DRAINED
       |                 |------an error raised---> FAILED
       +---cancel/close--+----------------------->  CLOSED

DRAINED, FAILED and CLOSED are final: ``next`` then ends the iteration. Only the
epoch's own methods move it, or its position (batches of its stretch served); the
iterator asks it where it stands (:meth:`Epoch.resume_point`).

Stopping comes in two strengths. :meth:`Epoch.cancel` only tells the thread to stop
(it releases what it holds and ends within moments, or once a chunk load under way
in a local thread ends) and returns at once: it is what garbage collection calls,
which may run in any thread at any time, where a wait could stall or deadlock.
:meth:`Epoch.close` cancels and then waits for the thread, at most ``timeout``.
"""

from __future__ import annotations

import contextlib
import enum
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import DaskmriError
from .loading import Loading, load_batches
from .schema import Stretch

__all__ = ["POLL", "READY_BATCHES", "ROOM_POLL", "Cursor", "Epoch", "EpochState", "Feed"]

#: Batches assembled ahead of the training loop, and how often waits look up.
READY_BATCHES = 2
POLL = 0.1
#: How often the batch thread looks for room in a full queue: from the first value,
#: doubling up to the second while the queue stays full.
ROOM_POLL = (0.0005, 0.005)


class EpochState(enum.Enum):
    """Where an :class:`Epoch` stands."""

    PLANNED = "planned"  # made; nothing fetched, no thread
    RUNNING = "running"  # its thread assembles batches
    DRAINED = "drained"  # every batch served
    CLOSED = "closed"  # stopped before its end (close, a break, garbage)
    FAILED = "failed"  # an error was raised to the training loop


FINAL = frozenset({EpochState.DRAINED, EpochState.CLOSED, EpochState.FAILED})


@dataclass(frozen=True)
class Cursor:
    """Where an iteration stands: batch ``position`` of the stretch of ``epoch`` that
    follows ``history``.

    Examples
    --------
    >>> Cursor(3)
    Cursor(epoch=3, history=(), position=0)
    """

    epoch: int
    history: tuple[Stretch, ...] = ()
    position: int = 0


class Feed:
    """An epoch's background thread and the queue it fills; it never refers to the
    epoch, so dropping the epoch (a ``break``) lets garbage collection stop it.

    Parameters
    ----------
    batches : iterator of dict
        The epoch's batches; closed by the thread when it ends.
    stop : threading.Event
        Set to stop the thread.
    """

    def __init__(self, batches: Iterator[dict], stop: threading.Event) -> None:
        self.ready: queue.SimpleQueue = queue.SimpleQueue()  # bounded by produce
        self.stop = stop
        self.thread = threading.Thread(
            target=produce,
            args=(batches, self.ready, stop),
            name="daskmri-prefetch-batches",
            daemon=True,
        )

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the thread; whether it ended."""
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=timeout)
        return not self.thread.is_alive()


def produce(batches: Iterator[dict], ready: queue.SimpleQueue, stop: threading.Event) -> None:
    """The batch thread: run the epoch's generator into ``ready`` until it ends, fails
    or is told to stop; closing the generator releases its fetches and threads.

    The thread looks for room itself rather than wait to be woken: a bounded queue
    wakes it from inside every ``next()``, which cost the training loop about 85 us a
    batch here (1% of a 10 ms step) against 18 us for a look every few ms.

    Parameters
    ----------
    batches : iterator of dict
        The epoch's batches.
    ready : queue.SimpleQueue
        Where ``("batch", b)``, then ``("end", None)`` or ``("error", exc)`` go.
    stop : threading.Event
        Set to stop.

    Examples
    --------
    >>> ready = queue.SimpleQueue()
    >>> produce(iter([{"a": 1}]), ready, threading.Event())
    >>> ready.get(), ready.get()
    (('batch', {'a': 1}), ('end', None))
    """

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
        close = getattr(batches, "close", None)
        if close is not None:
            close()


class Epoch:
    """One pass over the data from a :class:`Cursor`, its batches loaded behind.

    Parameters
    ----------
    loading : Loading
        The plan, the fetching, the transform.
    start : Cursor
        The epoch, its earlier stretches and the first batch to serve.
    started : callable, optional
        Called with the background thread once it starts (the iterator keeps a weak
        list, to wait for it on an explicit close).
    """

    def __init__(
        self,
        loading: Loading,
        start: Cursor,
        started: Callable[[threading.Thread], None] | None = None,
    ) -> None:
        self._loading, self._start, self._started = loading, start, started
        self._position = start.position
        self._state = EpochState.PLANNED
        self._feed: Feed | None = None

    @property
    def state(self) -> EpochState:
        """Where the epoch stands."""
        return self._state

    @property
    def number(self) -> int:
        """The epoch's number."""
        return self._start.epoch

    @property
    def position(self) -> int:
        """Batches of the current stretch served (from the start of the stretch)."""
        return self._position

    def resume_point(self) -> Cursor:
        """Where the next pass starts: the next epoch once this one is drained, else
        this one where it stands."""
        if self._state is EpochState.DRAINED:
            return Cursor(self.number + 1)
        return Cursor(self.number, self._start.history, self._position)

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch; starts the thread the first time.

        Raises
        ------
        StopIteration
            Once the epoch is drained, closed, or has failed.
        DaskmriError
            If loading failed (then the epoch has failed), or the thread died.
        """
        if self._state is EpochState.PLANNED:
            self._run()
        if self._state in FINAL:
            raise StopIteration
        kind, value = self._receive()
        if kind == "batch":
            self._position += 1
            return value
        self._finish(EpochState.FAILED if kind == "error" else EpochState.DRAINED)
        if kind == "error":
            raise value
        raise StopIteration

    def cancel(self) -> None:
        """Tell the thread to stop, and return at once (never waits: safe in
        ``__del__`` and in any thread). A final epoch stays as it is."""
        if self._state in FINAL:
            return
        self._state = EpochState.CLOSED
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.stop.set()

    def close(self, timeout: float) -> bool:
        """Cancel, then wait at most ``timeout`` seconds for the thread to end.

        Returns
        -------
        bool
            Whether the thread has ended (or never started).
        """
        feed = self._feed
        self.cancel()
        return feed is None or feed.join(timeout)

    def _run(self) -> None:
        stop = threading.Event()
        s = self._start
        self._feed = Feed(load_batches(self._loading, s.epoch, s.history, s.position, stop), stop)
        self._state = EpochState.RUNNING
        self._feed.thread.start()
        if self._started is not None:
            self._started(self._feed.thread)

    def _receive(self) -> tuple[str, object]:
        """The thread's next message, waited for as long as the thread lives."""
        feed = self._feed
        while True:
            try:
                return feed.ready.get(timeout=POLL)
            except queue.Empty:
                if self._state is EpochState.CLOSED:
                    raise StopIteration from None  # closed from another thread
                if not feed.thread.is_alive() and feed.ready.empty():
                    self._finish(EpochState.FAILED)
                    raise DaskmriError("the batch thread stopped unexpectedly") from None

    def _finish(self, state: EpochState) -> None:
        """Enter final ``state``; the thread has said its last, so it ends now."""
        self._state = state
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.join(self._loading.timeout + 10)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit anything may be gone
            self.cancel()  # never waits: garbage collection may run anywhere
