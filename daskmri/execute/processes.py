"""Local worker processes: loky's reusable pool (no re-run of the caller's script,
warm across calls), with crash isolation, so one record that kills its process
costs only that record."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import DaskmriError, ReaderError, WorkerStartError
from ._killers import find_killers
from .isolation import CrashPolicy, Isolation

__all__ = ["IDLE_TIMEOUT", "ProcessWorkers", "check_worker_start", "shutdown_local_workers"]

logger = logging.getLogger(__name__)


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
    """Stop daskmri's local worker processes now.

    Stop daskmri's local worker processes now, rather than after
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
    command = [sys.executable, "-c", "import daskmri.execute.processes, daskmri.parse"]
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
    """Run chunk tasks on local worker processes, getting past any of them dying.

    The processes come from :func:`local_pool` (loky): they never re-run the
    caller's script, and they stay up between calls. Each chunk is its own future:
    when a process dies, the chunks that finished are kept, and the rest follow the
    :class:`~daskmri.execute.CrashPolicy`: the chunks that were in flight run again
    alone; a chunk that kills its process alone has its records parsed one at a time
    in a child process (:func:`~daskmri.execute.find_killers`); the records that kill
    are dropped (:data:`~daskmri.execute.POISON_REASON`) and the chunk runs once more
    without them.

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
    >>> from daskmri.plan import plan_chunks
    >>> from daskmri.parse import parse_partition
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(16, 16))
    >>> parts = plan_chunks(daskmri.scan(root)).parts()
    >>> kinds = daskmri.SUNNYBROOK.kinds
    >>> task = functools.partial(parse_partition, shape=(16, 16), slots=None, kinds=kinds)
    >>> with ProcessWorkers(1) as workers:
    ...     results, isolation = workers.run(task, parts, daskmri.read_record)
    >>> results[0][0].pixels.shape, isolation.records
    ((3, 16, 16), ())
    """

    kind = "processes"

    def __init__(self, workers: int | None = None, *, chunk_timeout: float = 600.0) -> None:
        # Imported here, not with the module: worker processes import this module to
        # run tasks and have no use for dask (its import is most of a worker's start-up:
        # see benchmarks/pool.py).
        import dask

        # As Dask's own pool: dask.config's num_workers, else one per core.
        self.workers = int(workers or dask.config.get("num_workers", None) or os.cpu_count() or 1)
        self.parallelism = self.workers
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

    def _kill_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, kill_workers=True)
            self._pool = None

    def run(
        self, task: Callable, parts: Sequence[list], reader: Callable, *, progress: Any = None
    ) -> tuple[list, Isolation]:
        """Run ``task(part, reader=reader)`` for every part (a list of ``(slot, record)``).

        Returns the results in the order of ``parts`` and the :class:`Isolation`;
        ``progress`` (a tqdm bar) advances as chunks finish. An exception a task
        raises (not a process death) is raised here.

        Raises
        ------
        DaskmriError
            If a chunk keeps killing its process once its deadly records are skipped,
            or if worker processes cannot start at all (with the reason they gave).
        """
        run = _Run(CrashPolicy(parts, reader), len(parts))
        while run.policy.pending or run.flight:
            self._fill(task, run)
            lost, lost_since = self._collect(run, self._wait(run), progress)
            if lost:
                self._recover(run.policy, lost, lost_since)
        isolation = run.policy.isolation()
        isolation.log()
        return run.results, isolation

    def _fill(self, task: Callable, run: _Run) -> None:
        while len(run.flight) < self.workers:
            j = run.policy.take(running=[k for k, _ in run.flight.values()])
            if j is None:
                break
            future = self._submit(task, run.policy.parts[j], reader=run.policy.reader_for(j))
            run.flight[future] = (j, time.perf_counter())

    def _wait(self, run: _Run) -> set:
        """The futures that finished (or that a death or a hang took down)."""
        oldest = min(sent for _, sent in run.flight.values())
        left = oldest + self.chunk_timeout - time.perf_counter()
        finished, _ = wait(run.flight, timeout=max(left, 0), return_when=FIRST_COMPLETED)
        if not finished:
            # A chunk hangs: end the pool's processes, so that it fails as if it had
            # crashed.
            self._kill_pool()
        elif not any(_died(f.exception()) for f in finished):
            return finished
        # A dead process breaks the pool: every future in flight fails with it.
        wait(run.flight, timeout=60)
        return set(run.flight)

    def _collect(self, run: _Run, finished: set, progress: Any) -> tuple[list[int], float]:
        """Take the results of ``finished``; return the chunks lost to a death and
        when the first of them was sent."""
        lost, lost_since = [], time.perf_counter()
        for future in finished:
            j, sent = run.flight.pop(future)
            error = future.exception() if future.done() else None
            if not future.done() or _died(error):
                lost.append(j)
                lost_since = min(lost_since, sent)
            elif isinstance(error, BrokenProcessPool):
                raise _broken(error)
            elif isinstance(error, ReaderError):
                # loky chains the worker's traceback text in place of the cause.
                raise error from error.cause
            elif error is not None:
                raise error
            else:
                run.results[j] = future.result()
                run.policy.finished(j)
                self._ran = True
                if progress is not None:
                    progress.update(1)
                if j in run.policy.suspects:  # ran alone: part of the cost of isolating
                    run.policy.seconds += time.perf_counter() - sent
        return lost, lost_since

    def _recover(self, policy: CrashPolicy, lost: list[int], lost_since: float) -> None:
        """After a death: a new pool, the lost chunks back to the policy, and a search
        of the records of a chunk that died alone."""
        self._kill_pool()
        self.restarts += 1
        if not self._ran:
            check_worker_start()
        for j in policy.died(lost):
            found = find_killers(policy.parts[j], policy.reader_for(j), timeout=self.chunk_timeout)
            policy.convict(j, found)
        # The time lost: the dead chunks' runs, the restart and the search.
        policy.seconds += time.perf_counter() - lost_since


class _Run:
    """One :meth:`ProcessWorkers.run`: the policy, the futures in flight (to their
    chunk and when it was sent) and the results so far."""

    def __init__(self, policy: CrashPolicy, n: int) -> None:
        self.policy = policy
        self.flight: dict[Any, tuple[int, float]] = {}
        self.results: list[Any] = [None] * n
