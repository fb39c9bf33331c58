"""Where the work runs: turn the ``client=``/``scheduler=`` arguments into an
executor, and run a list of chunk tasks on it with an optional progress bar."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dask

from .errors import DaskmriError

__all__ = ["SCHEDULERS", "Progress", "resolve_client", "run_tasks"]

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
    pool: Any = None,
) -> list[Any]:
    """Run dask ``tasks`` (Delayed objects).

    With a client the results stay on the cluster: a list of futures is
    returned. Otherwise the tasks run on the local ``scheduler`` and their values
    are returned. ``scheduler=None`` means ``"processes"`` (pydicom parsing is pure
    Python and holds the GIL, so threads do not run it in parallel), or
    ``"sync"`` when there is a single task and a process pool would only add its
    start-up time.

    ``progress`` is True for a Dask progress bar, or a :class:`Progress` to advance
    by one per finished task. ``pool`` is an executor for the ``"processes"``
    scheduler to reuse across calls (Dask starts a new one per call otherwise).
    """
    if client is not None:
        futures = client.compute(list(tasks))
        if isinstance(progress, Progress):
            from distributed import as_completed

            for _ in as_completed(futures):
                progress.advance()
        elif progress:
            from distributed import progress as show_progress

            show_progress(futures, notebook=False)
            print()
        return futures
    scheduler = local_scheduler(scheduler, len(tasks))
    logger.debug("running %d tasks on the %r scheduler", len(tasks), scheduler)
    options: dict[str, Any] = {}
    if scheduler == "processes":
        # One task per batch: a task is already a whole chunk, and Dask's default
        # batches of 6 left one worker idle while the other finished its batch.
        options["chunksize"] = 1
        if pool is not None:
            options["pool"] = pool
    if isinstance(progress, Progress):
        from dask.callbacks import Callback

        def advance(key, result, dsk, state, worker_id) -> None:
            progress.advance()

        with Callback(posttask=advance):
            return list(dask.compute(*tasks, scheduler=scheduler, **options))
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks, scheduler=scheduler, **options))
    return list(dask.compute(*tasks, scheduler=scheduler, **options))


def process_pool(max_workers: int | None = None):
    """A process pool like the one Dask's ``"processes"`` scheduler makes (same start
    method), to be reused across several ``run_tasks`` calls and shut down after."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
    # As Dask's own pool: dask.config's num_workers, else one per core.
    workers = max_workers or dask.config.get("num_workers", None) or os.cpu_count() or 1
    return ProcessPoolExecutor(workers, mp_context=context)
