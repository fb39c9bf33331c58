"""Find the records that kill the process parsing them: parse a chunk's records one
at a time in a child process, which says which record it starts before reading it.

Runs on the client (local workers) or in a cluster worker (``client.map``): the
child dies, not the caller.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from ..errors import WorkerStartError
from ..record import Parsed, Record

__all__ = ["find_killers", "probe_child"]

#: What the child runs.
CHILD = "from daskmri.execute._killers import probe_child; probe_child()"


def find_killers(
    items: Sequence[tuple[int, Record]],
    reader: Callable[[Record], Parsed],
    *,
    timeout: float = 600.0,
) -> list[tuple[str, int]]:
    """The ``(patient_id, instance)`` keys of the records whose parsing kills the
    process, found by parsing the chunk's records one at a time in a child process.

    The child says which record it starts before it reads it; when it dies, the
    record it was on is a killer and a new child goes on from the next record. So
    the worker running this never dies itself, and a chunk with one killer costs two
    child processes. A child that says nothing for ``timeout`` seconds is killed and
    its record counted as a killer too (a decoder that hangs).

    Raises
    ------
    WorkerStartError
        If a child dies before it starts any record (its environment is broken, or
        it cannot unpickle ``reader``), with the last line the child printed.
    """
    import cloudpickle

    # The parent's import path, so that a reader from a module beside the user's
    # script unpickles in the child as it does in a pool worker.
    path = os.pathsep.join(p or os.getcwd() for p in sys.path)
    env = os.environ | {"PYTHONPATH": path}
    records = [record for _, record in items]
    killers: list[tuple[str, int]] = []
    start = 0
    while start < len(records):
        with tempfile.TemporaryFile() as errors:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from daskmri.execute._killers import probe_child; probe_child()",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
            )
            last, finished = -1, False
            try:
                child.stdin.write(cloudpickle.dumps((records[start:], reader)))
                child.stdin.close()
                # The raw descriptor, read by hand: a buffered readline would take
                # several lines at once and leave select() waiting on an empty pipe.
                fd, pending = child.stdout.fileno(), b""
                deadline = time.monotonic() + timeout  # from the last record started
                while not finished:
                    left = deadline - time.monotonic()
                    ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
                    data = os.read(fd, 4096) if ready else b""
                    if not data:  # the child died, or hung and is killed below
                        break
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        if line == b"done":
                            finished = True
                        else:
                            last = int(line)
                            deadline = time.monotonic() + timeout
            finally:
                child.kill()
                child.wait()
                child.stdout.close()
            if finished:
                break
            if last < 0:
                errors.seek(0)
                text = errors.read().decode(errors="replace").strip().splitlines()
                raise WorkerStartError(
                    "a worker process cannot start: the process that parses records one at "
                    "a time died before its first record: "
                    f"{text[-1] if text else f'exit code {child.returncode}'}; check that "
                    f"{sys.executable} can import daskmri and your reader in this environment"
                )
        killers.append((records[start + last].patient_id, records[start + last].instance))
        start += last + 1
    return killers


def probe_child() -> None:
    """The child of :func:`find_killers`: read ``(records, reader)`` from stdin, and
    say each record's index on the original stdout before parsing it. Anything else
    written to stdout (a print in a reader, a C library) goes to stderr instead, so
    that only indices travel on the channel."""
    import cloudpickle

    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    records, reader = cloudpickle.loads(sys.stdin.buffer.read())
    for k, record in enumerate(records):
        channel.write(f"{k}\n".encode())
        with contextlib.suppress(Exception):  # failures that raise are not crashes
            reader(record)
    channel.write(b"done\n")
