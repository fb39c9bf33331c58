"""Local worker processes and cluster addresses: a script without a ``__main__``
guard runs once; the pool outlives a call and leaves nothing behind; workers that
cannot start, and addresses where nothing listens, fail in one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import daskmri
from daskmri import DaskmriError, cli
from daskmri.errors import WorkerStartError
from daskmri.execute import PROBE_TIMEOUT, ProcessWorkers

from .readers import PidReader, Unloadable, parsed

#: A script as people write them: no ``if __name__ == "__main__":`` guard. Its top
#: level appends one line to a file; a worker that re-ran it would add another.
GUARDLESS = textwrap.dedent(
    """
    import os, sys
    import daskmri

    ran, root, out, what = sys.argv[1:5]
    with open(ran, "a") as fh:
        fh.write(f"top level ran in {os.getpid()}\\n")

    class PidLog:  # defined in __main__: the workers get it by value (cloudpickle)
        def __call__(self, record):
            with open(out + ".pids", "a") as fh:
                fh.write(f"{os.getpid()}\\n")
            return daskmri.read_record(record)

    if what == "load_dataset":
        n = daskmri.load_dataset(root, chunk_size=4, reader=PidLog()).sizes["record"]
    elif what == "build":
        n = daskmri.build(root, out, chunk_size=4, reader=PidLog()).records
    else:
        ds = daskmri.load_dataset(root, chunk_size=4, reader=PidLog())
        with daskmri.BatchIterator(ds, batch_size=4, seed=0) as it:
            n = sum(len(batch["instance"]) for batch in it)
    print("records", n)
    """
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def shm_files(pids: set[int] | None = None) -> set[str]:
    """daskmri's files and loky's semaphores in /dev/shm; with ``pids``, only the
    semaphores those processes made (loky names them ``sem.loky-<pid>-...``), so that
    another program's pool on the same machine is not taken for a leak of ours."""
    try:
        names = {n for n in os.listdir("/dev/shm") if n.startswith(("daskmri", "sem.loky"))}
    except OSError:
        return set()
    if pids is None:
        return names
    return {n for n in names if not n.startswith("sem.loky-") or _maker(n) in pids}


def _maker(name: str) -> int | None:
    field = name.split("-")[1]
    return int(field) if field.isdigit() else None


@pytest.mark.parametrize("what", ["load_dataset", "build", "BatchIterator"])
def test_a_script_without_a_main_guard_runs_once(what, synth_root, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(GUARDLESS)
    ran, out = tmp_path / "ran.txt", tmp_path / "out.zarr"
    shm_before = shm_files()
    done = subprocess.run(
        [sys.executable, str(script), str(ran), str(synth_root), str(out), what],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "records 16"
    assert "Traceback" not in done.stderr and "killed" not in done.stderr
    # The script's own top level ran exactly once, in the script's process.
    lines = ran.read_text().splitlines()
    assert len(lines) == 1, lines
    # The records were parsed by worker processes (16 records in 4 chunks), which
    # ended with the script; no shared-memory file is left.
    workers = {int(p) for p in parsed(str(out) + ".pids")}
    assert len(parsed(str(out) + ".pids")) == 16
    assert workers and str(lines[0].split()[-1]) not in {str(p) for p in workers}
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in workers)
    ours = workers | {int(lines[0].split()[-1])}
    assert shm_files(ours) - shm_before == set()


KILLERS = textwrap.dedent(
    """
    import sys
    import daskmri
    from tests.readers import PoisonReader

    reader = PoisonReader("SYN0001", 6, also=(("SYN0002", 9),))
    ds = daskmri.load_dataset(sys.argv[1], chunk_size=4, reader=reader)
    report = daskmri.build(sys.argv[1], sys.argv[2], chunk_size=4, reader=reader)
    print("isolated", len(daskmri.dropped(ds)), len(report.isolated))
    """
)


def test_nothing_is_left_in_dev_shm_after_workers_died(synth_root, tmp_path):
    """Workers killed by records leave their locks with loky's resource tracker, which
    removes them when the script's process ends: once it has, nothing is left."""
    before = shm_files()
    script = subprocess.Popen(
        [sys.executable, "-c", KILLERS, str(synth_root), str(tmp_path / "ds.zarr")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        stdout, stderr = script.communicate(timeout=240)
    finally:
        script.kill()
    assert script.returncode == 0, stderr
    assert stdout.split() == ["isolated", "2", "2"]
    ours = {script.pid}
    deadline = time.monotonic() + 30
    while shm_files(ours) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shm_files(ours) - before == set()


def test_a_second_call_starts_no_new_processes(synth_root, tmp_path):
    me = psutil.Process()
    log = tmp_path / "pids"
    first = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="processes")
    children = {p.pid for p in me.children()}
    second = daskmri.load_dataset(
        synth_root, chunk_size=4, scheduler="processes", reader=PidReader(log)
    )
    assert {p.pid for p in me.children()} - children == set()
    assert {int(pid) for pid in parsed(log)} <= children
    assert second.sizes == first.sizes
    assert (second.image.values == first.image.values).all()


def test_workers_that_cannot_start_say_why(synth_root, tmp_path):
    """An environment where no new interpreter starts (here a sitecustomize that
    exits): the error says so with the interpreter's last line, and does not blame
    the records or the machine's memory."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import os, sys\n"
        "sys.stderr.write('ImportError: libfoo.so.1: cannot open shared object file\\n')\n"
        "os._exit(3)\n"
    )
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys\nimport daskmri\n"
        # Broken only for the processes started from here on, not for this one.
        f"os.environ['PYTHONPATH'] = {str(broken)!r}\n"
        "try:\n"
        f"    daskmri.load_dataset({str(synth_root)!r}, chunk_size=4, scheduler='processes')\n"
        "except daskmri.DaskmriError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith("WorkerStartError local worker processes cannot start")
    assert "libfoo.so.1: cannot open shared object file" in message
    assert "killed" not in message and "memory" not in message
    assert message.count("\n") == 0
    assert time.monotonic() - started < 120


def test_a_task_that_cannot_be_unpickled_is_an_error_not_a_death(synth_root):
    from daskmri.plan import plan_chunks

    items = list(enumerate(plan_chunks(daskmri.scan(synth_root)).chunks[0]))
    with ProcessWorkers(1) as workers:
        with pytest.raises(ImportError, match="somewhere_else"):
            workers.run(_first, [items], Unloadable())
        assert workers.restarts == 0


def _first(part, reader):
    return reader(part[0][1])


def test_check_worker_start_passes_here():
    from daskmri.execute import check_worker_start

    check_worker_start()
    with pytest.raises(WorkerStartError):
        raise WorkerStartError("is a DaskmriError and a RuntimeError")


# -- cluster addresses ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["tcp://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_address_where_nothing_listens_fails_at_once(synth_root, form):
    address = form.format(port=free_port())
    for call in (
        lambda: daskmri.load_dataset(synth_root, client=address),
        lambda: daskmri.BatchIterator(daskmri.load_dataset(synth_root), client=address),
    ):
        started = time.monotonic()
        with pytest.raises(DaskmriError, match=f"nothing is listening at '{address}'"):
            call()
        assert time.monotonic() - started < 5


def test_build_to_an_address_where_nothing_listens(synth_root, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    argv = ["build", str(synth_root), "--out", str(tmp_path / "ds.zarr"), "--scheduler", address]
    assert cli.main(argv) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and address in err
    assert not (tmp_path / "ds.zarr").exists()


def test_an_address_that_accepts_but_never_answers_uses_the_timeout(synth_root, monkeypatch):
    """The port is open (the kernel completes the TCP handshake) but nothing speaks
    Dask: the connect timeout applies, not the quick refusal, and it is an error
    (``distributed.Client`` alone would wait for ever here)."""
    from daskmri.execute import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "3s")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(DaskmriError, match="accepted the connection but sent no Dask"):
            daskmri.load_dataset(synth_root, client=address)
        elapsed = time.monotonic() - started
    assert 3 <= elapsed < 3 + PROBE_TIMEOUT + 10


def test_an_address_without_a_port_says_how_to_write_one(tmp_path):
    # Said before the folder is scanned (this one is not a dataset at all).
    with pytest.raises(DaskmriError, match=r"not a scheduler address.*tcp://host:8786"):
        daskmri.load_dataset(tmp_path, client="tcp://127.0.0.1")


def test_an_in_process_cluster_address_is_left_to_the_client(synth_root):
    """Only tcp:// and tls:// are probed; inproc:// (a LocalCluster without processes)
    is the client's to reach."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("inproc://")
        ds = daskmri.load_dataset(synth_root, client=address)
        assert ds.sizes["record"] == 16
        from distributed import default_client

        default_client().close()
