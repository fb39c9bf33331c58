"""The in-process executor: Dask's ``"sync"`` or ``"threads"`` scheduler, results
returned as they are (no copy, no pickling)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.local
import dask.threaded
from dask.callbacks import Callback

from ._tasks import chunk_tasks
from .isolation import Isolation

__all__ = ["InProcess"]

logger = logging.getLogger(__name__)


class InProcess:
    """Run chunk tasks in this process: one at a time (``"sync"``) or on Dask's
    thread pool (``"threads"``). A record that crashes the process cannot be
    isolated here; use local worker processes for that.

    Examples
    --------
    >>> results, _ = InProcess("sync").run(lambda part, reader: [len(part)], [[1, 2], [3]], None)
    >>> results
    [[2], [1]]
    """

    kind = "in-process"

    def __init__(self, scheduler: str = "sync") -> None:
        self.scheduler = scheduler
        self.parallelism = (os.cpu_count() or 1) if scheduler == "threads" else 1

    def run(
        self, task: Callable, parts: Sequence[list], reader: Callable, *, progress: Any = None
    ) -> tuple[list, Isolation]:
        """``task(part, reader=reader)`` for every part; the results in order."""
        tasks = chunk_tasks(task, parts, reader)
        logger.debug("running %d tasks on the %r scheduler", len(tasks), self.scheduler)
        counting = contextlib.nullcontext()
        if progress is not None:
            counting = Callback(posttask=lambda *_: progress.update(1))
        with counting:
            # The scheduler function, not its name: given a name, dask imports
            # distributed to look for a client (a start-up cost that benchmarks/pool.py
            # measures in a fresh process) before it picks the same function.
            get = dask.threaded.get if self.scheduler == "threads" else dask.local.get_sync
            return list(dask.compute(*tasks, scheduler=get)), Isolation()

    def close(self) -> None:
        """Nothing to release."""
