"""Dataset folders on a real S3 server (moto, its own process; see tests/s3.py): scan,
load_dataset, build and check take an ``s3://`` root and give what the same files
give on local disk; a chunk fetches its files at once; what is wrong fails in one
line, and a secret never shows."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

import daskmri
from daskmri.parse import fetched
from daskmri.plan import plan_chunks
from daskmri.settings import Source
from daskmri.testing import assert_records_equal

from . import hostile


def _local(table, root, url):
    """The table with its URLs turned back into the local paths they were uploaded from."""
    table = table.copy()
    for column in [c for c in table.columns if c.endswith("_path")]:
        paths = [None if p is None else p.replace(url, str(root), 1) for p in table[column]]
        table[column] = pd.Series(paths, index=table.index, dtype=object)
    return table


@pytest.fixture(scope="module")
def s3_root(s3, synth_root):
    return s3.upload(synth_root, "synth")


def test_scan_at_a_url_lists_what_the_local_scan_lists(s3, s3_root, synth_root):
    remote, problems = daskmri.scan(s3_root, source_options=s3.options())
    local = daskmri.scan(synth_root).table
    assert remote["image_path"].iloc[0].startswith(s3_root + "/dicoms/")
    pd.testing.assert_frame_equal(_local(remote, synth_root, s3_root), local)
    assert remote.attrs["root"] == s3_root and problems == ()


def test_credentials_from_the_environment(s3, s3_root, synth_root, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    assert len(daskmri.scan(s3_root).table) == len(daskmri.scan(synth_root).table)


@pytest.mark.parametrize("scheduler", ["sync", "processes"])
def test_load_dataset_at_a_url_equals_the_local_one(s3, s3_root, reference, scheduler):
    ds = daskmri.load_dataset(
        s3_root, chunk_size=3, scheduler=scheduler, source_options=s3.options()
    )
    assert_records_equal(ds, reference)
    assert len(daskmri.dropped(ds)) == 0


def test_a_chunk_fetches_all_its_files_in_one_call(s3, s3_root):
    table = daskmri.scan(s3_root, source_options=s3.options()).table
    records = plan_chunks(table, chunk_size=4, fs=Source.of(s3_root, options=s3.options()).fs)
    records = records.chunks[0]
    assert all(r.fs.protocol == "s3" and r.fs.blobs is None for r in records)
    held = fetched(records)
    files = {p for r in records for p in (r.image_path, *(c for _, c in r.contours)) if p}
    assert set(held[0].fs.blobs) == files
    assert held[0].fs.blobs[records[0].image_path] == s3.filesystem().cat_file(
        records[0].image_path
    )


def test_build_from_a_url_on_workers_with_credentials_in_their_environment(
    s3, s3_root, s3_cluster, reference, tmp_path, monkeypatch
):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = tmp_path / "ds.zarr"
    report = daskmri.build(s3_root, store, chunk_size=3, client=s3_cluster)
    assert report.dropped == 0
    assert_records_equal(daskmri.open_dataset(store), reference)
    assert daskmri.check(store).fresh
    from distributed import Client

    with Client(s3_cluster, timeout="30s", set_as_default=False) as client:
        ds = daskmri.load_dataset(s3_root, chunk_size=3, client=client)
        assert_records_equal(ds, reference)


def test_staleness_after_an_object_is_rewritten(s3, synth_root, tmp_path):
    url = s3.upload(synth_root, "stale")
    store = tmp_path / "ds.zarr"
    options = s3.options()
    daskmri.build(url, store, scheduler="sync", source_options=options)
    assert daskmri.check(store, source_options=options).fresh
    table = daskmri.scan(url, source_options=options).table
    first = table.iloc[0]
    fs = s3.filesystem()
    fs.pipe_file(first.icontour_path, fs.cat_file(first.icontour_path) + b"\n")
    found = daskmri.check(store, source_options=options)
    assert found.changed == ((first.patient_id, int(first.instance)),)
    with pytest.raises(daskmri.StaleStoreError):
        daskmri.build(url, store, scheduler="sync", source_options=options)
    report = daskmri.build(url, store, mode="update", scheduler="sync", source_options=options)
    assert report.parsed_records >= 1 and daskmri.check(store, source_options=options).fresh


def test_the_hostile_corpus_on_s3_gives_what_the_same_files_give_locally(s3, tmp_path):
    corpus, bad = hostile.make_corpus(tmp_path / "hostile")
    # What S3 can hold: no links, no unreadable files (they stay local-only cases).
    for path in list(corpus.rglob("*")):
        if path.is_symlink() or (path.is_file() and not os.access(path, os.R_OK)):
            path.unlink()
    url = s3.upload(corpus, "hostile")
    local = tmp_path / "downloaded"
    s3.filesystem().get(url + "/", str(local), recursive=True)
    remote = daskmri.load_dataset(url, chunk_size=8, source_options=s3.options())
    same = daskmri.load_dataset(local, chunk_size=8)
    assert_records_equal(remote, same)
    lost = daskmri.dropped(remote).replace({url: str(local)}, regex=True)
    expected = daskmri.dropped(same)
    assert lost[["patient_id", "instance", "path"]].equals(
        expected[["patient_id", "instance", "path"]]
    )
    assert len(lost) >= len(bad) - 2, lost  # at most the link and the unreadable file gone
    shutil.rmtree(local)


def test_a_link_row_that_would_leave_the_root_is_reported_not_followed(s3, synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    with open(root / "link.csv", "a") as fh:
        fh.write("SYN9999,../other-bucket\n")
    url = s3.upload(root, "escape")
    table, (problem,) = daskmri.scan(url, source_options=s3.options())
    assert "would leave the root" in problem.reason and "../other-bucket" in problem.reason
    assert set(table["patient_id"]) == set(daskmri.scan(synth_root).table["patient_id"])


def test_a_prefix_that_does_not_exist_fails_in_one_line(s3):
    url = f"s3://{s3.bucket}/no/such/prefix"
    with pytest.raises(daskmri.LayoutError) as info:
        daskmri.scan(url, source_options=s3.options())
    message = str(info.value)
    assert "\n" not in message and url in message and "check the URL" in message


@pytest.mark.parametrize("call", ["scan", "load_dataset", "build"])
def test_wrong_credentials_fail_in_one_line_without_the_secret(s3, s3_root, call, tmp_path):
    wrong = {"key": "AKIAWRONGKEY", "secret": "wrong-secret-1234", "endpoint_url": s3.endpoint}
    args = {
        "scan": (s3_root,),
        "load_dataset": (s3_root,),
        "build": (s3_root, tmp_path / "ds.zarr"),
    }[call]
    where = {} if call == "scan" else {"scheduler": "sync"}
    with pytest.raises(daskmri.LayoutError) as info:
        getattr(daskmri, call)(*args, source_options=wrong, **where)
    message = str(info.value)
    assert "\n" not in message and "check the credentials" in message
    assert "wrong-secret-1234" not in message and s3.secret not in message
    assert not (tmp_path / "ds.zarr").exists()


def test_a_url_that_holds_credentials_is_refused_without_echoing_it(s3):
    with pytest.raises(daskmri.LayoutError) as info:
        daskmri.scan(f"s3://me:{s3.secret}@{s3.bucket}/synth")
    assert s3.secret not in str(info.value) and "source_options=" in str(info.value)


def test_the_command_line_scans_and_builds_from_a_url_with_the_environments_key(
    s3, s3_root, synth_root, tmp_path
):
    import subprocess
    import sys

    env = os.environ | s3.env()
    cli = [sys.executable, "-m", "daskmri.cli"]
    out = subprocess.run(
        [*cli, "scan", s3_root], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"records:     {len(daskmri.scan(synth_root).table)} " in out.stdout
    store = tmp_path / "ds.zarr"
    out = subprocess.run(
        [*cli, "build", s3_root, "--out", str(store), "--scheduler", "sync"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert s3.secret not in out.stdout + out.stderr
    assert daskmri.open_dataset(store).sizes["record"] == len(daskmri.scan(synth_root).table)


def test_an_rtstruct_layout_at_a_url_equals_the_local_one(s3, tmp_path_factory):
    from .test_rtstruct import oblique as make_oblique
    from .test_rtstruct import oblique_layout

    root, _, _ = make_oblique.__wrapped__(tmp_path_factory)
    url = s3.upload(root, "oblique")
    layout = oblique_layout()
    remote = daskmri.load_dataset(
        url, layout=layout, chunk_size=2, scheduler="processes", source_options=s3.options()
    )
    local = daskmri.load_dataset(root, layout=layout, chunk_size=2, scheduler="processes")
    assert_records_equal(remote, local)
    assert remote.sizes["record"] == 3
    assert [p.replace(url, str(root)) for p in daskmri.dropped(remote)["path"]] == list(
        daskmri.dropped(local)["path"]
    )


def test_a_prefetched_object_cut_short_is_read_again_whole_or_refused(monkeypatch):
    import fsspec

    from daskmri import filesystem
    from daskmri.filesystem import FileSystem, TooLarge

    monkeypatch.setattr(filesystem, "PREFETCH_BYTES", 11)
    fsspec.filesystem("memory").pipe("/prefetch/big", b"0123456789abcdef")  # 16 bytes
    fsspec.filesystem("memory").pipe("/prefetch/small", b"0123")
    held = FileSystem("memory").prefetch(["memory:///prefetch/big", "memory:///prefetch/small"])
    assert len(held.blobs["memory:///prefetch/big"]) == 11  # cut short
    assert held.read("memory:///prefetch/big", 100) == b"0123456789abcdef"  # read again
    with pytest.raises(TooLarge):
        held.read("memory:///prefetch/big", 10)
    assert held.read("memory:///prefetch/small", 4) == b"0123"
    with pytest.raises(TooLarge):
        held.read("memory:///prefetch/small", 3)
    fsspec.filesystem("memory").rm("/prefetch", recursive=True)


def test_redact_masks_a_password_that_holds_a_slash_and_keeps_azure_containers():
    assert daskmri.errors.redact("s3://AKIAX:ab/cd+ef@bucket/x") == "s3://***@bucket/x"
    url = "abfs://container@account.dfs.core.windows.net/data"
    assert daskmri.errors.redact(url) == url
    with pytest.raises(daskmri.LayoutError, match="holds credentials"):
        daskmri.scan("s3://bucket/data?X-Amz-Signature=abcdef")


def test_one_walker_lists_a_store_as_it_lists_the_same_local_folder(s3, synth_root, tmp_path):
    from daskmri.filesystem import LOCAL, split_root
    from daskmri.sources.walk import first_listing, walk

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "dicoms" / "SYN0001" / "9.dcm.d").mkdir()  # a folder named like a slice
    (root / "dicoms" / "SYN0001" / "9.dcm.d" / "x.dcm").write_bytes(b"x")
    url = s3.upload(root, "walk")
    fs, url = split_root(url, s3.options())
    patterns = [
        "dicoms/SYN0001/*.dcm*",  # a wildcard last part: matches the folder too
        "dicoms/*/*.dcm",  # a wildcard folder on the way
        "contourfiles/SYN-C-1/i-contours/IM-0001-0002-icontour-manual.txt",  # all literal
        "dicoms/NOBODY/*.dcm",  # a missing literal folder lists as empty
    ]
    for pattern in patterns:
        local_problems, remote_problems = [], []
        local = walk(LOCAL, str(root), pattern, local_problems, {})
        remote = walk(fs, url, pattern, remote_problems, {})
        assert bool(local) == ("NOBODY" not in pattern), pattern
        assert [p.replace(url, str(root), 1) for p in remote] == local, pattern
        assert local == sorted(local) and local_problems == remote_problems == []
        # The listings made ahead, for many patients at once, give the same answer.
        ahead = fs.listed([first_listing(url, pattern)])
        assert walk(ahead, url, pattern, [], {}) == remote
    assert str(root / "dicoms" / "SYN0001" / "9.dcm.d") in walk(
        LOCAL, str(root), "dicoms/SYN0001/*.dcm*", [], {}
    )
