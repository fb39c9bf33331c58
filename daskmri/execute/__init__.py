"""Stage 4, run: one executor interface, three implementations.

Every executor runs ``task(part, reader=reader)`` for each chunk (``part``: a list
of ``(slot, record)``) and returns the results in order with the
:class:`Isolation` (records found to kill their worker):

=====================  ==========================================  =================
executor               where                                       results
=====================  ==========================================  =================
:class:`InProcess`     this process (Dask ``sync`` / ``threads``)  values
:class:`ProcessWorkers` local worker processes (loky)              values
:class:`ClusterExecutor` a Dask cluster                            futures
=====================  ==========================================  =================

The two kinds of worker share one crash-isolation policy (:class:`CrashPolicy`).
What a task does with its chunk (keep it, write it to shared memory or to a Zarr
region) is the sink's choice; see :mod:`daskmri.sinks` and :mod:`daskmri.store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ..settings import Compute
    from .isolation import Isolation

# Lazy (PEP 562): the child process of find_killers and the worker processes import
# modules of this package and should not pay for all of it.
_EXPORTS = {
    "daskmri.execute.cluster": (
        "CONNECT_TIMEOUT",
        "PROBE_TIMEOUT",
        "ClusterExecutor",
        "Reached",
        "client_for",
        "client_for_futures",
        "check_workers",
        "close_with",
        "connect",
        "open_client",
        "probe_scheduler",
        "resolve_client",
        "scheduler_info",
        "wait_on_cluster",
    ),
    "daskmri.execute._killers": ("find_killers",),
    "daskmri.execute.inprocess": ("InProcess",),
    "daskmri.execute.isolation": ("POISON_REASON", "CrashPolicy", "Isolation", "Skipping"),
    "daskmri.execute.processes": (
        "IDLE_TIMEOUT",
        "ProcessWorkers",
        "check_worker_start",
        "shutdown_local_workers",
    ),
    "daskmri.execute.progress": ("progress_bar",),
}
__getattr__, __dir__, _NAMES = lazy_exports(globals(), _EXPORTS)

__all__ = [*_NAMES, "Executor", "executor_for"]


class Executor(Protocol):
    """What the pipeline needs of an executor."""

    #: ``"in-process"``, ``"processes"`` or ``"cluster"``.
    kind: str
    #: Chunks it runs at once (threads of a cluster, worker processes).
    parallelism: int

    def run(
        self, task: Any, parts: Any, reader: Any, *, progress: Any = None
    ) -> tuple[list, Isolation]: ...

    def close(self) -> None: ...


def executor_for(compute: Compute, client: Any, n_tasks: int) -> Executor:
    """The executor for ``client`` (a cluster) or, without one, for the local
    scheduler ``compute`` asks for (by default processes, or in process for a
    single task).

    Examples
    --------
    >>> from daskmri.settings import Compute
    >>> executor_for(Compute(), None, n_tasks=1).kind
    'in-process'
    >>> executor_for(Compute(scheduler="processes"), None, n_tasks=1).kind
    'processes'
    """
    from .cluster import ClusterExecutor
    from .inprocess import InProcess
    from .processes import ProcessWorkers

    if client is not None:
        return ClusterExecutor(client)
    scheduler = compute.local_scheduler(n_tasks)
    return ProcessWorkers() if scheduler == "processes" else InProcess(scheduler)
