"""A real cluster, started with the ``dask scheduler`` and ``dask worker`` command-line
tools on 127.0.0.1 and reached by address; and workers killed partway through a build."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr

import daskmri
from daskmri.testing import assert_records_equal

from .readers import LoggingReader, PoisonReader, parsed

REPO = Path(__file__).resolve().parents[1]
WAIT = 60  # seconds: every wait below is bounded by this


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + WAIT
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)


def start_scheduler(folder: Path, **popen) -> tuple[subprocess.Popen, str]:
    """``dask scheduler`` on 127.0.0.1 at a free port; returns it and its address."""
    import json

    scheduler_file = folder / "scheduler.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        cwd=str(folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT
    while True:
        # The file appears before its JSON is written: read it until it parses.
        with contextlib.suppress(FileNotFoundError, ValueError):
            return proc, json.loads(scheduler_file.read_text())["address"]
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop([proc])
            raise AssertionError("dask scheduler did not start")
        time.sleep(0.1)


def start_worker(
    address: str,
    folder: Path,
    name: str,
    prefix: tuple[str, ...] = (),
    *,
    nanny: bool = True,
    **popen,
) -> subprocess.Popen:
    """One ``dask worker`` process with one thread, on 127.0.0.1 (its command line
    run by ``prefix``, if given; with no nanny to restart it if ``nanny`` is False)."""
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1",
         "--nthreads", "1", "--no-dashboard", "--name", name,
         "--local-directory", str(folder / name), *([] if nanny else ["--no-nanny"])],
        cwd=str(folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen,
    )  # fmt: skip


@contextlib.contextmanager
def cluster(folder: Path, workers: dict[str, dict], **popen):
    """``dask scheduler`` and the named ``dask worker`` processes (each with its
    :func:`start_worker` options), all waited for; yields ``(address, workers)`` and
    stops every process on the way out, whatever happened."""
    from distributed import Client

    scheduler, address = start_scheduler(folder, **popen)
    processes = [scheduler]
    try:
        for name, options in workers.items():
            processes.append(start_worker(address, folder, name, **(popen | options)))
        if workers:  # a scheduler alone (no workers) is ready once it has an address
            with Client(address, timeout="30s", set_as_default=False) as client:
                client.wait_for_workers(len(workers), timeout=WAIT)
        yield address, processes[1:]
    finally:
        # Workers first: a worker whose scheduler is gone waits for it before it exits
        # (8 s against 1 s for two workers, measured).
        _stop(processes[1:])
        _stop(processes[:1])


def refused(address: str, root: Path, store: Path) -> str:
    """The one-line error with which ``build`` and then ``load_dataset`` refuse to run
    on the cluster at ``address`` (bounded, and nothing is left running)."""
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=False) as client:
        started = time.monotonic()
        with pytest.raises(daskmri.DaskmriError) as info:
            daskmri.build(root, store, client=client)
        assert time.monotonic() - started < 30
        message = str(info.value)
        with pytest.raises(daskmri.DaskmriError) as again:
            daskmri.load_dataset(root, client=client)
    assert "\n" not in message
    assert str(again.value).split(";")[0] == message.split(";")[0]
    return message


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes; yields (address, workers)."""
    folder = tmp_path_factory.mktemp("cluster")
    # Workers import tests.readers. A task is given up (KilledWorker) after its second
    # worker dies, so that a poison record is found in seconds (the default is 3 retries).
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
    }
    with cluster(folder, {"w0": {}, "w1": {}}, env=env) as (address, workers):
        assert address.startswith("tcp://127.0.0.1:")
        yield address, workers


def worker_pids(client) -> list[int]:
    return list(client.run(os.getpid).values())


def test_scan_load_build_and_iterate_by_address_equal_the_local_run(remote, synth_root, tmp_path):
    from distributed import Client

    address, _ = remote
    local = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync")
    with Client(address, timeout="30s", set_as_default=False) as client:
        ds = daskmri.load_dataset(synth_root, chunk_size=5, client=client)
        assert_records_equal(ds, local)
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=5, client=client)
        assert_records_equal(daskmri.open_dataset(store), local)
        served = [
            (p, i)
            for batch in daskmri.BatchIterator(ds, batch_size=4, seed=0, client=client)
            for p, i in zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True)
        ]
        assert sorted(served) == sorted(
            zip(local.patient_id.values.tolist(), local.instance.values.tolist(), strict=True)
        )
    # An address string works as well as a client.
    store = tmp_path / "by-address.zarr"
    daskmri.build(synth_root, store, chunk_size=5, client=address)
    assert_records_equal(daskmri.open_dataset(store), local)


def _kill_a_worker_when(client, log: Path, count: int) -> int:
    deadline = time.monotonic() + WAIT
    while len(parsed(log)) < count:
        assert time.monotonic() < deadline, "the build never got going"
        time.sleep(0.02)
    pid = worker_pids(client)[0]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_worker_killed_during_build_loses_nothing(remote, synth_root, tmp_path):
    """SIGKILL one worker process partway: its tasks run again elsewhere (each rewrites
    its own region), and the store equals a clean build."""
    import threading

    from distributed import Client

    address, _ = remote
    log, store = tmp_path / "log", tmp_path / "ds.zarr"
    with Client(address, timeout="30s", set_as_default=False) as client:
        killer = threading.Thread(target=lambda: killed.append(_kill_a_worker_when(client, log, 4)))
        killed: list[int] = []
        killer.start()
        report = daskmri.build(
            synth_root, store, chunk_size=2, client=client, reader=LoggingReader(log, delay=0.1)
        )
        killer.join(timeout=WAIT)
        assert killed, "no worker was killed"
        assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
        client.wait_for_workers(2, timeout=WAIT)  # the nanny starts a new one
    assert report.records == 16
    clean = tmp_path / "clean.zarr"
    # The same reader: a user's reader makes a float32 store (its records are not known
    # to widen from integers), so the stores compare whole, compact arrays included.
    reader = LoggingReader(tmp_path / "clean-log")
    daskmri.build(synth_root, clean, chunk_size=2, scheduler="sync", reader=reader)
    xr.testing.assert_identical(
        daskmri.open_dataset(store).drop_attrs().compute(),
        daskmri.open_dataset(clean).drop_attrs().compute(),
    )


def test_a_worker_killed_during_load_dataset_loses_nothing(remote, synth_root, tmp_path):
    from distributed import Client

    address, _ = remote
    log = tmp_path / "log"
    import threading

    with Client(address, timeout="30s", set_as_default=False) as client:
        killed: list[int] = []
        killer = threading.Thread(target=lambda: killed.append(_kill_a_worker_when(client, log, 4)))
        killer.start()
        ds = daskmri.load_dataset(
            synth_root, chunk_size=2, client=client, reader=LoggingReader(log, delay=0.1)
        )
        killer.join(timeout=WAIT)
        assert killed, "no worker was killed"
        local = daskmri.load_dataset(synth_root, chunk_size=2, scheduler="sync")
        assert_records_equal(ds, local)
        keys = list(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True))
        assert len(keys) == len(set(keys)) == 16
        with client.as_current():
            assert np.array_equal(ds.image.values, local.image.values)
        client.wait_for_workers(2, timeout=WAIT)


def test_a_record_that_kills_its_worker_is_dropped_alone(remote, synth_root, tmp_path):
    """The reader kills its process on one record, as a crashing decoder would. The build
    finishes; only that record is dropped, with a reason saying the worker died; its
    chunk's other records are there."""
    from distributed import Client

    address, _ = remote
    store = tmp_path / "ds.zarr"
    with Client(address, timeout="30s", set_as_default=False) as client:
        started = time.monotonic()
        report = daskmri.build(
            synth_root, store, chunk_size=4, client=client, reader=PoisonReader("SYN0001", 6)
        )
        seconds = time.monotonic() - started
        client.wait_for_workers(2, timeout=WAIT)
    assert seconds < 120
    assert report.records == 15 and report.dropped == 1
    assert report.isolated == (("SYN0001", 6),)
    assert 0 < report.isolation_seconds < seconds
    ds = daskmri.open_dataset(store)
    lost = daskmri.dropped(ds)
    assert lost[["patient_id", "instance"]].values.tolist() == [["SYN0001", 6]]
    assert "worker process died while parsing this record" in lost.reason.iloc[0]
    local = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")
    keep = ~((local.patient_id == "SYN0001") & (local.instance == 6))
    assert_records_equal(ds, local.isel(record=np.flatnonzero(keep.values)))


def test_load_dataset_drops_a_record_that_kills_its_worker(remote, synth_root):
    from distributed import Client

    address, _ = remote
    with Client(address, timeout="30s", set_as_default=False) as client:
        ds = daskmri.load_dataset(
            synth_root, chunk_size=4, client=client, reader=PoisonReader("SYN0002", 9)
        )
        lost = daskmri.dropped(ds)
        assert lost[["patient_id", "instance"]].values.tolist() == [["SYN0002", 9]]
        assert "worker process died" in lost.reason.iloc[0]
        local = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")
        keep = ~((local.patient_id == "SYN0002") & (local.instance == 9))
        assert_records_equal(ds, local.isel(record=np.flatnonzero(keep.values)))
        client.wait_for_workers(2, timeout=WAIT)


def test_the_dask_config_scheduler_address_is_used_without_a_client(remote, synth_root, tmp_path):
    """``client=None`` with Dask's ``scheduler-address`` config (in-process) or the
    ``DASK_SCHEDULER_ADDRESS`` environment variable (a fresh process, as a user sets
    it): the work runs on that cluster's workers."""
    import dask
    from distributed import Client, futures_of

    address, _ = remote
    local = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync")
    with dask.config.set({"scheduler-address": address}):
        ds = daskmri.load_dataset(synth_root, chunk_size=5)
    made = futures_of(ds)[0].client
    try:
        assert made.scheduler.address == address
        assert_records_equal(ds, local)
    finally:
        made.close()

    with Client(address, timeout="30s", set_as_default=False) as client:
        client.wait_for_workers(2, timeout=WAIT)
        pids = set(worker_pids(client))
    log, store = tmp_path / "pids.log", tmp_path / "ds.zarr"
    code = (
        "import sys, daskmri; from tests.readers import PidReader; "
        "print(daskmri.build(sys.argv[1], sys.argv[2], reader=PidReader(sys.argv[3])).records)"
    )
    env = os.environ | {"DASK_SCHEDULER_ADDRESS": address, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(synth_root), str(store), str(log)],
        env=env, capture_output=True, text=True, timeout=2 * WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "16"
    parsed_by = {int(pid) for pid in log.read_text().split()}
    assert parsed_by and parsed_by <= pids, (parsed_by, pids)
    assert_records_equal(daskmri.open_dataset(store), local)


def test_a_tls_cluster_by_address_with_security(synth_root, tmp_path):
    """A LocalCluster of worker processes that speaks only TLS, with throwaway
    certificates; daskmri connects by its tls:// address with security=."""
    pytest.importorskip("cryptography", reason="Security.temporary() needs cryptography")
    from distributed import LocalCluster
    from distributed.security import Security

    security = Security.temporary()
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tls://",
        security=security,
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        local = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync")
        store = tmp_path / "tls.zarr"
        daskmri.build(synth_root, store, chunk_size=5, client=address, security=security)
        assert_records_equal(daskmri.open_dataset(store), local)
        ds = daskmri.load_dataset(synth_root, chunk_size=5, client=address, security=security)
        from distributed import futures_of

        made = futures_of(ds)[0].client  # load_dataset connected it, as Client(address) would
        try:
            assert made.scheduler.address.startswith("tls://")
            assert_records_equal(ds, local)
            served = sum(len(b["instance"]) for b in daskmri.BatchIterator(ds, batch_size=4))
            assert served == 16
        finally:
            made.close()


def test_workers_that_cannot_import_daskmri_fail_in_one_line(synth_root, tmp_path):
    """A `dask worker` whose environment has a broken daskmri first on its path: the
    build stops at once with a one-line error that names the fix, not a traceback from
    the first task or a hang."""

    broken = tmp_path / "broken" / "daskmri"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this daskmri is broken')\n")
    env = os.environ | {"PYTHONPATH": str(broken.parent)}
    with cluster(tmp_path, {"broken": {"env": env}}) as (address, _):
        message = refused(address, synth_root, tmp_path / "ds.zarr")
    assert "1 of 1 workers cannot run daskmri" in message
    assert "this daskmri is broken" in message
    assert "install the same environment" in message


def _can_hide_folders() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"],
            capture_output=True,
            timeout=WAIT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_workers_that_cannot_see_the_data_fail_in_one_line(synth_root, tmp_path):
    """A `dask worker` in a mount namespace of its own where the data folder's parent
    is an empty tmpfs: it runs daskmri fine but cannot see the data, as a worker on
    a machine without the shared filesystem. The build and load stop in one line."""
    if not _can_hide_folders():
        pytest.skip("needs `unshare --mount` (util-linux, as root) to hide a folder from a worker")

    hidden = tmp_path / "hidden"
    root = hidden / "data"
    shutil.copytree(synth_root, root)
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none "$0" && exec "$@"', str(hidden))  # fmt: skip
    with cluster(tmp_path, {"sees": {}, "blind": {"prefix": hide}}) as (address, _):
        message = refused(address, root, tmp_path / "ds.zarr")
    assert f"1 of 2 workers cannot see the data folder {root}" in message
    assert "mounted at the same path on every worker" in message
    # Nothing was written: the store was never created.
    assert not (tmp_path / "ds.zarr").exists()


def test_a_cluster_left_with_no_workers_is_an_error_not_a_hang(tmp_path):
    """Every worker gone for good (no nanny to restart it): waiting on the cluster
    stops with an error that says so, instead of waiting for ever."""
    from distributed import Client

    from daskmri.execute import wait_on_cluster

    # No nanny: a killed worker stays dead.
    with (
        cluster(tmp_path, {"lone": {"nanny": False}}) as (address, _),
        Client(address, timeout="30s", set_as_default=False) as client,
    ):
        future = client.submit(time.sleep, 60, pure=False)
        time.sleep(1)
        for pid in client.run(os.getpid).values():
            os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(daskmri.DaskmriError, match="has had no workers for 3 s"):
            wait_on_cluster(client, [future], no_workers_timeout=3)
        assert time.monotonic() - started < WAIT
