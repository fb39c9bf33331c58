"""NIfTI volume datasets (ACDC, M&Ms, MSD Task02 layouts) through the whole pipeline:
load_dataset, build/open_dataset/check/update, BatchIterator ranks, split, fit= and
spacing= with to_source, the schedulers and a cluster, the CLI, s3:// roots, and bad
input. Every comparison is with the eager reference of tests/volume_files.py (each
file read by nibabel), never with daskmri's own output."""

from __future__ import annotations

import shutil

import nibabel
import numpy as np
import pandas as pd
import pytest

import daskmri
from daskmri import BatchIterator
from daskmri.cli import main

from . import volume_files as vf
from .test_cli_and_synth import read_png

LAYOUTS = {
    "acdc": (daskmri.ACDC, vf.make_acdc, vf.acdc_reference),
    "msd-heart": (daskmri.MSD_HEART, vf.make_msd, vf.msd_reference),
    "mnms": (daskmri.MNMS, vf.make_mnms, vf.mnms_reference),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Read-only tiny datasets of each layout, and their references."""
    out = {}
    for name, (_, make, reference) in LAYOUTS.items():
        root = make(tmp_path_factory.mktemp(name) / "data")
        out[name] = (root, reference(root))
    return out


def key_of(ds, k: int) -> tuple[str, int, int]:
    return str(ds.patient_id.values[k]), int(ds.frame.values[k]), int(ds.slice.values[k])


def assert_matches(ds, expected: dict) -> None:
    """``ds`` holds exactly the ``expected`` records (any order), pixel for pixel,
    with their masks, flags, coordinates and source spacing."""
    ds = ds.compute()
    keys = [key_of(ds, k) for k in range(ds.sizes["record"])]
    assert sorted(keys) == sorted(expected), "records differ from the reference"
    for k, key in enumerate(keys):
        want = expected[key]
        np.testing.assert_array_equal(ds.image.values[k], want["image"], err_msg=str(key))
        assert ds.image.dtype == np.float32
        for kind, mask in want["masks"].items():
            assert bool(ds[f"has_{kind}"].values[k]) == (mask is not None), (key, kind)
            mask = np.zeros_like(want["image"], bool) if mask is None else mask
            np.testing.assert_array_equal(ds[kind].values[k], mask, err_msg=f"{key} {kind}")
        assert ds.phase.values[k] == want["phase"], key
        assert int(ds.instance.values[k]) == want["instance"], key
        assert ds.original_id.values[k] == want["original_id"], key
        spacing = (ds.source_row_spacing.values[k], ds.source_column_spacing.values[k])
        np.testing.assert_allclose(spacing, want["spacing"], rtol=1e-12, err_msg=str(key))


@pytest.mark.parametrize("name", ["acdc", "msd-heart", "mnms"])
def test_load_dataset_equals_the_nibabel_reference(roots, name):
    root, expected = roots[name]
    ds = daskmri.load_dataset(root, layout=LAYOUTS[name][0], chunk_size=7, scheduler="sync")
    assert_matches(ds, expected)
    assert daskmri.dropped(ds).empty
    assert set(ds.data_vars) >= {"image", *(k for k in LAYOUTS[name][0].kinds)}


def test_labels_all_adds_every_frame_unlabelled(roots):
    """M&Ms with labels="all": the 4D cine's every frame (the unlabelled patient's too),
    unlabelled frames with has_<kind> False and empty masks."""
    root, expected = roots["mnms"]
    ds = daskmri.load_dataset(root, layout=daskmri.MNMS, labels="all", scheduler="sync")
    ds = ds.compute()
    everything = {}
    for code, where, ed, es in vf.MNMS_PATIENTS:
        image = root / where / code / f"{code}_sa.nii.gz"
        for frame in range(vf.FRAMES):
            planes = vf.expected_record(image, None, frame, vf.MNMS_KINDS, "", frame)
            vf._add(everything, code, f"{where}/{code}", frame, planes)
    phases = {(c, f): p for c, _, ed, es in vf.MNMS_PATIENTS for f, p in ((ed, "ED"), (es, "ES"))}
    for key, record in everything.items():
        record.update(expected.get(key, {}))  # labelled frames: their masks
        record["phase"] = phases.get(key[:2], "")
    assert_matches(ds, everything)
    assert int(ds.has_lv.sum()) == len(expected) < ds.sizes["record"] == 3 * 6 * 5


@pytest.mark.parametrize("name", ["acdc", "msd-heart"])
def test_build_open_dataset_and_check(roots, name, tmp_path):
    root, expected = roots[name]
    layout = LAYOUTS[name][0]
    store = tmp_path / "ds.zarr"
    report = daskmri.build(root, store, layout=layout, chunk_size=4, scheduler="sync")
    assert (report.records, report.dropped) == (len(expected), 0)
    opened = daskmri.open_dataset(store)
    assert_matches(opened, expected)
    loaded = daskmri.load_dataset(root, layout=layout, chunk_size=4, scheduler="sync")
    for coord in ("patient_id", "original_id", "frame", "slice", "phase", "instance"):
        np.testing.assert_array_equal(opened[coord].values, loaded[coord].values, err_msg=coord)
    assert daskmri.check(store).fresh


def test_update_reparses_only_the_rewritten_volume(roots, tmp_path):
    root = tmp_path / "acdc"
    shutil.copytree(roots["acdc"][0], root)
    store = tmp_path / "ds.zarr"
    daskmri.build(root, store, layout=daskmri.ACDC, chunk_size=3, scheduler="sync")
    target = root / "patient001" / "patient001_frame04.nii.gz"
    new = np.random.default_rng(9).integers(600, 900, vf.SHAPE)
    vf.rewrite(target, new, like=target)
    freshness = daskmri.check(store)
    assert not freshness.fresh
    assert sorted(freshness.changed) == [("patient001", 3 * 5 + s) for s in range(5)]
    assert not freshness.added and not freshness.removed
    with pytest.raises(daskmri.StaleStoreError):
        daskmri.build(root, store, layout=daskmri.ACDC, chunk_size=3, scheduler="sync")
    report = daskmri.build(
        root, store, layout=daskmri.ACDC, chunk_size=3, scheduler="sync", mode="update"
    )
    assert report.parsed_records == 5 and report.dropped == 0
    assert_matches(daskmri.open_dataset(store), vf.acdc_reference(root))
    assert daskmri.check(store).fresh


@pytest.fixture(scope="module")
def acdc4(tmp_path_factory):
    """Four ACDC patients, loaded in memory, with the reference."""
    root = vf.make_acdc(tmp_path_factory.mktemp("acdc4") / "data", patients=4, seed=4)
    ds = daskmri.load_dataset(root, layout=daskmri.ACDC, chunk_size=6, scheduler="sync")
    return root, ds.compute(), vf.acdc_reference(root)


def test_batch_iterator_ranks_serve_every_record_once(acdc4):
    _, ds, expected = acdc4
    by_instance = {(p, v["instance"]): v for (p, _, _), v in expected.items()}
    served = []
    for rank in range(2):
        with BatchIterator(ds, batch_size=4, rank=rank, world_size=2, seed=0) as it:
            for batch in it:
                for j, pad in enumerate(batch["padding"].tolist()):
                    key = (str(batch["patient_id"][j]), int(batch["instance"][j]))
                    want = by_instance[key]
                    np.testing.assert_array_equal(batch["image"][j], want["image"])
                    np.testing.assert_array_equal(batch["lv"][j], want["masks"]["lv"])
                    if not pad:
                        served.append(key)
    assert sorted(served) == sorted(by_instance)


def test_split_keeps_patients_whole(acdc4):
    _, ds, expected = acdc4
    parts = daskmri.split(ds, (0.5, 0.5), by="patient_id", seed=0)
    patients = [set(part.patient_id.values.tolist()) for part in parts]
    assert patients[0].isdisjoint(patients[1]) and patients[0] | patients[1] == {
        p for p, _, _ in expected
    }
    for part, mine in zip(parts, patients, strict=True):
        assert part.sizes["record"] == sum(1 for p, _, _ in expected if p in mine)
        assert part.sizes["record"] == 20  # four patients of 10 records, two each
