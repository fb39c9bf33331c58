"""The shared settings of load_dataset, build and check: each checked once, before
any folder is scanned, any store path touched or any cluster contacted."""

from __future__ import annotations

import os

import numpy as np
import pytest

import daskmri
from daskmri import Layout, Limits
from daskmri.parse import DefaultReader
from daskmri.settings import Compute, Parsing, Source


class TestSource:
    def test_the_root_is_absolute_and_the_layout_sunnybrook_by_default(self):
        source = Source.of("some/where")
        assert source.root == os.path.abspath("some/where")
        assert source.layout == daskmri.SUNNYBROOK and source.labels == "any"

    def test_bad_labels_and_layouts(self):
        with pytest.raises(ValueError, match="labels must be one of"):
            Source.of("x", labels="everything")
        with pytest.raises(TypeError, match=r"layout must be a daskmri\.Layout"):
            Source.of("x", layout={"link_file": "link.csv"})


class TestParsing:
    @pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "4", None])
    def test_chunk_size_must_be_a_positive_int(self, chunk_size):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            Parsing(chunk_size=chunk_size)

    def test_shape_becomes_python_ints_and_limits_default(self):
        parsing = Parsing(shape=(np.int64(48), np.int32(64)), limits=None)
        assert parsing.shape == (48, 64) and type(parsing.shape[0]) is int
        assert parsing.limits == Limits()

    def test_the_default_reader_is_bound_to_the_limits_and_the_shape(self):
        limits = Limits(max_pixels=1000)
        reader = Parsing(limits=limits).reader_for((10, 20))
        assert reader == DefaultReader(limits=limits, shape=(10, 20), fit="drop", spacing=None)
        fitted = Parsing(fit="pad_or_crop", spacing=0.5).reader_for((10, 20))
        assert fitted.fit == "pad_or_crop" and fitted.spacing == (0.5, 0.5)

        def mine(record):
            return record

        assert Parsing(reader=mine).reader_for((10, 20)) is mine


class TestCompute:
    def test_bad_schedulers(self):
        with pytest.raises(ValueError, match="scheduler must be one of"):
            Compute(scheduler="tcp://127.0.0.1:8786")
        with pytest.raises(ValueError, match=r"either client= .* or scheduler="):
            Compute(client="tcp://127.0.0.1:8786", scheduler="sync")

    @pytest.mark.parametrize(
        ("scheduler", "n_tasks", "chosen"),
        [(None, 1, "sync"), (None, 0, "sync"), (None, 2, "processes"), ("threads", 9, "threads")],
    )
    def test_the_local_scheduler(self, scheduler, n_tasks, chosen):
        assert Compute(scheduler=scheduler).local_scheduler(n_tasks) == chosen


@pytest.mark.parametrize(
    "bad",
    [
        {"chunk_size": 0},
        {"labels": "x"},
        {"scheduler": "gpu"},
        {"layout": "sunnybrook"},
        {"client": "tcp://127.0.0.1:9", "scheduler": "sync"},
    ],
)
def test_every_entry_point_checks_its_settings_before_touching_anything(bad, tmp_path):
    """A folder that does not exist and a store path that would be created: a bad
    setting must fail as itself, before the scan (no LayoutError), the store (not
    created) or the cluster (nothing listens at that address)."""
    missing = tmp_path / "no-such-folder"
    store = tmp_path / "out.zarr"
    for call in (
        lambda: daskmri.load_dataset(missing, **bad),
        lambda: daskmri.build(missing, store, **bad),
    ):
        with pytest.raises((ValueError, TypeError)):
            call()
    assert not store.exists()


def test_check_uses_the_layout_the_store_was_built_with(synth_root, tmp_path):
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    os.symlink(synth_root / "dicoms", renamed / "dicoms")
    os.symlink(synth_root / "contourfiles", renamed / "contourfiles")
    (renamed / "links.csv").write_bytes((synth_root / "link.csv").read_bytes())
    layout = Layout(link_file="links.csv")
    store = tmp_path / "ds.zarr"
    daskmri.build(renamed, store, layout=layout, scheduler="sync")
    assert daskmri.check(store).fresh
