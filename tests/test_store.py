"""The Zarr store: round trip, resume after SIGKILL, freshness and update."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import daskmri
from daskmri import StaleStoreError, StaleStoreWarning, StoreError, cli
from daskmri.plan import plan_chunks
from daskmri.schema import COMPACT
from daskmri.store import OK, RETIRED, StoreSpec, read_state, write_partition
from daskmri.store.reading import Blocks
from daskmri.testing import assert_records_equal, eager_load, raise_if_dask_computes

from .conftest import SHAPE
from .readers import LoggingReader, parsed

REPO = Path(__file__).resolve().parents[1]


def assert_same_dataset(actual: xr.Dataset, expected: xr.Dataset) -> None:
    """Same records in the same order, same pixels, same chunks, same drops."""
    assert actual.image.chunks == expected.image.chunks
    assert_records_equal(actual, expected)
    pd_actual, pd_expected = daskmri.dropped(actual), daskmri.dropped(expected)
    key = ["patient_id", "instance", "path"]
    assert (
        pd_actual.sort_values(key).values.tolist() == pd_expected.sort_values(key).values.tolist()
    )


class TestRoundTrip:
    @pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
    def test_equals_load_dataset_and_eager_loop(self, damaged_root, tmp_path, scheduler):
        (damaged_root / "dicoms" / "SYN0001" / "4.dcm").write_bytes(b"broken")
        store = tmp_path / "ds.zarr"
        report = daskmri.build(damaged_root, store, chunk_size=3, scheduler=scheduler)
        ds = daskmri.open_dataset(store)
        expected = daskmri.load_dataset(damaged_root, chunk_size=3, scheduler="sync")
        assert_same_dataset(ds, expected)
        assert_records_equal(ds, eager_load(damaged_root))
        assert report.records == ds.sizes["record"] == expected.sizes["record"]
        assert report.dropped == 1 and report.parsed_chunks == len(ds.image.chunks[0])
        lost = daskmri.dropped(ds)
        assert lost.instance.tolist() == [4] and "DICM" in lost.reason.iloc[0]

    def test_distributed_workers_write_the_store(self, synth_root, tmp_path, client):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=5, client=client)
        ds = daskmri.open_dataset(store)
        assert_same_dataset(ds, daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync"))

    def test_real_sample(self, real_root, tmp_path):
        store = tmp_path / "real.zarr"
        daskmri.build(real_root, store, chunk_size=32)
        ds = daskmri.open_dataset(store)
        assert_same_dataset(ds, daskmri.load_dataset(real_root, chunk_size=32, scheduler="sync"))
        assert ds.sizes["record"] == 56

    def test_open_is_lazy_and_chunks_align_with_the_store(self, damaged_root, tmp_path):
        for instance in (2, 3):  # two of the first chunk's three records
            (damaged_root / "dicoms" / "SYN0001" / f"{instance}.dcm").write_bytes(b"")
        store = tmp_path / "ds.zarr"
        daskmri.build(damaged_root, store, chunk_size=3, scheduler="sync")
        with raise_if_dask_computes():
            ds = daskmri.open_dataset(store)
        on_disk = zarr.open_array(str(store / "pixels"), mode="r")
        assert on_disk.chunks == (3, *on_disk.shape[1:])
        # One dask chunk per store chunk: the first lost the two broken records.
        assert ds.image.chunks[0][0] == 1
        assert sum(ds.image.chunks[0]) == on_disk.shape[0] - 2
        assert len(ds.image.chunks[0]) == -(-on_disk.shape[0] // 3)
        assert ds.attrs["created_by"].startswith("daskmri ")
        for key in ("source", "layout", "input_fingerprint", "created", "chunk_size"):
            assert ds.attrs[key]

    def test_store_attributes_say_what_built_it(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, scheduler="sync")
        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        assert attrs["created_by"] == f"daskmri {daskmri.__version__}"
        assert attrs["source"] == str(synth_root.resolve())
        assert json.loads(attrs["layout"])["name"] == "sunnybrook"
        assert len(attrs["input_fingerprint"]) == 32 and attrs["complete"] is True

    def test_file_url(self, synth_root, tmp_path):
        url = "file://" + str(tmp_path / "url.zarr")
        daskmri.build(synth_root, url, chunk_size=4, scheduler="processes")
        assert_same_dataset(
            daskmri.open_dataset(url),
            daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync"),
        )

    def test_fsspec_url(self, synth_root):
        # fsspec's in-memory filesystem lives in this process: threads can share it.
        url = "memory://daskmri-test/ds.zarr"
        try:
            daskmri.build(synth_root, url, chunk_size=4, scheduler="threads")
            assert_same_dataset(
                daskmri.open_dataset(url),
                daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync"),
            )
            assert daskmri.check(url, synth_root).fresh
        finally:
            daskmri.store.remove(StoreSpec.of(url))

    def test_empty_dataset(self, damaged_root, tmp_path):
        for path in (damaged_root / "contourfiles").glob("*/o-contours/*.txt"):
            path.unlink()
        store = tmp_path / "ds.zarr"
        daskmri.build(damaged_root, store, labels="o", scheduler="sync")
        assert daskmri.open_dataset(store).sizes["record"] == 0

    def test_one_task_per_chunk(self, synth_root, tmp_path):
        from dask.callbacks import Callback

        keys = []
        with Callback(pretask=lambda key, dsk, state: keys.append(key)):
            report = daskmri.build(synth_root, tmp_path / "ds.zarr", chunk_size=3, scheduler="sync")
        assert report.parsed_chunks == 6
        assert len(keys) == len(set(keys)) == 6  # one task per chunk, each run once

    def test_many_waves(self, damaged_root, tmp_path, monkeypatch):
        """A build runs its chunks in waves; small waves must give the same store, and an
        update that appends across several waves too."""
        monkeypatch.setattr(daskmri.store.builder, "WAVE_CHUNKS", 1)  # waves of 4 x cores chunks
        store = tmp_path / "ds.zarr"
        report = daskmri.build(damaged_root, store, chunk_size=1, scheduler="threads")
        assert report.parsed_chunks == 16
        expected = daskmri.load_dataset(damaged_root, chunk_size=1, scheduler="sync")
        assert_same_dataset(daskmri.open_dataset(store), expected)
        for path in (damaged_root / "dicoms").glob("*/*.dcm"):
            os.utime(path, ns=(0, 10**18))  # every record changed
        report = daskmri.build(damaged_root, store, chunk_size=1, scheduler="sync", mode="update")
        assert report.parsed_records == 16 and report.retired == 16
        by_key = ["patient_id", "instance"]
        ds = daskmri.open_dataset(store)
        assert_records_equal(ds.sortby(by_key), expected.sortby(by_key))
        assert daskmri.check(store).fresh

    def test_a_retried_task_rewrites_the_same_region(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
        before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
        records = plan_chunks(daskmri.scan(synth_root), chunk_size=4).chunks[1]
        spec = StoreSpec.of(store)
        for _ in range(2):  # as a retry would
            write_partition(
                [(4 + k, r) for k, r in enumerate(records)],
                (48, 64),
                daskmri.read_record,
                spec,
                4,
                kinds=daskmri.SUNNYBROOK.kinds,
            )
        after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
        assert after == before

    def test_not_a_daskmri_store(self, synth_root, tmp_path):
        zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
        with pytest.raises(StoreError, match="not a daskmri store"):
            daskmri.open_dataset(tmp_path / "other.zarr")
        # Refused whatever the mode: daskmri never overwrites what it did not make.
        for mode in ("resume", "update", "overwrite"):
            with pytest.raises(StoreError, match="Zarr store that daskmri did not make"):
                daskmri.build(synth_root, tmp_path / "other.zarr", mode=mode, scheduler="sync")
        assert dict(zarr.open_group(str(tmp_path / "other.zarr"), mode="r").attrs) == {"x": 1}
        with pytest.raises(StoreError, match="no Zarr store"):
            daskmri.open_dataset(tmp_path / "missing.zarr")

    def test_settings_must_match_the_store(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
        with pytest.raises(daskmri.DaskmriError, match="chunk_size=4"):
            daskmri.build(synth_root, store, chunk_size=8, scheduler="sync")
        report = daskmri.build(synth_root, store, chunk_size=8, mode="overwrite", scheduler="sync")
        assert report.parsed_chunks == 2
        assert daskmri.open_dataset(store).image.chunks[0] == (8, 8)

    def test_bad_mode(self, synth_root, tmp_path):
        with pytest.raises(ValueError, match="mode must be one of"):
            daskmri.build(synth_root, tmp_path / "ds.zarr", mode="append")


class TestResume:
    def test_an_unfinished_store_is_never_taken_for_complete(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, scheduler="sync")
        zarr.open_group(str(store), mode="r+").attrs["complete"] = False
        with pytest.raises(StoreError, match="never finished"):
            daskmri.open_dataset(store)
        assert not daskmri.check(store).fresh

    def test_sigkill_then_rerun_parses_only_the_rest(self, synth_root, tmp_path):
        store, first_log, second_log = tmp_path / "ds.zarr", tmp_path / "1.log", tmp_path / "2.log"
        chunk_size, n_records = 2, 16
        script = (
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "import daskmri\n"
            "from tests.readers import LoggingReader\n"
            "daskmri.build(sys.argv[2], sys.argv[3], chunk_size=2, scheduler='sync',\n"
            "              reader=LoggingReader(sys.argv[4], delay=0.15))\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(REPO), str(synth_root), str(store), str(first_log)]
        )
        try:
            deadline = time.monotonic() + 120
            while len(parsed(first_log)) < 6:
                assert proc.poll() is None, "the build ended before it could be killed"
                assert time.monotonic() < deadline, "the build never got going"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        with pytest.raises(StoreError, match="never finished"):
            daskmri.open_dataset(store)
        done = int(read_state(StoreSpec.of(store)).done.sum())
        n_chunks = n_records // chunk_size
        assert 2 <= done < n_chunks

        report = daskmri.build(
            synth_root,
            store,
            chunk_size=chunk_size,
            scheduler="sync",
            reader=LoggingReader(second_log),
        )
        # Exactly the records of the chunks that had no marker, each once.
        again = parsed(second_log)
        assert len(again) == len(set(again)) == (n_chunks - done) * chunk_size
        assert report.parsed_chunks == n_chunks - done and report.reused_chunks == done
        assert not set(again) & set(parsed(first_log)[: done * chunk_size])

        clean = tmp_path / "clean.zarr"
        daskmri.build(synth_root, clean, chunk_size=chunk_size, scheduler="sync")
        assert_same_dataset(daskmri.open_dataset(store), daskmri.open_dataset(clean))
        # The store built with a custom reader (LoggingReader) holds float32 pixels (a
        # custom reader's records are float32): the same images, bit for bit, as the
        # clean store's integers widen to; everything else identical.
        xr.testing.assert_identical(
            daskmri.open_dataset(store).drop_attrs().drop_vars(COMPACT).compute(),
            daskmri.open_dataset(clean).drop_attrs().drop_vars(COMPACT).compute(),
        )

    def test_complete_and_fresh_store_is_not_parsed_again(self, synth_root, tmp_path):
        store, log = tmp_path / "ds.zarr", tmp_path / "log"
        daskmri.build(synth_root, store, scheduler="sync")
        report = daskmri.build(synth_root, store, scheduler="sync", reader=LoggingReader(log))
        assert parsed(log) == [] and report.parsed_chunks == 0


class TestFreshness:
    def test_touch_add_and_remove_are_detected_and_update_fixes_them(self, damaged_root, tmp_path):
        store, log = tmp_path / "ds.zarr", tmp_path / "log"
        daskmri.build(damaged_root, store, chunk_size=3, scheduler="sync")
        assert daskmri.check(store, damaged_root).fresh

        dicoms = damaged_root / "dicoms" / "SYN0001"
        os.utime(dicoms / "6.dcm", ns=(0, 10**18))  # touched
        shutil.copy(dicoms / "6.dcm", dicoms / "99.dcm")  # a new slice with a contour
        contours = next((damaged_root / "contourfiles").glob("*/i-contours"))
        shutil.copy(
            contours / "IM-0001-0006-icontour-manual.txt",
            contours / "IM-0001-0099-icontour-manual.txt",
        )
        (damaged_root / "dicoms" / "SYN0002" / "9.dcm").unlink()  # gone (its contour stays)

        freshness = daskmri.check(store, damaged_root)
        assert not freshness.fresh
        assert freshness.changed == (("SYN0001", 6),)
        assert freshness.added == (("SYN0001", 99),)
        assert freshness.removed == (("SYN0002", 9),)
        assert "mode='update'" in str(freshness)
        assert cli.main(["check", str(store), str(damaged_root)]) == 1
        with pytest.warns(StaleStoreWarning, match="changed"):
            daskmri.open_dataset(store, root=damaged_root)
        with pytest.raises(StaleStoreError, match="mode='update'"):
            daskmri.build(damaged_root, store, chunk_size=3, scheduler="sync")

        report = daskmri.build(
            damaged_root,
            store,
            chunk_size=3,
            scheduler="sync",
            mode="update",
            reader=LoggingReader(log),
        )
        # Only the touched and the new record were parsed.
        assert sorted(parsed(log)) == ["SYN0001/6", "SYN0001/99"]
        assert report.retired == 2  # the old SYN0001/6 and the removed SYN0002/9
        assert daskmri.check(store, damaged_root).fresh
        assert cli.main(["check", str(store), str(damaged_root)]) == 0

        # The same records as a fresh build; the re-parsed ones now sit at the end.
        ds = daskmri.open_dataset(store)
        assert ds.patient_id.values[-2:].tolist() == ["SYN0001", "SYN0001"]
        assert ds.instance.values[-2:].tolist() == [6, 99]
        fresh = daskmri.load_dataset(damaged_root, chunk_size=3, scheduler="sync")
        by_key = ["patient_id", "instance"]
        assert_records_equal(ds.sortby(by_key), fresh.sortby(by_key))
        lost = daskmri.dropped(ds)
        assert lost.values.tolist() == daskmri.dropped(fresh).values.tolist()
        assert lost.instance.tolist() == [9]  # the orphaned contour, found by the scan

        # The old slots are kept, retired, never shown.
        state = read_state(StoreSpec.of(store))
        assert (state.status == RETIRED).sum() >= 2 and (state.status == OK).sum() == len(ds.record)

    def test_update_that_changes_nothing_parses_nothing(self, synth_root, tmp_path):
        store, log = tmp_path / "ds.zarr", tmp_path / "log"
        daskmri.build(synth_root, store, scheduler="sync")
        report = daskmri.build(
            synth_root, store, scheduler="sync", mode="update", reader=LoggingReader(log)
        )
        assert report.parsed_chunks == 0 and parsed(log) == []

    def test_a_changed_link_file_is_stale(self, damaged_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(damaged_root, store, scheduler="sync")
        link = damaged_root / "link.csv"
        link.write_text(link.read_text() + "\n")
        freshness = daskmri.check(store)
        assert freshness.other and not freshness.fresh
        daskmri.build(damaged_root, store, scheduler="sync", mode="update")
        assert daskmri.check(store).fresh


class TestCli:
    def test_build_on_a_cluster_by_address(self, synth_root, tmp_path, local_cluster, capsys):
        from distributed import default_client

        store = tmp_path / "out.zarr"
        argv = ["build", str(synth_root), "--out", str(store), "--chunk-size", "5"]
        assert cli.main([*argv, "--scheduler", local_cluster.scheduler_address]) == 0
        captured = capsys.readouterr()
        assert "records:     16" in captured.out
        assert "4/4 chunks" in captured.err  # the progress bar
        assert_same_dataset(
            daskmri.open_dataset(store),
            daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync"),
        )
        # The client made for the address was closed: nothing is left of the build.
        with pytest.raises(ValueError, match="No clients found"):
            default_client()

    def test_build_prints_a_summary_and_writes_dropped_csv(self, damaged_root, tmp_path, capsys):
        (damaged_root / "dicoms" / "SYN0002" / "3.dcm").write_bytes(b"\0" * 200)
        store = tmp_path / "out.zarr"
        argv = ["build", str(damaged_root), "--out", str(store), "--scheduler", "sync"]
        assert cli.main([*argv, "--chunk-size", "5"]) == 0
        out = capsys.readouterr().out
        csv = tmp_path / "out.dropped.csv"
        assert f"(listed in {csv})" in out and "records:     15" in out
        import pandas as pd

        table = pd.read_csv(csv)
        assert table.instance.tolist() == [3] and table.patient_id.tolist() == ["SYN0002"]
        assert cli.main([*argv, "--chunk-size", "5"]) == 0
        assert "0 records in 0 chunks (4 chunks already complete" in capsys.readouterr().out
        assert cli.main(["check", str(store)]) == 0
        assert "up to date" in capsys.readouterr().out


class TestReviewFindings:
    """Cases a review found broken; each fails without its fix."""

    def test_a_store_built_empty_takes_its_size_from_the_first_records(
        self, damaged_root, tmp_path
    ):
        contours = damaged_root / "contourfiles"
        contours.rename(tmp_path / "aside")
        store = tmp_path / "ds.zarr"
        assert daskmri.build(damaged_root, store, scheduler="sync").records == 0
        (tmp_path / "aside").rename(contours)
        report = daskmri.build(damaged_root, store, scheduler="sync", mode="update")
        assert report.records == 16 and report.dropped == 0
        assert daskmri.open_dataset(store).image.shape == (16, *SHAPE)

    def test_a_new_pairing_in_the_link_file_is_stale_and_updated(self, damaged_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(damaged_root, store, labels="all", scheduler="sync")
        (damaged_root / "contourfiles" / "SYN-C-1").rename(
            damaged_root / "contourfiles" / "NEW-C-1"
        )
        link = damaged_root / "link.csv"
        link.write_text(link.read_text().replace("SYN-C-1", "NEW-C-1"))
        assert not daskmri.check(store).fresh
        daskmri.build(damaged_root, store, labels="all", scheduler="sync", mode="update")
        ds = daskmri.open_dataset(store)
        ids = set(ds.original_id.values[ds.patient_id.values == "SYN0001"].tolist())
        assert ids == {"NEW-C-1"}
        assert daskmri.check(store).fresh

    def test_a_rebuilt_store_does_not_reuse_data_held_under_old_names(self, tmp_path):
        store = tmp_path / "ds.zarr"
        first = daskmri.synth.make_dataset(tmp_path / "a", patients=1, slices=6, shape=(16, 16))
        second = daskmri.synth.make_dataset(
            tmp_path / "b", patients=1, slices=6, shape=(16, 16), seed=99
        )
        daskmri.build(first, store, scheduler="sync")
        before = daskmri.open_dataset(store)
        daskmri.build(second, store, scheduler="sync", mode="overwrite")
        after = daskmri.open_dataset(store)
        assert before.image.data.name != after.image.data.name

    def test_a_kill_while_growing_the_arrays_is_repaired(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
        group = zarr.open_group(str(store), mode="r+")
        group.attrs["complete"] = False
        for name in ("pixels", "status", "has_icontour"):  # as a kill mid-resize leaves it
            group[name].resize((20, *group[name].shape[1:]))
        report = daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
        assert report.records == 16
        assert_same_dataset(
            daskmri.open_dataset(store),
            daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync"),
        )

    def test_a_store_of_another_format_is_not_deleted(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, scheduler="sync")
        zarr.open_group(str(store), mode="r+").attrs["format"] = 1
        with pytest.raises(StoreError, match="another version of daskmri"):
            daskmri.build(synth_root, store, scheduler="sync", mode="update")
        assert (store / "pixels").is_dir()
        with pytest.raises(StoreError, match="mode='overwrite'"):
            daskmri.open_dataset(store)

    def test_a_build_killed_while_creating_the_store_starts_again(self, synth_root, tmp_path):
        store = tmp_path / "ds.zarr"
        group = zarr.open_group(str(store), mode="w", zarr_format=3)
        # What create() has written when a kill comes right after its first step.
        group.attrs.update(
            {"format": daskmri.store.FORMAT, "chunk_size": 64, "planned": False, "complete": False,
             "created_by": "daskmri 0.1.0"}
        )  # fmt: skip
        report = daskmri.build(synth_root, store, scheduler="sync")
        assert report.records == 16 and daskmri.check(store).fresh


class TestChunkReads:
    """open_dataset reads each store chunk whole through :class:`Blocks` (the object's
    bytes, decoded here), not zarr's read path: the same values as zarr reads, for
    every compressor, and a damaged object fails by name."""

    @pytest.fixture
    def built(self, damaged_root, tmp_path):
        # Drops in two chunks (one of them whole), and a short last chunk.
        for instance in (4, 6, 7):
            (damaged_root / "dicoms" / "SYN0001" / f"{instance}.dcm").write_bytes(b"broken")

        def build(compressor: str = "blosc-lz4") -> Path:
            store = tmp_path / f"{compressor}.zarr"
            daskmri.build(
                damaged_root, store, chunk_size=3, scheduler="sync", compressor=compressor
            )
            return store

        return build

    @staticmethod
    def zarr_reads(store: Path) -> dict:
        """Each pixel array of the store's records, read by zarr itself."""
        ok = zarr.open_group(str(store), mode="r")["status"][:] == OK
        group = zarr.open_group(str(store), mode="r")
        return {name: group[name][:][ok] for name in ("pixels", "slope", "intercept", "labels")}

    @staticmethod
    def records_per_chunk(store: Path) -> tuple[int, ...]:
        ok = zarr.open_group(str(store), mode="r")["status"][:] == OK
        counts = [int(ok[s : s + 3].sum()) for s in range(0, len(ok), 3)]
        return tuple(c for c in counts if c)

    @pytest.mark.parametrize(
        ("compressor", "codec"),
        [("blosc-lz4", "blosc"), ("blosc-zstd", "blosc"), ("zstd", "zstd"), ("none", "none")],
    )
    def test_every_compressor_reads_as_zarr_reads_it(self, built, damaged_root, compressor, codec):
        store = built(compressor)
        group = zarr.open_group(str(store), mode="r")
        assert Blocks.of(StoreSpec.of(store), group["pixels"]).codec == codec
        assert Blocks.of(StoreSpec.of(store), group["labels"]).codec == codec
        ds = daskmri.open_dataset(store)
        chunks = self.records_per_chunk(store)
        assert ds.image.chunks[0] == chunks and len(set(chunks)) > 1  # aligned with the store
        for name, expected in self.zarr_reads(store).items():
            np.testing.assert_array_equal(ds[name].values, expected)
            assert ds[name].dtype == expected.dtype
        assert_records_equal(ds, eager_load(damaged_root))

    def test_other_codecs_are_read_through_zarr(self, built):
        store = built()
        group = zarr.open_group(str(store), mode="r")
        blocks = Blocks.of(StoreSpec.of(store), group["pixels"])
        through_zarr = dataclasses.replace(blocks, codec=None)
        key = group["pixels"].metadata.encode_chunk_key((5, 0, 0))
        np.testing.assert_array_equal(through_zarr.read(key, 15, 1), blocks.read(key, 15, 1))
        np.testing.assert_array_equal(blocks.read(key, 15, 1), group["pixels"][15:16])

    def test_a_chunk_never_written_reads_as_zarr_fill(self, built):
        store = built()
        # A chunk never written (a store edited by hand) reads as zarr's fill value.
        os.remove(store / "labels" / "c" / "0" / "0" / "0")
        ds = daskmri.open_dataset(store)
        expected = self.zarr_reads(store)["labels"]
        first = self.records_per_chunk(store)[0]
        assert not expected[:first].any() and expected[first:].any()
        np.testing.assert_array_equal(ds.labels.values, expected)
        np.testing.assert_array_equal(ds.icontour.values, (expected & 1).astype(bool))

    def test_a_damaged_chunk_fails_by_name_with_the_fix(self, built):
        store = built()
        (store / "pixels" / "c" / "1" / "0" / "0").write_bytes(b"not blosc at all")
        ds = daskmri.open_dataset(store)
        first = ds.image[: self.records_per_chunk(store)[0]].values  # other chunks still read
        assert first.shape[0] == self.records_per_chunk(store)[0]
        with pytest.raises(StoreError, match=r"chunk 'c/1/0/0' of 'pixels'.*mode='overwrite'"):
            ds.image.load()


class TestXarrayBackend:
    """``xr.open_dataset(store, engine="daskmri")``, the xarray convention."""

    @pytest.fixture
    def store(self, damaged_root, tmp_path) -> Path:
        # Drops in two chunks, one of them whole, so the chunks are uneven.
        for instance in (4, 6, 7):
            (damaged_root / "dicoms" / "SYN0001" / f"{instance}.dcm").write_bytes(b"broken")
        store = tmp_path / "ds.zarr"
        daskmri.build(damaged_root, store, chunk_size=3, scheduler="sync")
        return store

    def test_chunked_it_is_daskmri_open_dataset(self, store):
        ds = xr.open_dataset(store, engine="daskmri", chunks={})
        expected = daskmri.open_dataset(store)
        assert ds.identical(expected)
        assert ds.image.chunks == expected.image.chunks
        assert_same_dataset(ds, expected)

    def test_lazy_by_default_and_a_selection_reads_the_right_records(self, store):
        ds = xr.open_dataset(store, engine="daskmri")
        expected = daskmri.open_dataset(store)
        assert ds.image.chunks is None  # lazily indexed, as xarray's own backends
        assert ds.identical(expected)
        for selection in ({"record": 4}, {"record": [7, 0, 2]}, {"record": slice(1, 9, 3)}):
            picked = {**selection, "y": slice(5, 20), "x": [3, 1, 40]}
            for name in ("image", "icontour", "ocontour"):
                assert ds[name].isel(picked).equals(expected[name].isel(picked).compute())

    def test_drop_variables_and_guessing(self, store, tmp_path):
        from daskmri.store.backend import DaskmriBackendEntrypoint

        ds = xr.open_dataset(store, engine="daskmri", drop_variables=["ocontour"])
        assert "ocontour" not in ds and "image" in ds
        entry = DaskmriBackendEntrypoint()
        assert entry.guess_can_open(store)
        other = tmp_path / "other.zarr"
        zarr.open_group(str(other), mode="w")
        assert not entry.guess_can_open(other) and not entry.guess_can_open(tmp_path / "none")
        assert "daskmri" in xr.backends.list_engines()
        # Without engine=, xarray recognises a daskmri store as one.
        assert xr.open_dataset(store, chunks={}).identical(daskmri.open_dataset(store))

    def test_an_unfinished_store_is_refused_as_by_open_dataset(self, store):
        zarr.open_group(str(store), mode="r+").attrs["complete"] = False
        with pytest.raises(StoreError, match="never finished"):
            xr.open_dataset(store, engine="daskmri")


@pytest.mark.parametrize(("keep", "second_scans"), [(20_000, 0), (3, 1)])
def test_a_small_folder_is_scanned_once_a_large_one_streamed_again(
    synth_root, tmp_path, monkeypatch, keep, second_scans
):
    import daskmri.store.builder as builder

    scans = []
    original = builder.iter_plan
    monkeypatch.setattr(builder, "KEEP_RECORDS", keep)
    monkeypatch.setattr(builder, "iter_plan", lambda *a, **k: scans.append(1) or original(*a, **k))
    store = tmp_path / "ds.zarr"
    daskmri.build(synth_root, store, chunk_size=5, scheduler="sync")
    assert len(scans) == second_scans
    assert_same_dataset(
        daskmri.open_dataset(store),
        daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync"),
    )


def test_a_store_with_other_table_chunks_is_updated_and_read_as_built(
    damaged_root, tmp_path, monkeypatch
):
    """A store whose per-slot tables have other chunks than this version makes (stores
    made before their chunk shrank to 16,384 slots): update and resume use its own, the
    records read back equal the eager reference."""
    from daskmri.store import format as fmt
    from daskmri.store import state
    from daskmri.testing import assert_records_equal, eager_load

    store = tmp_path / "ds.zarr"
    for module in (fmt, state):
        monkeypatch.setattr(module, "TABLE_CHUNK", 32)
    daskmri.build(damaged_root, store, chunk_size=4, scheduler="sync")
    assert zarr.open_group(str(store))["key"].chunks == (32,)
    for module in (fmt, state):
        monkeypatch.setattr(module, "TABLE_CHUNK", 8)
    shutil.rmtree(damaged_root / "dicoms" / "SYN0002")  # records retired by the update
    report = daskmri.build(damaged_root, store, chunk_size=4, scheduler="sync", mode="update")
    assert report.records > 0
    assert zarr.open_group(str(store))["key"].chunks == (32,)
    ds = daskmri.open_dataset(store)
    assert_records_equal(ds, eager_load(damaged_root))
    assert daskmri.build(damaged_root, store, chunk_size=4, scheduler="sync").parsed_chunks == 0
