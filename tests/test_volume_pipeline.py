"""NIfTI volume datasets (ACDC, M&Ms, MSD Task02 layouts) through the whole pipeline:
load_dataset, build/open_dataset/check/update, BatchIterator ranks, split, fit= and
spacing= with to_source, the schedulers and a cluster, the CLI, s3:// roots, and bad
input. Every comparison is with the eager reference of tests/vf.py (each
file read by nibabel), never with daskmri's own output."""

from __future__ import annotations

import dataclasses
import shutil
import tracemalloc
import zlib
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest

import daskmri
from daskmri import BatchIterator
from daskmri.cli import main
from daskmri.errors import ReaderError, VolumeError
from daskmri.limits import Limits
from daskmri.parse import DefaultReader
from daskmri.plan import plan_chunks
from daskmri.sources.nifti import open_image

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
    for code, where, _, _ in vf.MNMS_PATIENTS:
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
    gt = root / "patient002" / "patient002_frame01_gt.nii.gz"  # a label map alone
    vf.rewrite(gt, np.asarray(nibabel.load(str(gt)).dataobj)[::-1], like=gt, dtype=np.uint8)
    freshness = daskmri.check(store)
    assert not freshness.fresh
    assert sorted(freshness.changed) == [("patient001", 3 * 5 + s) for s in range(5)] + [
        ("patient002", s) for s in range(5)
    ]
    assert not freshness.added and not freshness.removed
    with pytest.raises(daskmri.StaleStoreError):
        daskmri.build(root, store, layout=daskmri.ACDC, chunk_size=3, scheduler="sync")
    report = daskmri.build(
        root, store, layout=daskmri.ACDC, chunk_size=3, scheduler="sync", mode="update"
    )
    assert report.parsed_records == 10 and report.dropped == 0
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


def test_pad_or_crop_keeps_the_source_plane_for_to_source(roots):
    """20x16 planes cropped to 16 rows and padded to 22 columns: to_source gives back
    the source plane (image and every mask) where it was kept, False where cut."""
    root, expected = roots["acdc"]
    ds = daskmri.load_dataset(
        root, layout=daskmri.ACDC, shape=(16, 22), fit="pad_or_crop", scheduler="sync"
    ).compute()
    assert (ds.sizes["y"], ds.sizes["x"]) == (16, 22) and daskmri.dropped(ds).empty
    kept = np.zeros((20, 16), bool)
    kept[2:18] = True
    for k in range(ds.sizes["record"]):
        want, record = expected[key_of(ds, k)], ds.isel(record=k)
        assert (int(record.row_offset), int(record.column_offset)) == (-2, 3)
        image = daskmri.to_source(ds.image[k], record)
        np.testing.assert_array_equal(image, np.where(kept, want["image"], 0))
        for kind, mask in want["masks"].items():
            back = daskmri.to_source(ds[kind][k], record)
            assert back.dtype == bool
            np.testing.assert_array_equal(back, mask & kept, err_msg=f"{key_of(ds, k)} {kind}")


def test_spacing_comes_from_the_affine_after_reordering(roots):
    """spacing= resamples each plane from the spacing of its reordered axes: the
    source spacing coordinates are the affine's, rows and columns not swapped."""
    root, expected = roots["msd-heart"]
    target = (3.0, 2.5)
    ds = daskmri.load_dataset(
        root,
        layout=daskmri.MSD_HEART,
        shape=(12, 10),
        fit="pad_or_crop",
        spacing=target,
        scheduler="sync",
    ).compute()
    assert (ds.sizes["y"], ds.sizes["x"]) == (12, 10) and daskmri.dropped(ds).empty
    assert sorted(key_of(ds, k) for k in range(ds.sizes["record"])) == sorted(expected)
    for k in range(ds.sizes["record"]):
        want, record = expected[key_of(ds, k)], ds.isel(record=k)
        source = (float(record.source_row_spacing), float(record.source_column_spacing))
        np.testing.assert_allclose(source, want["spacing"], rtol=1e-12)
        scales = (float(record.row_scale), float(record.column_scale))
        np.testing.assert_allclose(scales, np.divide(want["spacing"], target), rtol=1e-12)
        assert (int(record.source_rows), int(record.source_columns)) == want["image"].shape
        # Nearest-pixel masks: as many pixels as the source's, scaled by the areas.
        area = want["masks"]["la"].sum() * np.prod(scales)
        assert abs(int(ds.la[k].sum()) - area) <= 0.35 * area + 2


def test_processes_scheduler_equals_the_reference(roots):
    root, expected = roots["acdc"]
    ds = daskmri.load_dataset(root, layout=daskmri.ACDC, chunk_size=3, scheduler="processes")
    assert_matches(ds, expected)


def test_distributed_client(roots, client):
    root, expected = roots["mnms"]
    ds = daskmri.load_dataset(root, layout=daskmri.MNMS, chunk_size=4, client=client)
    assert_matches(ds, expected)
    assert daskmri.dropped(ds).empty


class TestCli:
    def test_scan(self, roots, capsys):
        root, expected = roots["acdc"]
        assert main(["scan", str(root), "--layout", "acdc"]) == 0
        out = capsys.readouterr().out
        assert "patients:    2" in out and f"records:     {len(expected)} (labels='any')" in out
        assert f"lv:          {len(expected)}" in out and "problems:    0" in out

    def test_build(self, roots, tmp_path, capsys):
        root, expected = roots["msd-heart"]
        store = tmp_path / "s.zarr"
        argv = ["build", str(root), "--layout", "msd-heart", "--out", str(store)]
        assert main([*argv, "--scheduler", "sync"]) == 0
        assert f"records:     {len(expected)}" in capsys.readouterr().out
        assert_matches(daskmri.open_dataset(store), expected)
        assert (tmp_path / "s.dropped.csv").is_file()

    def test_demo(self, roots, tmp_path, capsys):
        root, expected = roots["acdc"]
        png = tmp_path / "x.png"
        argv = ["demo", str(root), "--layout", "acdc", "--out", str(png), "--scheduler", "sync"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"records:     {len(expected)} (2 patients)" in out and "dropped:     0" in out
        picture = read_png(png)
        # Tiles of the 20x16 planes in a grid with 2-pixel gaps.
        assert (picture.shape[0] + 2) % 22 == 0 and (picture.shape[1] + 2) % 18 == 0


def _local(table: pd.DataFrame, root, url: str) -> pd.DataFrame:
    table = table.copy()
    for column in [c for c in table.columns if c.endswith("_path")]:
        table[column] = pd.Series(
            [None if p is None else p.replace(url, str(root), 1) for p in table[column]],
            index=table.index,
            dtype=object,
        )
    return table


def test_s3_root_equals_the_local_copy(roots, s3, monkeypatch, tmp_path):
    root, expected = roots["acdc"]
    url = s3.upload(root, "acdc")
    remote, _ = daskmri.scan(url, layout=daskmri.ACDC, source_options=s3.options())
    local, _ = daskmri.scan(root, layout=daskmri.ACDC)
    assert remote["image_path"].iloc[0].startswith(url + "/patient001/")
    columns = [c for c in local.columns if c != "volume"]
    pd.testing.assert_frame_equal(_local(remote, root, url)[columns], local[columns])
    ds = daskmri.load_dataset(
        url, layout=daskmri.ACDC, chunk_size=4, scheduler="sync", source_options=s3.options()
    )
    assert_matches(ds, expected)
    store = tmp_path / "s.zarr"
    options = {"source_options": s3.options(), "scheduler": "sync"}
    daskmri.build(url, store, layout=daskmri.ACDC, chunk_size=4, **options)
    assert_matches(daskmri.open_dataset(store), expected)
    assert daskmri.check(store, source_options=s3.options()).fresh
    s3.filesystem().pipe(f"{url[5:]}/patient002/Info.cfg", b"ED: 4\nES: 1\n")  # swapped
    changed = daskmri.check(store, source_options=s3.options()).changed
    assert sorted(changed) == [("patient002", s) for s in (0, 1, 2, 3, 4, 15, 16, 17, 18, 19)]
    s3.filesystem().pipe(
        f"{url[5:]}/patient002/Info.cfg", (root / "patient002/Info.cfg").read_bytes()
    )
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    # In this process: a pool of local workers started before the variables were set
    # would not see them.
    assert_matches(daskmri.load_dataset(url, layout=daskmri.ACDC, scheduler="sync"), expected)


# -- bad input ------------------------------------------------------------------------


def _label_like(path, array, shift=0.0, dtype=np.uint8) -> None:
    """Rewrite the label map at ``path`` with ``array`` on its grid, origin shifted."""
    affine = nibabel.load(str(path)).affine.copy()
    affine[:3, 3] += shift
    vf.save(path, array, affine, dtype)


def _break_acdc(root) -> dict[str, tuple[str, int, str]]:
    """Damage one volume of patients 2-11, each a different way: ``{patient: (file,
    frame or -1 for the whole patient, words its reason must hold)}``."""
    p = {n: root / f"patient{n:03d}" for n in range(1, 13)}

    def f(n, number, gt=""):
        return p[n] / f"patient{n:03d}_frame{number:02d}{gt}.nii.gz"

    vf.truncate(f(2, 1))
    vf.edit_header(f(3, 4), vf.MAGIC_OFFSET, "4s", b"n+9\0")
    vf.edit_header(f(4, 1), vf.SROW_X_OFFSET + 12, "f", float("nan"))
    vf.edit_header(f(5, 4), vf.QFORM_CODE_OFFSET, "hh", 1, 0)  # the qform, then...
    vf.edit_header(f(5, 4), vf.QOFFSET_X_OFFSET, "f", float("inf"))
    image = nibabel.load(str(f(6, 1)))
    vf.save(f(6, 1), np.asarray(image.dataobj).reshape((*vf.SHAPE, 1, 1)), image.affine)
    _label_like(f(7, 1, "_gt"), np.zeros((20, 16, 4)))
    label = np.asarray(nibabel.load(str(f(8, 1, "_gt"))).dataobj)
    _label_like(f(8, 1, "_gt"), label, shift=0.01)  # over the 1e-3 mm tolerance
    label = np.asarray(nibabel.load(str(f(8, 4, "_gt"))).dataobj)
    _label_like(f(8, 4, "_gt"), label, shift=1e-5)  # rounding: accepted
    (p[9] / "Info.cfg").unlink()
    label = np.asarray(nibabel.load(str(f(10, 1, "_gt"))).dataobj).astype(np.float32)
    label[0, 0, 0] = 1.5
    _label_like(f(10, 1, "_gt"), label, dtype=np.float32)
    label = np.asarray(nibabel.load(str(f(11, 4, "_gt"))).dataobj).copy()
    label[0, 0, 0] = 4
    _label_like(f(11, 4, "_gt"), label)
    return {
        "patient002": (f(2, 1).name, 0, "truncated"),
        "patient003": (f(3, 4).name, 3, "not a NIfTI file"),
        "patient004": (f(4, 1).name, 0, "NaN or inf"),
        "patient005": (f(5, 4).name, 3, "NaN or inf"),
        "patient006": (f(6, 1).name, 0, "5D"),
        "patient007": (f(7, 1, "_gt").name, 0, "shape"),
        "patient008": (f(8, 1, "_gt").name, 0, f"{f(8, 1).name}: the origin"),
        "patient009": ("Info.cfg", -1, "missing"),
        "patient010": (f(10, 1, "_gt").name, 0, "non-integer"),
        "patient011": (f(11, 4, "_gt").name, 3, "[4] belong to no kind"),
    }


def assert_dropped_as(ds, broken: dict, expected: dict) -> None:
    """Each broken volume's records are gone with a one-line reason naming its file;
    every other record is there, equal to the reference."""
    lost = daskmri.dropped(ds)
    assert set(lost.patient_id) == set(broken)
    for patient, (name, _, words) in broken.items():
        rows = lost[lost.patient_id == patient]
        for row in rows.itertuples():
            assert row.path.endswith(name) or name in row.reason, (patient, row.path)
            assert words in row.reason and "\n" not in row.reason, (patient, row.reason)
    gone = {
        key
        for key in expected
        for p, (_, frame, _) in broken.items()
        if key[0] == p
        if frame in (-1, key[1])
    }
    assert_matches(ds, {k: v for k, v in expected.items() if k not in gone})


def test_bad_acdc_volumes_are_dropped_with_a_reason(tmp_path):
    root = vf.make_acdc(tmp_path / "acdc", patients=12, seed=5)
    expected = vf.acdc_reference(root)
    broken = _break_acdc(root)
    ds = daskmri.load_dataset(root, layout=daskmri.ACDC, chunk_size=8, scheduler="sync")
    assert_dropped_as(ds, broken, expected)
    lost = daskmri.dropped(ds)
    grid = lost[lost.patient_id == "patient008"].reason.iloc[0]
    assert "tolerance 0.001 mm" in grid  # names both files and the difference
    assert len(lost[lost.patient_id == "patient007"]) == 5  # one row per record


def _add_mnms_patient(root, code: str, label_frames: int, csv_row=True, ed=0, es=3) -> Path:
    """Another Training/Labeled patient of a make_mnms root; returns its image."""
    rng = np.random.default_rng(len(code) + label_frames)
    folder = root / "Training" / "Labeled" / code
    image = vf.save(folder / f"{code}_sa.nii.gz", vf.cine(rng), vf.oblique_affine())
    label = np.zeros((*vf.SHAPE, label_frames), np.uint8)
    label[..., ed] = vf.label_map(rng)
    vf.save(folder / f"{code}_sa_gt.nii.gz", label, vf.oblique_affine(), np.uint8)
    if csv_row:
        with open(root / vf.MNMS_CSV, "a") as fh:
            fh.write(f"{code},GE,{ed},{es}\n")
    return image


def test_bad_mnms_volumes_and_a_voxel_bomb(tmp_path):
    """A 4D label of another frame count, a patient missing from the CSV, and a
    header declaring 10**12 voxels: refused before anything that size is allocated."""
    root = vf.make_mnms(tmp_path / "mnms")
    expected = vf.mnms_reference(root)
    _add_mnms_patient(root, "D4F5R6", label_frames=5)
    _add_mnms_patient(root, "E5N0R0", label_frames=vf.FRAMES, csv_row=False)
    bomb = _add_mnms_patient(root, "F6B0MB", label_frames=vf.FRAMES)
    vf.edit_header(bomb, vf.DIM_OFFSET, "5h", 4, 20000, 10000, 5, 1000)
    broken = {
        "D4F5R6": ("D4F5R6_sa_gt.nii.gz", -1, "5 frames, against the image's (6,)"),
        "E5N0R0": (vf.MNMS_CSV, -1, "has no row for patient E5N0R0"),
        "F6B0MB": ("F6B0MB_sa.nii.gz", -1, "10**12"),
    }
    tracemalloc.start()
    try:
        ds = daskmri.load_dataset(root, layout=daskmri.MNMS, scheduler="sync").compute()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB allocated"
    words = "the header declares 1000000000000 voxels (20000, 10000, 5, 1000), over "
    broken["F6B0MB"] = ("F6B0MB_sa.nii.gz", -1, words + "Limits.max_voxels=")
    assert_dropped_as(ds, broken, expected)
    assert len(daskmri.dropped(ds).query("patient_id == 'F6B0MB'")) == 10  # ED, ES x 5


def test_uncompressed_nii_reads_like_nii_gz(tmp_path):
    layout = daskmri.VolumeLayout(
        "msd-nii", "imagesTr/{patient_id}.nii", {"la": 1}, label="labelsTr/{patient_id}.nii"
    )
    plain = vf.make_msd(tmp_path / "plain", suffix=".nii")
    assert (plain / "imagesTr" / "la_001.nii").read_bytes()[344:347] == b"n+1"
    ds = daskmri.load_dataset(plain, layout=layout, scheduler="sync")
    expected = vf.msd_reference(plain, suffix=".nii")
    assert_matches(ds, expected)
    packed = vf.msd_reference(vf.make_msd(tmp_path / "packed"))  # the same seed, gzipped
    for key, record in expected.items():
        np.testing.assert_array_equal(record["image"], packed[key]["image"])


def test_a_reader_bug_is_raised_naming_the_record(roots):
    root, _ = roots["acdc"]

    def buggy(record):
        if record.patient_id == "patient002" and record.instance == 17:
            return 1 / 0
        return daskmri.read_record(record)

    with pytest.raises(ReaderError, match="patient patient002, instance 17") as caught:
        daskmri.load_dataset(root, layout=daskmri.ACDC, reader=buggy, scheduler="sync")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)

    class UnitReader(DefaultReader):
        def read_unit(self, records):
            if records[0].patient_id == "patient002":
                raise ZeroDivisionError("in read_unit")
            return super().read_unit(records)

    with pytest.raises(ReaderError, match="patient patient002, instance") as caught:
        daskmri.load_dataset(root, layout=daskmri.ACDC, reader=UnitReader(), scheduler="sync")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def acdc_all_reference(root) -> dict:
    """ACDC with labels="all": every frame of each 4D cine, the ED and ES frames with
    the masks of their frameFF_gt label maps."""
    labelled = vf.acdc_reference(root)
    out: dict = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image = folder / f"{folder.name}_4d.nii.gz"
        for frame in range(vf.FRAMES):
            planes = vf.expected_record(image, None, frame, vf.ACDC_KINDS, "", frame)
            vf._add(out, folder.name, folder.name, frame, planes)
    for key, record in out.items():
        if key in labelled:
            record.update(masks=labelled[key]["masks"], phase=labelled[key]["phase"])
    return out


@pytest.mark.parametrize("chunk_size", [64, 4])
def test_a_bad_frame_label_drops_only_its_frame_whatever_the_chunks(tmp_path, chunk_size):
    """labels="all" reads the 4D cine with a label map per labelled frame: a bad one
    drops the records of its frame, the same ones whatever the chunk size (records
    of one volume may share a chunk or not)."""
    root = vf.make_acdc(tmp_path / "acdc", patients=3)
    expected = acdc_all_reference(root)
    gt = root / "patient002" / "patient002_frame01_gt.nii.gz"
    label = np.asarray(nibabel.load(str(gt)).dataobj).copy()
    label[0, 0, 0] = 4
    _label_like(gt, label)
    ds = daskmri.load_dataset(
        root, layout=daskmri.ACDC, labels="all", chunk_size=chunk_size, scheduler="sync"
    )
    broken = {"patient002": (gt.name, 0, "[4] belong to no kind")}
    assert_dropped_as(ds, broken, expected)
    assert len(daskmri.dropped(ds)) == 5


def test_read_record_raises_what_drops_a_volume_record(tmp_path):
    """The default reader, called on one volume record as a custom reader wrapping it
    would: a bad label value or a plane of another size is raised, never returned."""
    root = vf.make_msd(tmp_path / "msd", patients=1)
    record = plan_chunks(daskmri.scan(root, layout=daskmri.MSD_HEART)).chunks[0][2]
    image, mask = daskmri.read_record(record)
    want = vf.msd_reference(root)[("la_001", 0, 2)]
    np.testing.assert_array_equal(image, want["image"])
    np.testing.assert_array_equal(mask, want["masks"]["la"])
    with pytest.raises(daskmri.RecordError, match="image is 20x16 but this dataset's images"):
        daskmri.read_record(record, shape=(8, 8))
    gt = root / "labelsTr" / "la_001.nii.gz"
    _label_like(gt, np.full(vf.SHAPE, 7))
    with pytest.raises(daskmri.VolumeError, match=r"label value\(s\) \[7\]"):
        daskmri.read_record(record)


# -- found in review: each a case that broke before ------------------------------------


def test_a_header_that_puts_the_voxels_far_in_is_refused_before_unpacking(tmp_path):
    """A gzip stream of zeros behind a header whose vox_offset is 2**31: refused from
    the header, before anything past it is unpacked (it grew memory by 800 MiB)."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((2, 2, 2))
    header.set_data_dtype(np.int8)
    header["vox_offset"] = 2**31
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = [packer.compress(header.binaryblock + b"\0" * 4)]
    body += [packer.compress(b"\0" * (1 << 20)) for _ in range(64)] + [packer.flush()]
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(b"".join(body))
    started = tracemalloc_peak(lambda: open_image(str(path), limits=Limits(max_voxels=8)))
    assert "over 16777216" in started[1] and started[0] < 32 * 2**20


def tracemalloc_peak(call) -> tuple[int, str]:
    """The peak bytes traced while ``call`` raises a VolumeError, and its message."""
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError) as info:
            call()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


def test_phases_beyond_the_image_drop_only_those_frames(tmp_path):
    """M&Ms' ES after the cine's last frame, and an MSD-like 3D image with phases: the
    frames that do not exist are reported; the others load, equal to the reference."""
    root = vf.make_mnms(tmp_path / "mnms")
    csv_path = root / vf.MNMS_CSV
    text = csv_path.read_text().replace("A0S9V9,Siemens,0,3", "A0S9V9,Siemens,0,9")
    csv_path.write_text(text)
    ds = daskmri.load_dataset(root, layout=daskmri.MNMS, scheduler="sync")
    dropped = daskmri.dropped(ds)
    assert dropped.reason.str.contains("names frame 9 \\(ES\\), but the image has 6").any()
    a0 = ds.isel(record=ds.patient_id.values == "A0S9V9")
    assert set(a0.frame.values.tolist()) == {0} and set(a0.phase.values.tolist()) == {"ED"}
    three_d = dataclasses.replace(daskmri.MSD_HEART, phases=daskmri.Phases("frames.csv"))
    msd = vf.make_msd(tmp_path / "msd", patients=1)
    (msd / "frames.csv").write_text("patient_id,ED,ES\nla_001,1,10\n")
    ds = daskmri.load_dataset(msd, layout=three_d, scheduler="sync")
    assert set(ds.frame.values.tolist()) == {0} and set(ds.phase.values.tolist()) == {"ED"}
    assert daskmri.dropped(ds).reason.str.contains("names frame 10 \\(ES\\)").all()


def test_frame_files_of_another_slice_count_are_left_out_keeping_instances_unique(tmp_path):
    root = vf.make_acdc(tmp_path / "acdc", patients=1)
    es = root / "patient001" / "patient001_frame04.nii.gz"
    image = nibabel.load(es)
    data = np.asarray(image.dataobj)[..., :3]
    nibabel.save(nibabel.Nifti1Image(data, image.affine), es)
    table, problems = daskmri.scan(root, layout=daskmri.ACDC)
    assert not table.duplicated(["patient_id", "instance"]).any()
    assert set(table.phase) == {"ED"}
    assert any("3 slices, but the patient's other volume has 5" in p.reason for p in problems)


def test_a_label_map_in_the_other_compression_is_found_and_a_missing_one_reported(tmp_path):
    root = vf.make_msd(tmp_path / "msd", patients=3)
    gz = root / "labelsTr" / "la_002.nii.gz"
    nibabel.save(nibabel.load(gz), root / "labelsTr" / "la_002.nii")
    gz.unlink()
    (root / "labelsTr" / "la_003.nii.gz").unlink()
    (root / "imagesTr" / "._la_001.nii.gz").write_bytes(b"\0\5\26\7 macOS resource fork")
    table, problems = daskmri.scan(root, layout=daskmri.MSD_HEART)
    assert set(table.patient_id) == {"la_001", "la_002"}
    assert table.loc[table.patient_id == "la_002", "la_path"].str.endswith(".nii").all()
    assert [(p.patient_id, p.reason) for p in problems] == [
        ("la_003", "no label map for this image")
    ]
    # M&Ms' Training/Unlabeled patients have none by design: nothing to report.
    mnms = vf.make_mnms(tmp_path / "mnms")
    assert daskmri.scan(mnms, layout=daskmri.MNMS).problems == ()


def test_a_volume_linked_from_outside_the_root_is_reported_not_read(tmp_path):
    """The volume scan lists through the one walker: a link out of the root is a
    problem, never a patient."""
    root = vf.make_msd(tmp_path / "msd", patients=1)
    outside = vf.make_msd(tmp_path / "elsewhere", patients=1)
    (root / "imagesTr" / "la_009.nii.gz").symlink_to(outside / "imagesTr" / "la_001.nii.gz")
    table, problems = daskmri.scan(root, layout=daskmri.MSD_HEART)
    assert set(table.patient_id) == {"la_001"}
    assert [p.reason for p in problems] == ["file is a link that leaves the root; not followed"]


def test_two_disagreeing_csv_rows_leave_the_patient_out_with_a_reason(tmp_path):
    root = vf.make_mnms(tmp_path / "mnms")
    csv_path = root / vf.MNMS_CSV
    csv_path.write_text(csv_path.read_text() + "A0S9V9,Siemens,1,3\nB1C2D3,GE,1,4\n")
    table, problems = daskmri.scan(root, layout=daskmri.MNMS)
    assert "A0S9V9" not in set(table.patient_id) and "B1C2D3" in set(table.patient_id)
    assert [(p.patient_id, p.reason.split(" gives ")[-1]) for p in problems] == [
        ("A0S9V9", "patient A0S9V9 two different ED and ES rows")
    ]
