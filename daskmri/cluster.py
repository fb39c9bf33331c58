"""Where the work runs: turn the ``client=``/``scheduler=`` arguments into an
executor, and run a list of chunk tasks on it with an optional progress bar."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask

from .errors import DaskmriError, WorkerStartError
from .parse import Record, Skipping, find_killers

__all__ = ["SCHEDULERS", "Isolation", "ProcessWorkers", "Progress", "resolve_client", "run_tasks"]

logger = logging.getLogger(__name__)

SCHEDULERS = ("sync", "threads", "processes")

# How long to wait for a scheduler given by address before giving up with a
# clear error instead of hanging.
CONNECT_TIMEOUT = "30s"


def resolve_client(client: Any = None, *, security: Any = None):
    """Return the ``distributed.Client`` to use, or None for a local scheduler.

    Parameters
    ----------
    client : None, distributed.Client or str
        A client is used as is. A string is a scheduler address
        (``"tcp://10.0.0.5:8786"``) to connect to; like ``Client(address)`` the new
        client becomes the default one. None picks, in order, the
        current default client if one exists, then the ``scheduler-address`` of
        the Dask config (``DASK_SCHEDULER_ADDRESS``), else None (local).

    Raises
    ------
    DaskmriError
        If the address cannot be reached within the timeout.
    TypeError
        If ``client`` is of another type.

    Examples
    --------
    >>> resolve_client(None) is None  # no cluster running here
    True
    """
    if client is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            pass
        address = dask.config.get("scheduler-address", None)
        if not address:
            return None
        client = address
    if isinstance(client, str):
        from distributed import Client

        probe_scheduler(client)
        try:
            # As Client(address) does, this becomes the default client: the returned
            # dataset's data live on that cluster and .compute() must find it.
            return Client(client, timeout=CONNECT_TIMEOUT, security=security)
        except OSError as exc:
            raise DaskmriError(
                f"cannot reach a Dask scheduler at {client!r} within {CONNECT_TIMEOUT} ({exc}). "
                "Is `dask scheduler` running there, and is the address right?"
            ) from None
    if type(client).__name__ == "Client":
        return client
    raise TypeError(
        f"client must be None, a distributed.Client or a scheduler address string, "
        f"got {type(client).__name__}"
    )


#: Seconds to wait for a scheduler's port to accept a connection before leaving the
#: rest to the client's own timeout (a slow network is not a closed port).
PROBE_TIMEOUT = 3.0


def probe_scheduler(address: str) -> None:
    """Fail in one line, naming ``address``, when no Dask scheduler answers there.

    ``distributed.Client(address)`` retries a refused connection until its timeout
    (30 s) before it says so, and waits for ever on a port that accepts connections
    but never answers (its handshake read has no timeout). So: a refused connection,
    an unknown or unreachable host fail at once; a ``tcp://`` port that accepts but
    sends no Dask handshake (a scheduler speaks first) fails after
    :data:`CONNECT_TIMEOUT`. A port that does not answer within
    :data:`PROBE_TIMEOUT`, and ``tls://`` after the connection, are left to the
    client and its timeout.

    Raises
    ------
    DaskmriError
        Naming the address and what to check.

    Examples
    --------
    >>> probe_scheduler("tcp://127.0.0.1:9")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.DaskmriError: nothing is listening at 'tcp://127.0.0.1:9' (...); ...
    """
    import select
    import socket

    from dask.utils import parse_timedelta
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme not in ("tcp", "tls"):
        return  # other transports (inproc, ucx, ws) are the client's to reach
    try:
        host, port = parse_host_port(location)
    except ValueError as exc:
        raise DaskmriError(
            f"{address!r} is not a scheduler address ({exc}); write it as tcp://host:8786"
        ) from None
    try:
        sock = socket.create_connection((host, port), timeout=PROBE_TIMEOUT)
    except TimeoutError:
        return
    except OSError as exc:
        raise DaskmriError(
            f"nothing is listening at {address!r} ({exc.strerror or exc}); start the "
            "scheduler (`dask scheduler`) or fix the address"
        ) from None
    with sock:
        wait = parse_timedelta(CONNECT_TIMEOUT)
        if scheme == "tcp" and not select.select([sock], [], [], wait)[0]:
            raise DaskmriError(
                f"the server at {address!r} accepted the connection but sent no Dask "
                f"handshake within {CONNECT_TIMEOUT}; is that port a Dask scheduler's?"
            )


@contextlib.contextmanager
def connect(client: Any = None, *, security: Any = None) -> Iterator[Any]:
    """:func:`resolve_client` for work whose results are not left on the cluster:
    a client made here from an address is closed on exit; a client that already
    existed is left as it was."""
    existing = client
    if client is None:
        try:
            from distributed import default_client

            existing = default_client()
        except (ImportError, ValueError):
            existing = None
    resolved = resolve_client(client, security=security)
    try:
        yield resolved
    finally:
        if resolved is not None and resolved is not existing:
            resolved.close()


def _worker_facts(root: str | None) -> dict:
    import os

    from . import __version__

    return {"version": __version__, "sees_root": root is None or os.path.isdir(root)}


def check_workers(client, root: str | None = None) -> None:
    """Fail in one line, before any work, when the cluster's workers cannot import
    daskmri or cannot see the data folder (rather than with a deep traceback from
    the first task, or a hang).

    Raises
    ------
    DaskmriError
        Naming the workers and the fix.
    """
    facts = client.run(_worker_facts, root, on_error="return")
    broken = {w: f for w, f in facts.items() if isinstance(f, BaseException)}
    if broken:
        worker, error = next(iter(broken.items()))
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DaskmriError(
            f"{len(broken)} of {len(facts)} workers cannot run daskmri (e.g. {worker}: "
            f"{reason}); install the same environment as the client on every worker"
        )
    blind = [w for w, f in facts.items() if not f["sees_root"]]
    if blind:
        raise DaskmriError(
            f"{len(blind)} of {len(facts)} workers cannot see the data folder {root} "
            f"(e.g. {blind[0]}); put it on a filesystem mounted at the same path on every worker"
        )


def check_scheduler(scheduler: str | None) -> None:
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(
            f"scheduler must be one of {SCHEDULERS} or None, got {scheduler!r}; "
            "for a cluster pass client=<Client or address> instead"
        )


def local_scheduler(scheduler: str | None, n_tasks: int) -> str:
    """The local scheduler to use: ``scheduler``, or the default for ``n_tasks``."""
    check_scheduler(scheduler)
    if scheduler is not None:
        return scheduler
    return "processes" if n_tasks > 1 else "sync"


class Progress:
    """A one-line progress bar on stderr over work that runs in several batches of
    tasks (one Dask bar per batch would print a bar per batch).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = Progress(4, file=out, interval=0)
    >>> bar.advance(); bar.advance(3); bar.close()
    >>> out.getvalue().splitlines()[-1].split("|")[1].strip()
    '4/4 chunks'
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "chunks",
        file: Any = None,
        width: int = 30,
        interval: float = 0.2,
    ) -> None:
        self.total, self.label, self.width, self.interval = total, label, width, interval
        self.file = sys.stderr if file is None else file
        self.done = 0
        self._started = time.perf_counter()
        self._shown = -float("inf")
        self._show(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._shown < self.interval and self.done < self.total:
            return
        self._shown = now
        share = self.done / self.total if self.total else 1.0
        bar = "#" * round(share * self.width)
        self.file.write(
            f"\r[{bar:<{self.width}}] {share:4.0%} | {self.done}/{self.total} {self.label} "
            f"| {now - self._started:.1f} s"
        )
        self.file.flush()

    def close(self) -> None:
        self._show(force=True)
        self.file.write("\n")
        self.file.flush()


def run_tasks(
    tasks: Sequence[Any],
    *,
    client: Any = None,
    scheduler: str | None = None,
    progress: bool | Progress = False,
) -> list[Any]:
    """Run dask ``tasks`` (Delayed objects).

    With a client the results stay on the cluster: a list of futures is
    returned. Otherwise the tasks run on the local ``scheduler`` and their values
    are returned. ``scheduler=None`` means ``"processes"`` (pydicom parsing is pure
    Python and holds the GIL, so threads do not run it in parallel), or
    ``"sync"`` when there is a single task and a process pool would only add its
    start-up time.

    ``progress`` is True for a Dask progress bar, or a :class:`Progress` to advance
    by one per finished task. (daskmri's own chunks go to worker processes through
    :class:`ProcessWorkers`, which gets past a process that dies.)
    """
    if client is not None:
        futures = client.compute(list(tasks))
        if isinstance(progress, Progress):
            # Advanced as futures finish; the caller's wait is the one that is bounded.
            for future in futures:
                future.add_done_callback(lambda _: progress.advance())
        elif progress:
            from distributed import progress as show_progress

            show_progress(futures, notebook=False)
            print()
        return futures
    scheduler = local_scheduler(scheduler, len(tasks))
    logger.debug("running %d tasks on the %r scheduler", len(tasks), scheduler)
    if isinstance(progress, Progress):
        from dask.callbacks import Callback

        def advance(key, result, dsk, state, worker_id) -> None:
            progress.advance()

        with Callback(posttask=advance):
            return list(dask.compute(*tasks, scheduler=scheduler))
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks, scheduler=scheduler))
    return list(dask.compute(*tasks, scheduler=scheduler))


# -- records that kill their worker process ---------------------------------------


@dataclass(frozen=True)
class Isolation:
    """Records found to kill the process that parsed them, and the time spent finding
    them (probing records one at a time and restarting workers)."""

    records: tuple[tuple[str, int], ...] = ()
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


def _key(record: Record) -> tuple[str, int]:
    return (record.patient_id, record.instance)


def _call(payload: bytes) -> Any:
    # cloudpickle, as Dask's own process scheduler uses: readers may be closures. The
    # task is unpickled here, inside the task, so that a reader that cannot be
    # unpickled is an ordinary error of its chunk rather than a broken pool.
    import cloudpickle

    function, args, kwargs = cloudpickle.loads(payload)
    return function(*args, **kwargs)


#: Seconds an idle local worker process waits for more work before it exits. Long
#: enough that the next call of a notebook or script finds the pool warm.
IDLE_TIMEOUT = 300.0


def local_pool(workers: int):
    """The process pool that local worker processes come from: loky's reusable
    executor, the same one across calls (it outlives one ``load_dataset`` or
    ``build``, so the next call starts no processes).

    loky starts its workers as fresh interpreters that never import the caller's
    ``__main__``: a script without an ``if __name__ == "__main__":`` guard runs once.
    A worker that dies breaks the executor; the next call here makes a new one. Idle
    workers exit after :data:`IDLE_TIMEOUT` seconds, and all of them at interpreter
    exit.
    """
    from loky import get_reusable_executor

    pool = get_reusable_executor(max_workers=workers, timeout=IDLE_TIMEOUT)
    _POOLS.add(pool)
    return pool


#: The pools :func:`local_pool` handed out (loky keeps one per thread), so that
#: :func:`shutdown_local_workers` can find them without making one.
_POOLS: weakref.WeakSet = weakref.WeakSet()


def shutdown_local_workers() -> None:
    """Stop daskmri's local worker processes now, rather than after
    :data:`IDLE_TIMEOUT` seconds idle or at interpreter exit. The next call that
    needs them starts new ones.

    Examples
    --------
    >>> import daskmri
    >>> daskmri.shutdown_local_workers()
    """
    for pool in list(_POOLS):
        pool.shutdown(wait=True)
    _POOLS.clear()


def _died(error: BaseException | None) -> bool:
    """Whether a chunk's future failed because its worker process ended (a crash, an
    OOM kill, or the kill of a chunk that hung), not because the task raised."""
    from loky.process_executor import ShutdownExecutorError, TerminatedWorkerError

    return isinstance(error, (TerminatedWorkerError, ShutdownExecutorError))


def _broken(error: BaseException) -> DaskmriError:
    cause = error.__cause__
    detail = str(cause).strip().splitlines()[-1] if cause is not None else ""
    return DaskmriError(
        f"local worker processes cannot run daskmri's tasks ({error}"
        f"{': ' + detail if detail else ''}); check that this environment imports "
        "daskmri, or pass scheduler='sync'"
    )


def check_worker_start(*, timeout: float = 120.0) -> None:
    """Start one interpreter as a local worker process starts (this Python, this
    environment) and import daskmri's worker side in it.

    Used when worker processes die before any chunk finished: if they cannot start at
    all, that is the error to report, not the records they were given.

    Raises
    ------
    WorkerStartError
        With the last line the interpreter printed.
    """
    import subprocess

    command = [sys.executable, "-c", "import daskmri.cluster, daskmri.parse"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        reason = f"it did not start within {timeout:.0f} s"
    else:
        if done.returncode == 0:
            return
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit code {done.returncode}"
    raise WorkerStartError(
        f"local worker processes cannot start: {reason}; check that {sys.executable} "
        "imports daskmri in this environment (or pass scheduler='sync')"
    )


class ProcessWorkers:
    """Local worker processes that get past one of them dying.

    The processes come from :func:`local_pool` (loky): they never re-run the
    caller's script, and they stay up between calls. Each chunk is its own future:
    when a process dies, the chunks that finished are kept, and the chunks that were
    in flight run again alone. A chunk that kills its process alone has its records
    parsed one at a time in a child process (:func:`~daskmri.parse.find_killers`);
    the records that kill are dropped (:data:`~daskmri.parse.POISON_REASON`) and the
    chunk runs once more without them.

    A chunk still running after ``chunk_timeout`` seconds counts as a death too (the
    pool's processes are killed): a reader that hangs is found like one that crashes.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default Dask's ``num_workers`` config, else one per core.
    chunk_timeout : float
        Seconds a chunk may run, and a record in the search may take.

    Examples
    --------
    >>> import functools, tempfile, daskmri
    >>> from daskmri.dataset import plan_chunks
    >>> from daskmri.parse import parse_partition
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(16, 16))
    >>> items = list(enumerate(plan_chunks(daskmri.scan(root)).chunks[0]))
    >>> task = functools.partial(parse_partition, shape=(16, 16), slots=None)
    >>> with ProcessWorkers(1) as workers:
    ...     results, isolation = workers.run(task, [items], daskmri.read_record)
    >>> results[0][0].image.shape, isolation.records
    ((3, 16, 16), ())
    """

    #: Times a chunk may kill its process while running alone with its killers
    #: skipped before the run gives up (the crash then is not one record's).
    MAX_SOLO_DEATHS = 3

    def __init__(self, workers: int | None = None, *, chunk_timeout: float = 600.0) -> None:
        import os

        # As Dask's own pool: dask.config's num_workers, else one per core.
        self.workers = int(workers or dask.config.get("num_workers", None) or os.cpu_count() or 1)
        self.chunk_timeout = chunk_timeout
        self.restarts = 0
        self._pool: Any = None
        # Whether any chunk finished: if none did when processes die, they may not be
        # able to start at all.
        self._ran = False

    def __enter__(self) -> ProcessWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the pool. Its processes stay up for the next call (see
        :func:`local_pool`); a pool this run broke is already gone."""
        self._pool = None

    def _submit(self, function: Callable, *args: Any, **kwargs: Any):
        import cloudpickle

        if self._pool is None:
            self._pool = local_pool(self.workers)
        return self._pool.submit(_call, cloudpickle.dumps((function, args, kwargs)))

    def run(
        self,
        task: Callable[..., Any],
        parts: Sequence[list],
        reader: Callable[[Record], Any],
        *,
        progress: Progress | None = None,
    ) -> tuple[list, Isolation]:
        """Run ``task(part, reader=reader)`` for every part (a list of ``(slot, record)``).

        Returns the results in the order of ``parts`` and the :class:`Isolation`.
        An exception a task raises (not a process death) is raised here.

        Raises
        ------
        DaskmriError
            If a chunk keeps killing its process once its deadly records are skipped,
            or if worker processes cannot start at all (with the reason they gave).
        """
        state = _Run(parts, reader)
        while state.queue or state.flight:
            self._fill(task, state)
            lost, lost_since = self._collect(state, self._wait(state), progress)
            if lost:
                self._recover(state, lost, lost_since)
        isolation = Isolation(tuple(sorted(state.poisoned)), state.isolating)
        isolation.log()
        return state.results, isolation

    def _fill(self, task: Callable, state: _Run) -> None:
        # A suspect runs alone, so that if a process dies, the chunk that killed it
        # is known.
        while state.queue and len(state.flight) < self.workers:
            if state.flight and (
                state.queue[0] in state.suspects or state.suspects & set(state.flight.values())
            ):
                break
            j = state.queue.popleft()
            future = self._submit(task, state.parts[j], reader=state.reader_for(j))
            state.flight[future], state.sent[future] = j, time.perf_counter()

    def _wait(self, state: _Run) -> set:
        """The futures that finished (or that a death or a hang took down)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        left = min(state.sent.values()) + self.chunk_timeout - time.perf_counter()
        finished, _ = wait(state.flight, timeout=max(left, 0), return_when=FIRST_COMPLETED)
        if not finished:
            # A chunk hangs: end the pool's processes, so that it fails as if it had
            # crashed.
            self._pool.shutdown(wait=True, kill_workers=True)
            self._pool = None
        elif not any(_died(f.exception()) for f in finished):
            return finished
        # A dead process breaks the pool: every future in flight fails with it.
        wait(state.flight, timeout=60)
        return set(state.flight)

    def _collect(self, state: _Run, finished: set, progress) -> tuple[list[int], float]:
        """Take the results of ``finished``; return the chunks lost to a death and
        when the first of them was sent."""
        from concurrent.futures.process import BrokenProcessPool

        lost, lost_since = [], time.perf_counter()
        for future in finished:
            j, sent = state.flight.pop(future), state.sent.pop(future)
            error = future.exception() if future.done() else None
            if not future.done() or _died(error):
                lost.append(j)
                lost_since = min(lost_since, sent)
            elif isinstance(error, BrokenProcessPool):
                raise _broken(error)
            elif error is not None:
                raise error
            else:
                state.results[j] = future.result()
                self._ran = True
                if progress is not None:
                    progress.advance()
                if j in state.suspects:  # ran alone: part of the cost of isolating
                    state.isolating += time.perf_counter() - sent
        return lost, lost_since

    def _recover(self, state: _Run, lost: list[int], lost_since: float) -> None:
        """After a death: a new pool, and the lost chunks queued to run alone; a chunk
        that died alone has its killers searched."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, kill_workers=True)
            self._pool = None
        self.restarts += 1
        if not self._ran:
            check_worker_start()
        if len(lost) == 1:
            j = lost[0]
            state.deaths[j] += 1
            found = find_killers(state.parts[j], state.reader_for(j), timeout=self.chunk_timeout)
            state.poisoned.update(found)
            if not found and state.deaths[j] > self.MAX_SOLO_DEATHS:
                part = state.parts[j]
                raise DaskmriError(
                    f"a chunk of {len(part)} records (from {part[0][1].dicom_path}) killed "
                    f"its worker process {state.deaths[j]} times, although none of its "
                    "records does alone; is the machine out of memory?"
                )
        state.suspects.update(lost)
        state.queue.extendleft(sorted(lost, reverse=True))
        # The time lost: the dead chunks' runs, the restart and the search.
        state.isolating += time.perf_counter() - lost_since


class _Run:
    """The state of one :meth:`ProcessWorkers.run`: chunks queued, in flight (future
    to chunk, and when it was sent) and done; records known to kill; chunks suspected
    (in flight when a process died) and how often each died alone."""

    def __init__(self, parts: Sequence[list], reader: Callable) -> None:
        from collections import Counter, deque

        self.parts, self.reader = parts, reader
        self.results: list[Any] = [None] * len(parts)
        self.queue: deque[int] = deque(range(len(parts)))
        self.flight: dict[Any, int] = {}
        self.sent: dict[Any, float] = {}
        self.poisoned: set[tuple[str, int]] = set()
        self.suspects: set[int] = set()
        self.deaths: Counter[int] = Counter()
        self.isolating = 0.0

    def reader_for(self, j: int) -> Callable:
        skip = frozenset(_key(r) for _, r in self.parts[j]) & self.poisoned
        return Skipping(self.reader, skip) if skip else self.reader


#: How long a cluster may have no workers at all before a wait gives up with an
#: error (rather than waiting for ever for workers that may never come back).
NO_WORKERS_TIMEOUT = 120.0


def wait_on_cluster(client, futures, *, no_workers_timeout: float = NO_WORKERS_TIMEOUT) -> None:
    """``distributed.wait(futures)``, but an error when the cluster has had no workers
    for ``no_workers_timeout`` seconds (all of them died and none came back).

    Raises
    ------
    DaskmriError
        Naming what to do.
    """
    from distributed import wait

    alone_since = None
    while True:
        try:
            with client.as_current():  # wait() looks for a default client otherwise
                wait(futures, timeout=min(5.0, no_workers_timeout))
            return
        except (TimeoutError, asyncio.TimeoutError):  # two classes before Python 3.11
            pass
        if client.nthreads():
            alone_since = None
            continue
        alone_since = time.monotonic() if alone_since is None else alone_since
        if time.monotonic() - alone_since >= no_workers_timeout:
            raise DaskmriError(
                f"the cluster at {client.scheduler.address} has had no workers for "
                f"{no_workers_timeout:.0f} s; start workers (a build resumes where it stopped "
                "when run again)"
            )


def isolate_crashes(
    client,
    futures: list,
    parts: list,
    reader,
    again,
    *,
    rounds: int = 5,
    no_workers_timeout: float = NO_WORKERS_TIMEOUT,
) -> tuple[list, Isolation]:
    """Wait for chunk ``futures``; a chunk whose task kept killing workers
    (``KilledWorker``) has its records parsed one at a time in a child process of a
    worker (:func:`~daskmri.parse.find_killers`), and runs again without the ones that
    kill (they are dropped with a reason saying so). Other errors are raised. Returns
    the futures, the rerun ones replaced, and the :class:`Isolation`.

    It goes round again until nothing fails: while a killer is being found, workers
    die with innocent chunks' results on them, and those chunks can be suspected too;
    reruns never parse a known killer again.

    Raises
    ------
    DaskmriError
        If chunks still fail after ``rounds`` rounds, or the cluster has no workers
        left (see :func:`wait_on_cluster`).
    """
    from distributed.scheduler import KilledWorker

    poisoned: set[tuple[str, int]] = set()
    started = None
    for round_ in range(rounds + 1):
        wait_on_cluster(client, futures, no_workers_timeout=no_workers_timeout)
        failed = [j for j, future in enumerate(futures) if future.status == "error"]
        if not failed:
            break
        for j in failed:
            error = futures[j].exception()
            if not isinstance(error, KilledWorker):
                raise error
        if round_ == rounds:
            raise DaskmriError(
                f"chunks kept killing workers after {rounds} rounds of isolating the records "
                f"that kill them alone ({sorted(poisoned)}); is the cluster healthy?"
            )
        # The time to isolate runs from the first failure, not from the start of the work.
        started = time.perf_counter() if started is None else started
        # Each failed chunk's records are parsed one at a time in a child process of a
        # worker: the child dies, not the worker, so these can run side by side.
        searches = client.map(find_killers, [parts[j] for j in failed], reader=reader, pure=False)
        wait_on_cluster(client, searches, no_workers_timeout=no_workers_timeout)
        for found in client.gather(searches):
            poisoned.update(found)
        skipping = Skipping(reader, frozenset(poisoned))
        for j in failed:
            futures[j] = client.compute(again(parts[j], skipping))
    isolation = Isolation(
        tuple(sorted(poisoned)), 0.0 if started is None else time.perf_counter() - started
    )
    isolation.log()
    return futures, isolation
