"""Where the work runs: turn the ``client=``/``scheduler=`` arguments into an
executor, and run a list of chunk tasks on it with an optional progress bar."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask

from .errors import DaskmriError
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


def process_pool(workers: int):
    """A process pool like the one Dask's ``"processes"`` scheduler makes (same start
    method)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
    return ProcessPoolExecutor(workers, mp_context=context)


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
    # cloudpickle, as Dask's own process scheduler uses: readers may be closures.
    import cloudpickle

    function, args, kwargs = cloudpickle.loads(payload)
    return function(*args, **kwargs)


class ProcessWorkers:
    """Local worker processes that get past one of them dying.

    Dask's ``"processes"`` scheduler fails a whole computation when a worker process
    dies (``BrokenProcessPool``) and loses what the other tasks had finished. Here
    each chunk is its own future: finished chunks are kept, the pool is restarted,
    and the chunks that were in flight run again alone. A chunk that kills its
    process alone has its records parsed one at a time in a child process
    (:func:`~daskmri.parse.find_killers`); the records that kill are dropped
    (:data:`~daskmri.parse.POISON_REASON`) and the chunk runs once more without them.

    A chunk still running after ``chunk_timeout`` seconds counts as a death too (its
    processes are killed): a reader that hangs is found like one that crashes.

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

    def __enter__(self) -> ProcessWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, function: Callable, *args: Any, **kwargs: Any):
        import cloudpickle

        if self._pool is None:
            self._pool = process_pool(self.workers)
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
            If a chunk keeps killing its process once its deadly records are skipped.
        """
        from collections import Counter, deque
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        results: list[Any] = [None] * len(parts)
        poisoned: set[tuple[str, int]] = set()
        suspects: set[int] = set()  # chunks in flight when a process died: run alone
        deaths: Counter[int] = Counter()
        queue: deque[int] = deque(range(len(parts)))
        flight: dict[Any, int] = {}
        sent: dict[Any, float] = {}
        isolating = 0.0

        def reader_for(j: int):
            skip = frozenset(_key(r) for _, r in parts[j]) & poisoned
            return Skipping(reader, skip) if skip else reader

        while queue or flight:
            # A suspect runs alone, so that if a process dies, the chunk that killed it
            # is known.
            while queue and len(flight) < self.workers:
                if flight and (queue[0] in suspects or suspects & set(flight.values())):
                    break
                j = queue.popleft()
                future = self._submit(task, parts[j], reader=reader_for(j))
                flight[future], sent[future] = j, time.perf_counter()
            oldest = min(sent[f] for f in flight)
            left = oldest + self.chunk_timeout - time.perf_counter()
            finished, _ = wait(flight, timeout=max(left, 0), return_when=FIRST_COMPLETED)
            if not finished:
                # A chunk hangs: kill the pool's processes, so that it breaks as if the
                # chunk had crashed (ProcessPoolExecutor has no public way to do this).
                for process in list(self._pool._processes.values()):
                    process.kill()
                wait(flight, timeout=60)
                finished = set(flight)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
                # A dead process breaks the pool: every future in flight fails at once.
                wait(flight, timeout=60)
                finished = set(flight)
            lost, lost_since = [], time.perf_counter()
            for future in finished:
                j = flight.pop(future)
                error = future.exception() if future.done() else BrokenProcessPool()
                if isinstance(error, BrokenProcessPool):
                    lost.append(j)
                    lost_since = min(lost_since, sent[future])
                elif error is not None:
                    raise error
                else:
                    results[j] = future.result()
                    if progress is not None:
                        progress.advance()
                    if j in suspects:  # ran alone: part of the cost of isolating
                        isolating += time.perf_counter() - sent[future]
                sent.pop(future, None)
            if not lost:
                continue
            self._pool.shutdown(wait=True)
            self._pool = None
            self.restarts += 1
            if len(lost) == 1:
                j = lost[0]
                deaths[j] += 1
                found = set(find_killers(parts[j], reader_for(j), timeout=self.chunk_timeout))
                poisoned |= found
                if not found and deaths[j] > self.MAX_SOLO_DEATHS:
                    raise DaskmriError(
                        f"a chunk of {len(parts[j])} records (from "
                        f"{parts[j][0][1].dicom_path}) killed its worker process {deaths[j]} "
                        "times, although none of its records does alone; is the machine out "
                        "of memory?"
                    )
            suspects.update(lost)
            queue.extendleft(sorted(lost, reverse=True))
            # The time lost: the dead chunks' runs, the restart and the search.
            isolating += time.perf_counter() - lost_since
        isolation = Isolation(tuple(sorted(poisoned)), isolating)
        isolation.log()
        return results, isolation


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
