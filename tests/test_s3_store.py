"""Stores on a real S3 server (moto in its own process, tests/s3.py), written by real
``dask worker`` processes that get the endpoint and the key through their environment:
each store equals the local one, a killed build resumes, daskmri's claim rules hold
on a bucket, an unreachable store fails in one line, and no credential is written
anywhere (objects, attributes, dropped lists, logs, errors, reprs, versions)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import daskmri
from daskmri.schema import COMPACT
from daskmri.store import StoreSpec
from daskmri.testing import assert_records_equal

from .readers import parsed
from .test_remote_cluster import REPO, WAIT, worker_pids

pytest.importorskip("s3fs", reason="s3fs is not installed: pip install -e '.[test]'")

CHUNK = 4


@pytest.fixture
def client(s3_cluster):
    from distributed import Client

    with Client(s3_cluster, timeout="30s", set_as_default=False) as c:
        c.wait_for_workers(2, timeout=WAIT)
        yield c


@pytest.fixture(scope="module")
def local_store(synth_root, tmp_path_factory):
    """The plain local reference: the same files built to a folder."""
    store = tmp_path_factory.mktemp("s3-reference") / "local.zarr"
    daskmri.build(synth_root, store, chunk_size=CHUNK, scheduler="sync")
    return store


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured_logs():
    """Every log record at DEBUG, daskmri's and the root logger's (so also those of
    the libraries underneath: s3fs, botocore, zarr, distributed)."""
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("daskmri")]
    levels = [logger.level for logger in loggers]
    loggers[0].addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _secrets(s3) -> list[bytes]:
    return [s3.key.encode(), s3.secret.encode()]


def assert_no_secret_in_store(s3, prefix: str) -> int:
    """Read every object of the store back from the bucket; none holds the key id or
    the secret. Returns how many objects were read."""
    fs = s3.filesystem()
    objects = fs.find(f"{s3.bucket}/{prefix}")
    assert any(o.endswith("/zarr.json") for o in objects)
    for path in objects:
        body = fs.cat_file(path)
        leaked = [s for s in _secrets(s3) if s in body]
        assert not leaked, f"{path} holds a credential"
    return len(objects)


def assert_no_secret_in(s3, texts: list[str], records: list[logging.LogRecord]) -> None:
    for text in texts:
        assert s3.key not in text and s3.secret not in text, text[:300]
    for record in records:
        if record.name.split(".")[0] in ("botocore", "aiobotocore") and s3.secret not in str(
            record.getMessage()
        ):
            # botocore's DEBUG lines show the request headers, and the key id in the
            # Authorization header (never the secret, which is never sent). They are
            # botocore's, at DEBUG, which no one runs in production.
            continue
        message = record.getMessage()
        assert s3.key not in message and s3.secret not in message, (record.name, message[:300])


def _batches(ds, **options) -> list[dict[str, np.ndarray]]:
    with daskmri.BatchIterator(ds, batch_size=3, seed=5, **options) as it:
        return [dict(batch) for batch in it]


def assert_same_batches(actual, expected) -> None:
    assert len(actual) == len(expected) > 0
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys()
        for name in e:
            np.testing.assert_array_equal(a[name], e[name], err_msg=name)


def _versions() -> str:
    out = io.StringIO()
    daskmri.show_versions(file=out)
    return out.getvalue()


def test_a_store_built_by_workers_with_explicit_options_equals_the_local_store(
    s3, client, synth_root, local_store
):
    """Credentials passed as ``storage_options=``; the workers write the chunks."""
    url, options = f"s3://{s3.bucket}/explicit.zarr", s3.options()
    local = daskmri.open_dataset(local_store)
    with captured_logs() as records:
        report = daskmri.build(
            synth_root, url, chunk_size=CHUNK, client=client, storage_options=options
        )
        ds = daskmri.open_dataset(url, storage_options=options)
        assert_records_equal(ds, local)
        freshness = daskmri.check(url, storage_options=options)
        assert freshness.fresh, str(freshness)
        expected = _batches(local)
        assert_same_batches(_batches(ds), expected)
        assert_same_batches(_batches(ds, client=client), expected)  # read by the workers
        lazily = xr.open_dataset(url, engine="daskmri", chunks={}, storage_options=options)
        assert_records_equal(lazily, local)
    assert report.records == 16 and report.parsed_chunks == 4
    # One fetch task per store chunk, shared by the image and the masks: a chunk's
    # objects are requested at once, not one latency after another.
    graphs = [dict(ds[name].data.__dask_graph__()) for name in ("image", "icontour", "ocontour")]
    fetches = [{k for k in g if str(k[0]).startswith("daskmri-fetch-")} for g in graphs]
    assert len(fetches[0]) == 4 and fetches[0] == fetches[1] == fetches[2]
    assert_no_secret_in_store(s3, "explicit.zarr")
    spec = StoreSpec.of(url, options)
    texts = [str(report), repr(report), repr(spec), str(freshness), repr(freshness)]
    texts += [repr(ds), str(ds.attrs), daskmri.dropped(ds).to_csv(), _versions()]
    assert_no_secret_in(s3, texts, records)
    assert any(r.name.startswith("daskmri") for r in records)


def test_a_store_built_with_credentials_only_in_the_environment(
    s3, s3_cluster, damaged_root, tmp_path, monkeypatch
):
    """No ``storage_options``: the client and the workers find the endpoint and the key
    in their environment, as s3fs does on a cloud machine. Through the CLI, with a
    damaged file so that dropped.csv has a row."""
    from daskmri import cli

    broken = Path(daskmri.scan(damaged_root).table.image_path.iloc[0])  # a record's slice
    broken.write_bytes(broken.read_bytes()[:200])
    local = tmp_path / "local.zarr"
    daskmri.build(damaged_root, local, chunk_size=CHUNK, scheduler="sync")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    url, csv = f"s3://{s3.bucket}/environment.zarr", tmp_path / "dropped.csv"
    argv = ["build", str(damaged_root), "--out", url, "--chunk-size", str(CHUNK)]
    with captured_logs() as records:
        assert cli.main([*argv, "--scheduler", s3_cluster, "--dropped", str(csv)]) == 0
        ds = daskmri.open_dataset(url)
        assert_records_equal(ds, daskmri.open_dataset(local))
        assert cli.main(["check", url]) == 0
        assert_same_batches(_batches(ds), _batches(daskmri.open_dataset(local)))
    lost = daskmri.dropped(ds)
    assert len(lost) >= 1 and lost.equals(daskmri.dropped(daskmri.open_dataset(local)))
    assert_no_secret_in_store(s3, "environment.zarr")
    texts = [csv.read_text(), lost.to_csv(), str(ds.attrs), repr(StoreSpec.of(url)), _versions()]
    assert_no_secret_in(s3, texts, records)


def _kill_the_build(process: subprocess.Popen, client, fs, markers: str) -> None:
    """SIGKILL a worker and the client process once a chunk's marker is in the bucket."""
    deadline = time.monotonic() + 2 * WAIT
    while not [m for m in fs.find(markers) if "/c/" in m]:
        assert process.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, "the build never got going"
        fs.invalidate_cache()
        time.sleep(0.02)
    os.kill(worker_pids(client)[0], signal.SIGKILL)
    process.kill()
    process.wait(timeout=WAIT)


def test_a_build_killed_with_a_worker_resumes_on_s3(s3, client, synth_root, tmp_path, monkeypatch):
    """The client and one worker are SIGKILLed partway: the store is left unfinished
    (and cannot be opened), and the same build run again finishes it, equal to a clean
    build."""
    url, log = f"s3://{s3.bucket}/killed.zarr", tmp_path / "parsed.log"
    code = (
        "import sys, daskmri; from tests.readers import LoggingReader; "
        "daskmri.build(sys.argv[1], sys.argv[2], chunk_size=2, client=sys.argv[3], "
        "reader=LoggingReader(sys.argv[4], delay=0.2))"
    )
    env = os.environ | s3.env() | {"PYTHONPATH": str(REPO)}
    address = client.scheduler.address
    argv = [sys.executable, "-c", code, str(synth_root), url, address, str(log)]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        _kill_the_build(process, client, s3.filesystem(), f"{s3.bucket}/killed.zarr/done")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
    client.wait_for_workers(2, timeout=WAIT)  # the nanny starts a new one
    with pytest.raises(daskmri.StoreError, match="never finished"):
        daskmri.open_dataset(url, storage_options=s3.options())
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    report = daskmri.build(synth_root, url, chunk_size=2, client=client)
    assert report.records == 16
    assert report.reused_chunks >= 1 and report.parsed_chunks >= 1, str(report)
    assert len(parsed(log)) < 2 * 16  # the kept chunks were not parsed again
    clean = tmp_path / "clean.zarr"
    daskmri.build(synth_root, clean, chunk_size=2, scheduler="sync")
    # The store begun with a custom reader (LoggingReader) holds float32 pixels (a custom
    # reader's records are float32): the same images, bit for bit, as the clean store's
    # integers widen to; everything else identical.
    with __import__("dask").config.set(scheduler="sync"):
        xr.testing.assert_identical(
            daskmri.open_dataset(url).drop_attrs().drop_vars(COMPACT).compute(),
            daskmri.open_dataset(clean).drop_attrs().drop_vars(COMPACT).compute(),
        )
    assert daskmri.check(url).fresh


def test_a_bucket_prefix_of_other_objects_is_never_overwritten(s3, tmp_path):
    """The claim rules on a bucket: a prefix holding objects daskmri did not make, or
    a Zarr store of someone else's, is refused whatever the mode; ``mode="overwrite"``
    of daskmri's own store deletes only its own objects."""
    import zarr

    fs, options = s3.filesystem(), s3.options()
    fs.pipe_file(f"{s3.bucket}/theirs/notes.txt", b"years of work")
    zarr.create_group(f"s3://{s3.bucket}/their.zarr", storage_options=options)
    root = daskmri.synth.make_dataset(tmp_path / "data", patients=1, slices=3, shape=(16, 16))
    for prefix in ("theirs", "their.zarr"):
        for mode in daskmri.store.MODES:
            with pytest.raises(daskmri.StoreError, match="did not make") as info:
                daskmri.build(
                    root, f"s3://{s3.bucket}/{prefix}", mode=mode, storage_options=options,
                    scheduler="sync",
                )  # fmt: skip
            assert "\n" not in str(info.value)
    assert fs.cat_file(f"{s3.bucket}/theirs/notes.txt") == b"years of work"
    assert fs.find(f"{s3.bucket}/their.zarr") == [f"{s3.bucket}/their.zarr/zarr.json"]

    url = f"s3://{s3.bucket}/ours.zarr"
    daskmri.build(root, url, storage_options=options, scheduler="sync")
    fs.pipe_file(f"{s3.bucket}/ours.zarr/README.txt", b"a note of mine")
    before = set(fs.find(f"{s3.bucket}/ours.zarr"))
    report = daskmri.build(root, url, mode="overwrite", storage_options=options, scheduler="sync")
    assert report.parsed_chunks == 1
    fs.invalidate_cache()
    assert set(fs.find(f"{s3.bucket}/ours.zarr")) == before
    assert fs.cat_file(f"{s3.bucket}/ours.zarr/README.txt") == b"a note of mine"


def _refusals(root, url: str, options: dict) -> list[daskmri.StoreError]:
    """The errors of build, open_dataset and check of ``url``, each bounded."""
    calls = [
        lambda: daskmri.build(root, url, storage_options=options, scheduler="sync"),
        lambda: daskmri.open_dataset(url, storage_options=options),
        lambda: daskmri.check(url, storage_options=options),
    ]
    errors = []
    for call in calls:
        started = time.monotonic()
        with pytest.raises(daskmri.StoreError) as info:
            call()
        assert time.monotonic() - started < WAIT
        errors.append(info.value)
    return errors


@pytest.mark.parametrize("case", ["wrong secret", "no such bucket", "no such endpoint"])
def test_an_unreachable_store_fails_in_one_line_that_names_the_fix(s3, synth_root, case):
    options, url = s3.options(), f"s3://{s3.bucket}/explicit.zarr"
    if case == "wrong secret":
        options = options | {"secret": "not-the-secret-" + s3.secret[:8]}
        fix = "credentials"
    elif case == "no such bucket":
        url, fix = "s3://no-such-bucket-daskmri/ds.zarr", "bucket does not exist"
    else:
        # Port 9 (discard): nothing listens there; no retries, so the test stays quick.
        options = options | {
            "endpoint_url": "http://127.0.0.1:9",
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
        fix = "endpoint"
    with captured_logs() as records:
        errors = _refusals(synth_root, url, options)
    for error in errors:
        message = str(error)
        assert "\n" not in message and fix in message and url in message, message
        chained = error.__cause__ or (error.__context__ and not error.__suppress_context__)
        assert not chained, "no chained traceback"
        assert options["secret"] not in message and s3.key not in message
    secrets = [s3.secret, options["secret"]]
    assert not [r for r in records if any(s in r.getMessage() for s in secrets)]
    assert not s3.filesystem().exists("no-such-bucket-daskmri")


def test_a_url_with_a_password_is_never_shown():
    """A store URL that embeds a credential, and options that hold one: the spec's
    repr and every message show neither."""
    spec = StoreSpec.of("s3://me:hunter2-secret@bucket/ds.zarr", {"token": "tok-123456"})
    assert "hunter2-secret" not in repr(spec) and "tok-123456" not in repr(spec)
    assert spec.shown == "s3://***@bucket/ds.zarr"
    assert daskmri.errors.redact("fetch s3://b/x?X-Amz-Signature=abcdef failed") == (
        "fetch s3://b/x?X-Amz-Signature=*** failed"
    )
