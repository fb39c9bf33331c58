"""daskmri deletes or overwrites only what it made: store paths that hold anything
else, or the dataset itself, are refused before anything is written, by the API and
by the CLI, for every mode; the CLI never overwrites a file it did not write. Every
refused call is checked against the bytes and modification times of what was there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zarr

import daskmri
from daskmri import StoreError, cli, synth
from daskmri.plot import write_png

MODES = ("resume", "update", "overwrite")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under ``folder`` (itself included): bytes and mtime."""
    folder = Path(folder)
    out = {".": (b"", folder.stat().st_mtime_ns)} if folder.is_dir() else {}
    if folder.is_file():
        return {".": (folder.read_bytes(), folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(folder))] = (data, path.stat().st_mtime_ns)
    return out


@pytest.fixture
def thesis(tmp_path) -> Path:
    """A folder of someone's own files, as in the bug report."""
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("four years of work")
    (mine / "sub" / "data.bin").write_bytes(os.urandom(256))
    return mine


def refused_everywhere(root: Path, store: Path | str, watched: Path, match: str) -> None:
    """``build`` (every mode) and ``daskmri build`` refuse ``store``, and nothing under
    ``watched`` changes, not even a modification time."""
    before = snapshot(watched)
    for mode in MODES:
        with pytest.raises(StoreError, match=match):
            daskmri.build(root, store, mode=mode, scheduler="sync")
        assert snapshot(watched) == before, mode
    for mode in MODES:
        argv = ["build", str(root), "--out", str(store), "--mode", mode, "--scheduler", "sync"]
        assert cli.main(argv) == 2
    assert snapshot(watched) == before


class TestStorePaths:
    def test_a_folder_of_other_files_is_refused(self, synth_root, thesis, capsys):
        refused_everywhere(synth_root, thesis, thesis.parent, "holds files that daskmri did not")
        err = capsys.readouterr().err.splitlines()
        assert len(err) == len(MODES)  # one line per CLI call
        assert all(line.startswith("daskmri: error: ") and "thesis.txt" in line for line in err)

    def test_a_plain_file_is_refused(self, synth_root, tmp_path):
        target = tmp_path / "notes.zarr"
        target.write_text("not a store")
        refused_everywhere(synth_root, target, tmp_path, "is a file")

    def test_a_zarr_store_daskmri_did_not_make_is_refused(self, synth_root, tmp_path):
        group = zarr.open_group(str(tmp_path / "theirs.zarr"), mode="w")
        group.create_array("weights", shape=(4,), dtype="f4")[:] = 1.5
        refused_everywhere(synth_root, tmp_path / "theirs.zarr", tmp_path, "did not make")

    @pytest.mark.parametrize("where", [".", "dicoms", "dicoms/SYN0001", "contourfiles", "x.zarr"])
    def test_the_dataset_and_anything_inside_it_are_refused(self, damaged_root, where):
        store = damaged_root / where
        match = "is \\(or holds\\) the dataset" if where == "." else "lies inside the dataset"
        refused_everywhere(damaged_root, store, damaged_root, match)
        assert not (damaged_root / "x.zarr").exists()

    def test_a_folder_that_holds_the_dataset_is_refused(self, damaged_root):
        refused_everywhere(damaged_root, damaged_root.parent, damaged_root.parent, "or holds")

    def test_a_link_into_the_dataset_is_refused(self, damaged_root, tmp_path):
        link = tmp_path / "looks-harmless.zarr"
        link.symlink_to(damaged_root / "dicoms")
        refused_everywhere(damaged_root, link, damaged_root, "lies inside the dataset")

    def test_an_fsspec_url_holding_other_files_is_refused(self, synth_root):
        fsspec = pytest.importorskip("fsspec")
        fs = fsspec.filesystem("memory")
        fs.pipe("/theirs/keep.txt", b"precious")
        with pytest.raises(StoreError, match="did not make"):
            daskmri.build(synth_root, "memory://theirs", mode="overwrite", scheduler="sync")
        assert fs.cat("/theirs/keep.txt") == b"precious"
        assert fs.ls("/theirs", detail=False) == ["/theirs/keep.txt"]
        fs.rm("/theirs", recursive=True)

    def test_a_store_path_with_a_wildcard_is_refused_and_its_siblings_untouched(
        self, synth_root, tmp_path
    ):
        # fsspec deletes by glob: an overwrite of "ds[12].zarr" would remove ds1 and ds2.
        for name in ("ds1.zarr", "ds2.zarr"):
            daskmri.build(synth_root, tmp_path / name, scheduler="sync")
        before = snapshot(tmp_path)
        with pytest.raises(StoreError, match="wildcard"):
            daskmri.build(synth_root, tmp_path / "ds[12].zarr", mode="overwrite", scheduler="sync")
        assert snapshot(tmp_path) == before

    def test_a_store_url_inside_a_dataset_url_is_refused(self):
        from daskmri.store.spec import refuse_inside_dataset

        with pytest.raises(StoreError, match="lies inside the dataset"):
            refuse_inside_dataset("s3://bucket/data/ds.zarr", "s3://bucket/data")
        with pytest.raises(StoreError, match="or holds"):
            refuse_inside_dataset("s3://bucket", "s3://bucket/data/")
        refuse_inside_dataset("s3://bucket/data2/ds.zarr", "s3://bucket/data")  # a sibling

    def test_a_zarr_store_with_daskmri_like_attributes_is_still_not_ours(
        self, synth_root, tmp_path
    ):
        theirs = tmp_path / "lab.zarr"
        group = zarr.create_group(str(theirs), attributes={"format": 3, "chunk_size": 256})
        group.create_array("image", shape=(4,), dtype="f4")[:] = 2.5
        refused_everywhere(synth_root, theirs, tmp_path, "Zarr store that daskmri did not make")

    def test_a_local_url_inside_the_dataset_is_refused(self, damaged_root):
        (damaged_root / "in.zarr").mkdir()
        before = snapshot(damaged_root)
        for url in (f"file://{damaged_root}/in.zarr", f"local://{damaged_root}/in.zarr"):
            with pytest.raises(StoreError, match="lies inside the dataset"):
                daskmri.build(damaged_root, url, mode="overwrite", scheduler="sync")
        assert snapshot(damaged_root) == before

    def test_an_overwrite_cut_short_starts_again(self, synth_root, tmp_path):
        """A kill partway through removing a store leaves some of its arrays: the
        next build, in any mode, must start again rather than crash on what is gone."""
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
        spec = daskmri.store.StoreSpec.of(store)
        # What remove() has done when the kill comes after its first two arrays.
        spec.group("r+").attrs.update({"complete": False, "planned": False})
        shutil.rmtree(store / "pixels")
        shutil.rmtree(store / "labels")
        report = daskmri.build(synth_root, store, chunk_size=4, scheduler="sync", mode="update")
        assert report.records == 16 and daskmri.check(store).fresh
        assert daskmri.open_dataset(store).image.shape[0] == 16

    def test_an_unknown_url_protocol_is_one_line(self, synth_root, capsys):
        argv = ["build", str(synth_root), "--out", "nosuchproto://x/ds.zarr", "--scheduler", "sync"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot open the store" in err

    def test_an_empty_folder_is_used(self, synth_root, tmp_path):
        (tmp_path / "empty").mkdir()
        report = daskmri.build(synth_root, tmp_path / "empty", scheduler="sync")
        assert report.records == 16 and daskmri.check(tmp_path / "empty").fresh

    def test_overwrite_removes_only_the_stores_own_entries(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
        (store / "NOTES.txt").write_text("the user's own note, put inside the store")
        (store / "image" / "c" / "extra").mkdir(parents=True, exist_ok=True)
        note = snapshot(store / "NOTES.txt")
        report = daskmri.build(synth_root, store, chunk_size=8, mode="overwrite", scheduler="sync")
        assert report.parsed_chunks == 2
        assert snapshot(store / "NOTES.txt") == note
        ds = daskmri.open_dataset(store)
        assert ds.image.chunks[0] == (8, 8) and ds.sizes["record"] == 16

    def test_a_resumed_or_updated_store_keeps_foreign_files_in_it(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, scheduler="sync")
        (store / "README").write_text("mine")
        for mode in ("resume", "update"):
            daskmri.build(synth_root, store, mode=mode, scheduler="sync")
        assert (store / "README").read_text() == "mine"

    def test_the_claim_is_made_before_connecting_to_a_cluster(self, synth_root, thesis):
        # Nothing listens there: had the path been accepted, the error would be the
        # address's. The store's refusal comes first, and at once.
        with pytest.raises(StoreError, match="did not make"):
            daskmri.build(synth_root, thesis, client="tcp://127.0.0.1:9")


class TestDroppedCsv:
    def test_a_file_daskmri_did_not_write_is_never_overwritten(self, synth_root, tmp_path, capsys):
        csv = tmp_path / "ds.dropped.csv"
        csv.write_text("patient,score\nA,1\n")
        before = snapshot(tmp_path)
        argv = ["build", str(synth_root), "--out", str(tmp_path / "ds.zarr"), "--scheduler", "sync"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ds.dropped.csv already exists" in err
        # Refused before the build: no store either.
        assert snapshot(tmp_path) == before

    def test_its_own_list_is_rewritten(self, damaged_root, tmp_path):
        store = tmp_path / "ds.zarr"
        argv = ["build", str(damaged_root), "--out", str(store), "--scheduler", "sync"]
        assert cli.main(argv) == 0
        (damaged_root / "dicoms" / "SYN0001" / "3.dcm").write_bytes(b"broken")
        assert cli.main([*argv, "--mode", "update"]) == 0
        text = (tmp_path / "ds.dropped.csv").read_text()
        assert text.startswith("patient_id,original_id,instance,path,reason\n")
        assert "3.dcm" in text

    def test_it_is_never_written_into_the_dataset(self, damaged_root, tmp_path, capsys):
        before = snapshot(damaged_root)
        for where in ("dropped.csv", "dicoms/SYN0001/dropped.csv"):
            argv = ["build", str(damaged_root), "--out", str(tmp_path / "ds.zarr"),
                    "--dropped", str(damaged_root / where), "--scheduler", "sync"]  # fmt: skip
            assert cli.main(argv) == 2
            assert "lies inside the dataset" in capsys.readouterr().err
        assert snapshot(damaged_root) == before
        assert not (tmp_path / "ds.zarr").exists()

    def test_a_store_given_as_the_current_folder(self, synth_root, tmp_path, monkeypatch):
        store = tmp_path / "here.zarr"
        store.mkdir()
        monkeypatch.chdir(store)
        assert cli.main(["build", str(synth_root), "--out", ".", "--scheduler", "sync"]) == 0
        assert (tmp_path / "here.dropped.csv").is_file()
        assert daskmri.check(store).fresh

    def test_a_folder_in_its_place_is_refused(self, synth_root, tmp_path):
        (tmp_path / "ds.dropped.csv").mkdir()
        argv = ["build", str(synth_root), "--out", str(tmp_path / "ds.zarr"), "--scheduler", "sync"]
        assert cli.main(argv) == 2
        assert not (tmp_path / "ds.zarr").exists()


class TestOtherWrites:
    def test_synth_never_writes_into_a_folder_that_is_not_empty(self, thesis, capsys):
        before = snapshot(thesis)
        with pytest.raises(daskmri.DaskmriError, match="not an empty folder"):
            synth.make_dataset(thesis, patients=1, slices=2, shape=(16, 16))
        assert cli.main(["synth", str(thesis), "--patients", "1", "--slices", "2"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
        assert snapshot(thesis) == before

    def test_the_demo_never_overwrites_a_picture_it_did_not_write(
        self, synth_root, tmp_path, capsys
    ):
        picture = tmp_path / "holiday.png"
        picture.write_bytes(b"\x89PNG\r\n\x1a\n someone else's picture")
        before = snapshot(tmp_path)
        argv = ["demo", str(synth_root), "--out", str(picture), "--scheduler", "sync"]
        assert cli.main(argv) == 2
        assert "holiday.png already exists" in capsys.readouterr().err
        assert snapshot(tmp_path) == before
        # Its own picture it may replace.
        write_png(picture, __import__("numpy").zeros((2, 2, 3), "uint8"))
        assert cli.main(argv) == 0
        assert picture.stat().st_size > 100


def test_the_session_temp_folder_is_in_use():
    """The leftover check (conftest.py) only sees leftovers if the suite writes its
    temporary files where it looks."""
    import tempfile

    assert Path(tempfile.gettempdir()).name.startswith("daskmri-tests-")
    assert os.environ["TMPDIR"] == tempfile.gettempdir()
    assert shutil.disk_usage(tempfile.gettempdir()).free > 0
