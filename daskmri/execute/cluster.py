"""A Dask cluster: reach it from the ``client=`` argument (an existing client or a
scheduler address), check its workers, and run chunk tasks on it with crash
isolation, the results (pixels or markers) staying on the workers."""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import dask

from ..errors import DaskmriError, one_line, redact
from ..filesystem import LOCAL, FileSystem
from ..settings import Compute
from ._killers import find_killers
from ._tasks import chunk_tasks
from .isolation import CrashPolicy, Isolation

__all__ = [
    "ClusterExecutor",
    "Reached",
    "check_workers",
    "client_for",
    "client_for_futures",
    "close_with",
    "connect",
    "open_client",
    "probe_scheduler",
    "resolve_client",
    "scheduler_info",
    "wait_on_cluster",
]

# How long to wait for a scheduler given by address before giving up with a
# clear error instead of hanging.
CONNECT_TIMEOUT = "30s"


def _default_client() -> Any:
    """distributed's current default client, or None.

    A client exists only once ``distributed`` has been imported, so without it there
    is none to find, and importing it just to ask cost 0.4 s of CPU in every fresh
    process (a CLI build, a script) that runs locally (measured).
    """
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def resolve_client(client: Any = None, *, security: Any = None, default: bool = True):
    """Return the ``distributed.Client`` to use, or None for a local scheduler.

    Parameters
    ----------
    client : None, distributed.Client or str
        A client is used as is. A string is a scheduler address
        (``"tcp://10.0.0.5:8786"``) to connect to; like ``Client(address)`` the new
        client becomes the default one (unless ``default`` is False). None picks, in
        order, the current default client if one exists, then the
        ``scheduler-address`` of the Dask config (``DASK_SCHEDULER_ADDRESS``), else
        None (local).
    security : distributed.Security, optional
        TLS settings for a client made from a ``tls://`` address.
    default : bool
        Whether a client made here from an address becomes the default client.

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
        existing = _default_client()
        if existing is not None:
            return existing
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
            return Client(
                client, timeout=CONNECT_TIMEOUT, security=security, set_as_default=default
            )
        except OSError as exc:
            raise DaskmriError(
                f"cannot reach a Dask scheduler at {client!r} within {CONNECT_TIMEOUT} ({exc}). "
                "Is `dask scheduler` running there, and is the address right?"
            ) from exc
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


class Reached(NamedTuple):
    """The client for a ``client=`` argument (None: a local scheduler), and whether
    daskmri made it from an address. A client daskmri made is daskmri's to close; one
    the caller gave, or the default client, never is."""

    client: Any
    made: bool


def open_client(client: Any = None, *, security: Any = None, default: bool = True) -> Reached:
    """:func:`resolve_client`, saying whether the client was made here.

    Raises
    ------
    DaskmriError, TypeError
        As :func:`resolve_client`.

    Examples
    --------
    >>> open_client(None)  # no cluster running here
    Reached(client=None, made=False)
    """
    existing = _default_client() if client is None else client
    resolved = resolve_client(client, security=security, default=default)
    return Reached(resolved, resolved is not None and resolved is not existing)


@contextlib.contextmanager
def connect(client: Any = None, *, security: Any = None) -> Iterator[Any]:
    """:func:`resolve_client` for work whose results are not left on the cluster:
    a client made here from an address is closed on exit; a client that already
    existed is left as it was."""
    reached = open_client(client, security=security)
    try:
        yield reached.client
    finally:
        if reached.made:
            reached.client.close()


def close_with(client: Any, futures: Iterable[Any]) -> None:
    """Close ``client`` once every one of ``futures`` is garbage (at once if there are
    none): a client made for a dataset's pixels lives exactly as long as they do,
    whatever datasets (selections, splits) share them. A client that then still holds
    other futures (a persisted selection) is left open: distributed closes it at exit.

    The close runs in a thread of its own: the last future may be collected in any
    thread, the client's event loop thread included, where a close would wait on
    itself. At interpreter exit distributed closes its clients itself.

    Examples
    --------
    >>> class Client:
    ...     def close(self):
    ...         print("closed")
    >>> close_with(Client(), [])
    closed
    """
    futures = list(futures)
    if not futures:
        client.close()
        return
    left = [len(futures)]
    lock = threading.Lock()
    ours = frozenset(future.key for future in futures)

    def gone() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            closer = threading.Thread(
                target=_close_quietly,
                args=(client, ours),
                name="daskmri-close-client",
                daemon=True,
            )
            closer.start()

    for future in futures:
        weakref.finalize(future, gone).atexit = False


#: How long the closer waits for futures that are being released (an iteration's
#: transient ones) before it decides that another future is alive.
CLOSE_GRACE = 5.0


def _close_quietly(client: Any, ours: frozenset) -> None:
    # Keys of the dataset's own futures may still be listed (their release reaches the
    # client's bookkeeping a moment later), and so may those of futures an iteration
    # made and dropped just before; they go within moments. A key that stays is a
    # future that is alive (a persisted selection of the dataset): closing would lose
    # its data, so the client stays open, and distributed closes it at exit.
    deadline = time.monotonic() + CLOSE_GRACE
    while set(client.futures) - ours:
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    with contextlib.suppress(Exception):  # a scheduler already gone: nothing to close
        client.close()


def scheduler_info(client: Any, *, n_workers: int) -> dict:
    """``client.scheduler_info`` listing ``n_workers`` workers (-1: all of them), on any
    distributed the project allows.

    Examples
    --------
    >>> class Old:  # a distributed from before n_workers=, which lists them all
    ...     def scheduler_info(self):
    ...         return {"workers": {}}
    >>> scheduler_info(Old(), n_workers=-1)
    {'workers': {}}
    """
    try:
        return client.scheduler_info(n_workers=n_workers)
    except TypeError:
        return client.scheduler_info()


def _identity(client: Any) -> dict:
    """The scheduler's id and address, as the scheduler itself gives them (an
    address string may name it otherwise: a host name for an IP)."""
    return scheduler_info(client, n_workers=0)


def client_for_futures(
    futures: Sequence[Any], client: Any = None, *, security: Any = None
) -> Reached:
    """The client to fetch data persisted as ``futures`` (maybe none) through.

    ``client`` when given, else the futures' own client. A persisted dataset's
    futures belong to the client that persisted them, but any client of the same
    scheduler can use them in a graph; so ``client`` may be another client, or an
    address, of that scheduler (an address equal to the futures' own client's reuses
    it). A client made here from an address is not made the default.

    Raises
    ------
    DaskmriError
        If the futures' client is closed (the cluster has let their data go), or
        ``client`` is for another scheduler than the futures'; and as
        :func:`resolve_client`.

    Examples
    --------
    >>> client_for_futures([])  # nothing persisted, no client asked for: local
    Reached(client=None, made=False)
    """
    owner = futures[0].client if futures else None
    if owner is not None and owner.status in ("closing", "closed"):
        raise DaskmriError(
            "the dataset's pixels were persisted through a client that is now closed, so the "
            "cluster has let them go; load the dataset again and keep its client open while "
            "you use it"
        )
    if client is None or (owner is not None and client == owner.scheduler.address):
        return Reached(owner, False)
    reached = open_client(client, security=security, default=False)
    if owner is None or reached.client is owner:
        return reached
    theirs, ours = _identity(owner), _identity(reached.client)
    if theirs.get("id") != ours.get("id"):
        if reached.made:
            reached.client.close()
        raise DaskmriError(
            f"the dataset's pixels are held by the scheduler at {theirs.get('address')}, but "
            f"client= is for the scheduler at {ours.get('address')}; pass client=None (the "
            "dataset's own client) or that scheduler's address, or load the dataset on this one"
        )
    return reached


def _worker_facts(root: str | None, fs: FileSystem = LOCAL) -> dict:
    from .. import __version__

    try:
        sees = root is None or fs.is_folder(root)
    except Exception:  # a store that refuses this worker: its credentials, its endpoint
        sees = False
    return {"version": __version__, "sees_root": sees}


def check_workers(client, root: str | None = None, fs: FileSystem = LOCAL) -> None:
    """Fail in one line, before any work, when the cluster's workers cannot import
    daskmri or cannot see the data folder (rather than with a deep traceback from
    the first task, or a hang).

    Raises
    ------
    DaskmriError
        Naming the workers and the fix.
    """
    facts = client.run(_worker_facts, root, fs, on_error="return")
    broken = {w: f for w, f in facts.items() if isinstance(f, BaseException)}
    if broken:
        worker, error = next(iter(broken.items()))
        reason = redact(one_line(error), dict(fs.options))
        raise DaskmriError(
            f"{len(broken)} of {len(facts)} workers cannot run daskmri (e.g. {worker}: "
            f"{reason}); install the same environment as the client on every worker"
        )
    blind = [w for w, f in facts.items() if not f["sees_root"]]
    if blind and not fs.local:
        raise DaskmriError(
            f"{len(blind)} of {len(facts)} workers cannot list the dataset at {root} (e.g. "
            f"{blind[0]}); give every worker the client's credentials and endpoint "
            "(source_options=, or the same environment variables)"
        )
    if blind:
        raise DaskmriError(
            f"{len(blind)} of {len(facts)} workers cannot see the data folder {root} "
            f"(e.g. {blind[0]}); put it on a filesystem mounted at the same path on every worker"
        )


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
        except TimeoutError:
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


def client_for(
    compute: Compute, root: str, *, keep: bool, fs: FileSystem = LOCAL
) -> contextlib.AbstractContextManager[Reached]:
    """The :class:`Reached` client for ``compute`` (None for a local scheduler), its
    workers checked against ``root`` on ``fs``, as a context manager. A client made
    here from an address is closed on exit, or with ``keep`` (a dataset whose pixels
    live on the cluster needs it) only when the body fails: then it is the caller's
    to close (see :func:`close_with`). The cluster comes first: an address that is
    wrong fails before a long scan."""
    if compute.scheduler is not None:
        return contextlib.nullcontext(Reached(None, False))
    return _checked(compute, root, fs, keep)


@contextlib.contextmanager
def _checked(compute: Compute, root: str, fs: FileSystem, keep: bool) -> Iterator[Reached]:
    reached = open_client(compute.client, security=compute.security)
    kept = False
    try:
        if reached.client is not None:
            check_workers(reached.client, root, fs)
        yield reached
        kept = keep
    finally:
        if reached.made and not kept:
            reached.client.close()


class ClusterExecutor:
    """Run chunk tasks on a Dask cluster. Results stay on the workers: :meth:`run`
    returns futures. A chunk whose task kept killing workers (``KilledWorker``:
    distributed already retried it on several) has its records searched one at a
    time in a child process of a worker, and runs again without the ones that kill,
    following the same :class:`~daskmri.execute.CrashPolicy` as local workers.

    While a killer is being found, workers die with innocent chunks' results on
    them, and those chunks can be suspected too: it goes round until nothing fails.
    """

    kind = "cluster"

    #: Rounds of searching and rerunning before the run gives up, whichever chunks
    #: fail: on a cluster whose workers keep dying, a different chunk may fail each
    #: round, and each round costs a search.
    MAX_ROUNDS = 5

    def __init__(self, client, *, no_workers_timeout: float = NO_WORKERS_TIMEOUT) -> None:
        self.client = client
        self.no_workers_timeout = no_workers_timeout
        self.parallelism = max(1, sum(client.nthreads().values()))

    def run(
        self, task: Callable, parts: Sequence[list], reader: Callable, *, progress: Any = None
    ) -> tuple[list, Isolation]:
        """``task(part, reader=reader)`` for every part; the futures, in order.

        Raises
        ------
        DaskmriError
            If a chunk keeps killing workers once its deadly records are skipped, if
            chunks still fail after :attr:`MAX_ROUNDS` rounds, or if the cluster has
            no workers left (see :func:`wait_on_cluster`).
        """
        policy = CrashPolicy(parts, reader)
        ticks = _Ticks(progress, len(parts))
        futures = self._submit(task, parts, reader, ticks)
        started, rounds = None, 0
        while failed := self._failed(futures):
            if rounds == self.MAX_ROUNDS:
                raise DaskmriError(
                    f"chunks kept killing workers after {rounds} rounds of isolating the "
                    f"records that kill them alone ({sorted(policy.poisoned)}); is the "
                    "cluster healthy?"
                )
            rounds += 1
            # The time to isolate runs from the first failure, not from the start.
            started = time.perf_counter() if started is None else started
            self._search(policy, policy.died(failed, alone=True))
            for j in failed:
                futures[j] = self._submit(task, [parts[j]], policy.reader_for(j), ticks)[0]
        ticks.finish()
        if started is not None:
            policy.seconds = time.perf_counter() - started
        isolation = policy.isolation()
        isolation.log()
        return futures, isolation

    def _submit(self, task: Callable, parts: Sequence[list], reader: Callable, ticks) -> list:
        tasks = chunk_tasks(task, parts, reader)
        futures = self.client.compute(tasks) if tasks else []
        for future in futures:
            future.add_done_callback(lambda f: f.status == "finished" and ticks.tick())
        return futures

    def _failed(self, futures: list) -> list[int]:
        """Wait for ``futures``; the chunks that killed workers. Other errors raise."""
        from distributed.scheduler import KilledWorker

        wait_on_cluster(self.client, futures, no_workers_timeout=self.no_workers_timeout)
        failed = [j for j, future in enumerate(futures) if future.status == "error"]
        for j in failed:
            error = futures[j].exception()
            if not isinstance(error, KilledWorker):
                raise error
        return failed

    def _search(self, policy: CrashPolicy, chunks: list[int]) -> None:
        # In a child process of a worker: the child dies, not the worker, so the
        # searches run side by side.
        readers = [policy.reader_for(j) for j in chunks]
        searches = self.client.map(
            find_killers, [policy.parts[j] for j in chunks], readers, pure=False
        )
        wait_on_cluster(self.client, searches, no_workers_timeout=self.no_workers_timeout)
        for j, found in zip(chunks, self.client.gather(searches), strict=True):
            policy.convict(j, found)

    def close(self) -> None:
        """The client is the caller's: left open."""


class _Ticks:
    """A progress bar's share of one run, advanced from the client's thread as futures
    finish: the callbacks of the last futures can run after the wait that saw them
    finish, so :meth:`finish` brings the bar to its end, and a late tick does nothing."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            if self.progress is not None and self.done < self.total:
                self.done += 1
                self.progress.update(1)

    def finish(self) -> None:
        with self.lock:
            if self.progress is not None and self.done < self.total:
                self.progress.update(self.total - self.done)
            self.done = self.total
