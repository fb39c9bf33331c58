"""Reader hooks for tests, in a module of their own so that worker processes and
subprocesses can import (unpickle) them."""

from __future__ import annotations

import os
import time

from daskmri.parse import Record, read_record


def _append(log: str, line: str) -> None:
    # O_APPEND: one write per line, so lines from several processes never interleave.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class LoggingReader:
    """The default reader, plus one line per parsed record appended to ``log``
    (``patient_id/instance``), and an optional pause per record so that a test
    can kill a build partway through."""

    def __init__(self, log: str | os.PathLike[str], delay: float = 0.0) -> None:
        self.log = os.fspath(log)
        self.delay = delay

    def __call__(self, record: Record):
        _append(self.log, f"{record.patient_id}/{record.instance}")
        if self.delay:
            time.sleep(self.delay)
        return read_record(record)


def parsed(log: str | os.PathLike[str]) -> list[str]:
    """The records a :class:`LoggingReader` parsed, in order."""
    try:
        with open(log) as fh:
            return fh.read().split()
    except FileNotFoundError:
        return []


class PoisonReader:
    """The default reader, except that parsing ``(patient_id, instance)`` (or any of
    the ``also`` keys) kills the process at once, as a segfault in a C decoder would."""

    def __init__(self, patient_id: str, instance: int, also: tuple = ()) -> None:
        self.keys = {(patient_id, instance), *also}

    def __call__(self, record: Record):
        if (record.patient_id, record.instance) in self.keys:
            os._exit(17)
        return read_record(record)


def dies(part, reader):
    """A chunk task that kills its process whatever its records: no one record is to
    blame, so isolating records cannot help."""
    os._exit(18)


class HangReader:
    """The default reader, except that it never returns on ``(patient_id, instance)``,
    as a decoder stuck in a loop."""

    def __init__(self, patient_id: str, instance: int) -> None:
        self.key = (patient_id, instance)

    def __call__(self, record: Record):
        if (record.patient_id, record.instance) == self.key:
            time.sleep(3600)
        return read_record(record)


class PidReader:
    """The default reader, plus the parsing process's pid appended to ``log``."""

    def __init__(self, log: str | os.PathLike[str]) -> None:
        self.log = os.fspath(log)

    def __call__(self, record: Record):
        _append(self.log, str(os.getpid()))
        return read_record(record)


class NoisyReader:
    """The default reader, printing to stdout first (as a chatty decoder might), and
    raising at once on every record but ``keep`` (so that many records go by fast)."""

    def __init__(self, keep: tuple = ()) -> None:
        self.keep = set(keep)

    def __call__(self, record: Record):
        print(f"decoding {record.instance}", flush=True)
        os.write(1, b"and a C library writes here too\n")
        if (record.patient_id, record.instance) not in self.keep:
            raise ValueError("fast failure")
        return read_record(record)


class Unloadable:
    """Pickles, but cannot be unpickled (as a reader whose module a child lacks)."""

    def __reduce__(self):
        return (_fail_to_load, ())

    def __call__(self, record: Record):
        return read_record(record)


def _fail_to_load():
    raise ImportError("no module named 'somewhere_else'")


class Buggy:
    """The default reader, raising ``error(*args)`` on one record: a bug in a user's
    reader when the error is not a data error. The exception is made where the reader
    runs, as a user's would be (an instance carried in the reader would have to
    unpickle in the worker first)."""

    def __init__(self, patient_id: str, instance: int, error: type, *args) -> None:
        self.key, self.error, self.args = (patient_id, instance), error, args

    def __call__(self, record: Record):
        if (record.patient_id, record.instance) == self.key:
            raise self.error(*self.args)
        return read_record(record)


class OddError(Exception):
    """An exception whose ``__init__`` takes other arguments than its ``args``: it
    pickles, but does not unpickle."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"odd {code}: {detail}")
