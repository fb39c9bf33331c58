"""daskmri.qc: the flags of issue 27, on clean synthetic data and with one planted
fault per flag, against a per-record numpy reference, and lazy until asked."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import xarray as xr

import daskmri
from daskmri import qc
from daskmri.testing import raise_if_dask_computes

FLAG_PREFIXES = ("empty_", "border_", "outlier_")


def bfs_fill_holes(mask: np.ndarray) -> np.ndarray:
    """The reference: a breadth-first flood of the background from the border."""
    rows, cols = mask.shape
    outside = np.zeros(mask.shape, bool)
    queue = deque(
        (r, c)
        for r in range(rows)
        for c in range(cols)
        if (r in (0, rows - 1) or c in (0, cols - 1)) and not mask[r, c]
    )
    for r, c in queue:
        outside[r, c] = True
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < rows and 0 <= nc < cols and not mask[nr, nc] and not outside[nr, nc]:
                outside[nr, nc] = True
                queue.append((nr, nc))
    return ~outside


@pytest.mark.parametrize("seed", range(60))
def test_fill_holes_matches_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 14, size=2))
    mask = rng.random(shape) < rng.uniform(0.2, 0.8)
    if seed % 3 == 0:  # a mask along the whole border: every inner background is a hole
        mask[[0, -1], :] = mask[:, [0, -1]] = True
    np.testing.assert_array_equal(qc.fill_holes(mask), bfs_fill_holes(mask))


def test_fill_holes_fills_a_ring_and_a_spiral_but_not_an_open_c():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    assert qc.fill_holes(ring)[3:6, 3:6].all()
    open_c = ring.copy()
    open_c[4, 6] = False  # a gap to the outside: not a hole
    assert not qc.fill_holes(open_c)[4, 4]
    spiral = np.ones((15, 15), bool)
    spiral[1:-1, 1:-1] = False
    spiral[2:-2, 2] = spiral[-3, 2:-2] = spiral[2:-2, -3] = spiral[2, 4:-2] = True
    np.testing.assert_array_equal(qc.fill_holes(spiral), bfs_fill_holes(spiral))
    with pytest.raises(ValueError, match="2D"):
        qc.fill_holes(np.zeros((2, 2, 2)))


def test_record_flags_counts_a_leak_only_when_both_kinds_are_labelled():
    outer = np.zeros((8, 8), bool)
    outer[1:7, 1:7] = True
    outer[2:6, 2:6] = False
    inner = np.zeros((8, 8), bool)
    inner[3:5, 3:8] = True  # its last column, 2 pixels, is past the ring and on the border
    both = {"lv": True, "myo": True}
    row = qc.record_flags((8, 8), {"lv": inner, "myo": outer}, both, [("lv", "myo")])
    assert row["leak_lv"] == 2 and row["border_lv"] and row["flagged"]
    row = qc.record_flags((8, 8), {"lv": inner, "myo": None}, {"lv": True}, [("lv", "myo")])
    assert row["leak_lv"] == 0 and row["area_myo"] == 0 and not row["empty_myo"]
    row = qc.record_flags((8, 8), {"lv": inner * 0, "myo": outer}, both, [])
    assert row["empty_lv"] and row["flagged"]


# -- on datasets ------------------------------------------------------------------


def reference(ds) -> dict[str, np.ndarray]:
    """Each flag column computed eagerly, one record at a time, on ``ds.compute()``."""
    data = ds.compute()
    kinds = json.loads(ds.attrs["kinds"])
    contains = json.loads(ds.attrs["layout"]).get("contains", [])
    out = {}
    for kind in kinds:
        masks, has = data[kind].values, data[f"has_{kind}"].values
        out[f"area_{kind}"] = masks.sum(axis=(1, 2))
        out[f"empty_{kind}"] = has & (out[f"area_{kind}"] == 0)
        edges = masks[:, [0, -1], :].any(axis=(1, 2)) | masks[:, :, [0, -1]].any(axis=(1, 2))
        out[f"border_{kind}"] = edges
    for inner, outer in contains:
        both = data[f"has_{inner}"].values & data[f"has_{outer}"].values
        out[f"leak_{inner}"] = np.array(
            [
                int((i & ~bfs_fill_holes(o)).sum()) if b else 0
                for i, o, b in zip(data[inner].values, data[outer].values, both, strict=True)
            ]
        )
    return out


@pytest.fixture(scope="module")
def sunnybrook(tmp_path_factory):
    return daskmri.synth.make_dataset(
        tmp_path_factory.mktemp("qc") / "sb", patients=2, slices=12, shape=(64, 64)
    )


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    root = daskmri.synth.make_volume_dataset(tmp_path_factory.mktemp("qc") / "acdc", layout="acdc")
    return daskmri.load_dataset(root, layout=daskmri.ACDC, chunk_size=5, scheduler="sync")


def load(root):
    return daskmri.load_dataset(root, chunk_size=5, scheduler="sync")


def flagged_records(table, column) -> list[tuple]:
    hit = table[table[column] > 0] if column.startswith("leak_") else table[table[column]]
    return list(zip(hit["patient_id"], hit["instance"], strict=True))


def assert_matches_reference(ds, table):
    assert table["patient_id"].tolist() == ds.patient_id.values.tolist()
    assert table["instance"].tolist() == ds.instance.values.tolist()
    for column, expected in reference(ds).items():
        np.testing.assert_array_equal(table[column].to_numpy(), expected, err_msg=column)


def test_clean_sunnybrook_data_raises_no_flag_and_matches_the_reference(sunnybrook):
    ds = load(sunnybrook)
    table = qc.area_outliers(qc.flags(ds))
    assert_matches_reference(ds, table)
    assert not table["flagged"].any()
    assert (table["has_icontour"] & table["has_ocontour"]).any()  # the leak was checked


def test_clean_acdc_data_raises_no_flag_and_matches_the_reference(acdc):
    table = qc.area_outliers(qc.flags(acdc))
    assert_matches_reference(acdc, table)
    assert {"frame", "slice", "phase"} <= set(table.columns)
    assert not table["flagged"].any()


def test_an_icontour_outside_its_ocontour_is_flagged_on_that_record_only(sunnybrook, tmp_path):
    import shutil

    root = shutil.copytree(sunnybrook, tmp_path / "leak")
    path = root / "contourfiles/SYN-C-1/i-contours/IM-0001-0006-icontour-manual.txt"
    points = np.loadtxt(path)
    # Pushed sideways, past the o-contour.
    np.savetxt(path, points + np.array([12.0, 0.0]), fmt="%.6f")
    ds = load(root)
    table = qc.flags(ds)
    assert flagged_records(table, "leak_icontour") == [("SYN0001", 6)]
    assert_matches_reference(ds, table)


def test_a_contour_on_the_image_border_is_flagged_on_that_record_only(sunnybrook, tmp_path):
    import shutil

    root = shutil.copytree(sunnybrook, tmp_path / "border")
    path = root / "contourfiles/SYN-C-2/o-contours/IM-0001-0003-ocontour-manual.txt"
    np.savetxt(path, [[0.0, 0.0], [20.0, 0.0], [20.0, 20.0], [0.0, 20.0]], fmt="%.6f")
    table = qc.flags(load(root))
    assert flagged_records(table, "border_ocontour") == [("SYN0002", 3)]
    assert table["flagged"].sum() == 1


def test_an_empty_mask_on_a_labelled_record_is_flagged(acdc):
    ds = acdc.copy()
    ds["lv"] = ds.lv.where(ds.instance != 3, False)  # still lazy: a planted fault
    table = qc.flags(ds.sel(record=ds.patient_id == "patient001"))
    assert flagged_records(table, "empty_lv") == [("patient001", 3)]
    assert flagged_records(table, "border_lv") == []


def test_a_mask_on_the_border_of_a_volume_plane_is_flagged(acdc):
    ds = acdc.copy()
    planted = (ds.patient_id == "patient002") & (ds.instance == 1)
    edge = xr.DataArray(np.arange(ds.sizes["x"]) == 0, dims="x")
    ds["rv"] = ds.rv | (planted & edge)
    table = qc.flags(ds)
    assert flagged_records(table, "border_rv") == [("patient002", 1)]
    assert_matches_reference(ds, table)


def test_an_area_scaled_up_is_an_outlier_of_its_patient_only(acdc):
    ds = acdc.copy()
    index = int(np.flatnonzero(ds.has_myo.values)[2])
    patient, instance = ds.patient_id.values[index], int(ds.instance.values[index])
    big = np.zeros((ds.sizes["y"], ds.sizes["x"]), bool)
    big[8:-8, 8:-8] = True  # far bigger than any myocardium, off the border
    planted = ds.myo.copy()
    planted[index] = big
    ds["myo"] = planted
    table = qc.area_outliers(qc.flags(ds))
    assert flagged_records(table, "outlier_myo") == [(patient, instance)]
    assert table["outlier_lv"].sum() == table["outlier_rv"].sum() == 0
    assert table["flagged"].sum() == 1


def test_area_outliers_ignore_unlabelled_records_and_a_zero_mad():
    import pandas as pd

    table = pd.DataFrame(
        {
            "patient_id": ["a"] * 6 + ["b"] * 3,
            "has_lv": [True] * 5 + [False] + [True] * 3,
            "area_lv": [100, 100, 100, 100, 900, 0, 10, 10, 10],
            "flagged": False,
        }
    )
    out = qc.area_outliers(table)
    assert not out["outlier_lv"].any()  # a's MAD is 0; b's areas are all equal
    table.loc[:3, "area_lv"] = [100, 102, 98, 101]
    assert qc.area_outliers(table)["outlier_lv"].tolist() == [False] * 4 + [True] + [False] * 4


def test_flags_build_lazily_and_compute_once(acdc):
    with raise_if_dask_computes():
        tasks = qc.flag_tasks(acdc)
        lazy = acdc.copy()
        lazy["lv"] = lazy.lv.where(lazy.instance != 3, False)
        qc.flag_tasks(lazy)
    assert len(tasks) == len(acdc.chunks["record"]) > 1
    with raise_if_dask_computes(max_computes=1):
        table = qc.flags(acdc)
    assert len(table) == acdc.sizes["record"]
