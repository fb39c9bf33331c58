"""The test data of issue 25's volume path, checked on its own (tests/volumes.py and
synth.make_volume_dataset): the real Sunnybrook sample converted into ACDC, M&Ms and
MSD Task02 layouts holds the DICOM pixels and contours where the DICOMs put them, the
transform between the DICOM path's and the volume path's planes is the one the
orientation rule predicts, every voxel order reads the same, and the synthetic
datasets hold the promised files. Needs only what is on main: nibabel and
daskmri.sources.nifti.read_volume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest

nibabel = pytest.importorskip("nibabel")

import daskmri  # noqa: E402
from daskmri import synth  # noqa: E402
from daskmri.errors import DaskmriError  # noqa: E402
from daskmri.sources.nifti import read_volume  # noqa: E402

from . import volumes  # noqa: E402

MAX_VOXELS = 10**8

# The sample's facts (its README, and counted here): positions x frames per patient.
GRIDS = {"SCD0000101": (12, 20), "SCD0000201": (13, 20), "SCD0000301": (10, 20)}
CONTOURS = {"SCD0000101": (18, 9), "SCD0000201": (18, 9), "SCD0000301": (20, 10)}
#: The DICOM path's image -> the volume path's plane, per patient. SCD0000101's DICOM
#: columns run mostly toward the feet and its rows toward the patient's right, so the
#: L-R axis must move into the columns (transpose) and run toward L (flip columns);
#: the other two are stored already as the convention wants (columns toward L, rows
#: toward I).
TRANSFORMS = {
    "SCD0000101": volumes.PlaneTransform(transpose=True, flip_rows=False, flip_columns=True),
    "SCD0000201": volumes.PlaneTransform(False, False, False),
    "SCD0000301": volumes.PlaneTransform(False, False, False),
}


def _load(path) -> np.ndarray:
    # float32: exact for these int16 and uint8 files, and half the memory of float64.
    return nibabel.load(str(path)).get_fdata(dtype=np.float32)


# -- the conversion ---------------------------------------------------------------------


def test_every_dicom_becomes_one_voxel_plane_without_gaps(sunnybrook_cines):
    assert [c.patient_id for c in sunnybrook_cines] == list(GRIDS)
    for cine in sunnybrook_cines:
        assert (cine.positions, cine.frames) == GRIDS[cine.patient_id]
        assert cine.dropped == ()
        files = {p for row in cine.paths for p in row}
        assert len(files) == cine.positions * cine.frames  # each DICOM used once
        inner = sum("i" in kinds for kinds in cine.contoured.values())
        outer = sum("o" in kinds for kinds in cine.contoured.values())
        assert (inner, outer) == CONTOURS[cine.patient_id]
        # Contours lie on two frames only: ED and ES.
        assert {frame for frame, _ in cine.contoured} == {cine.ed, cine.es}
        assert cine.lv[cine.ed].sum() > cine.lv[cine.es].sum()
        assert not (cine.lv & cine.myo).any()


def test_frames_follow_trigger_time_and_positions_the_slice_normal(sunnybrook_cines):
    for cine in sunnybrook_cines[:1]:
        headers = [[pydicom.dcmread(p, stop_before_pixels=True) for p in row] for row in cine.paths]
        iop = np.array([float(v) for v in headers[0][0].ImageOrientationPatient])
        n = np.cross(iop[:3], iop[3:])
        for f in range(cine.frames):
            along = [float(np.array(h.ImagePositionPatient, float) @ n) for h in headers[f]]
            assert np.all(np.diff(along) > 0)
        for k in range(cine.positions):
            times = [float(headers[f][k].TriggerTime) for f in range(cine.frames)]
            assert np.all(np.diff(times) > 0)


def test_the_largest_complete_block_keeps_what_every_position_has():
    assert volumes.complete_block({0.0: 20, 10.0: 20, 20.0: 20}) == ([0.0, 10.0, 20.0], 20)
    # A position with 3 frames costs more than it brings: dropped, not the frames.
    assert volumes.complete_block({0.0: 20, 10.0: 20, 20.0: 3}) == ([0.0, 10.0], 20)
    # One frame missing at one position of many: frames 0..18 of every position.
    counts = {float(p): 20 for p in range(10)} | {10.0: 19}
    assert volumes.complete_block(counts) == ([float(p) for p in range(11)], 19)


def test_each_voxel_sits_where_its_dicom_pixel_is(sunnybrook_cines):
    for cine in sunnybrook_cines:
        ds = pydicom.dcmread(cine.paths[3][cine.positions - 1], stop_before_pixels=True)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        for row, column in [(0, 0), (17, 200), (255, 3)]:
            # PS3.3 C.7.6.2.1.1, in LPS; NIfTI is RAS: x and y negated.
            lps = ipp + column * dc * iop[:3] + row * dr * iop[3:]
            ras = cine.affine @ [column, row, cine.positions - 1, 1]
            assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=0.01), cine.patient_id


def test_the_storage_is_exact_int16(sunnybrook_cines):
    for cine in sunnybrook_cines:
        stored = volumes.exact_storage(cine.images)
        assert stored.dtype == np.int16
        assert np.array_equal(stored.astype(np.float32), cine.images)
    # A value int16 cannot hold exactly is kept as float32, never rounded.
    odd = np.array([[0.5, 40000.0]], np.float32)
    assert volumes.exact_storage(odd).dtype == np.float32


# -- the files, read back by nibabel ----------------------------------------------------


def test_acdc_files_hold_the_dicom_pixels_and_labels(sunnybrook_cines, sunnybrook_volumes):
    root = sunnybrook_volumes["acdc"]
    for n, cine in enumerate(sunnybrook_cines, start=1):
        name = volumes.acdc_id(n)
        folder = root / name
        info = (folder / "Info.cfg").read_text().splitlines()
        assert f"ED: {cine.ed + 1}" in info and f"ES: {cine.es + 1}" in info
        assert f"NbFrame: {cine.frames}" in info
        assert np.array_equal(_load(folder / f"{name}_4d.nii.gz"), cine.voxels(cine.images))
        for frame in (cine.ed, cine.es):
            stem = folder / f"{name}_frame{frame + 1:02d}"
            image = _load(f"{stem}.nii.gz")
            assert np.array_equal(image, cine.voxels(cine.images[frame : frame + 1])[..., 0])
            labels = _load(f"{stem}_gt.nii.gz")
            lv, myo = (cine.voxels(m[frame : frame + 1])[..., 0] for m in (cine.lv, cine.myo))
            assert np.array_equal(labels == 3, lv) and np.array_equal(labels == 2, myo)
            assert set(np.unique(labels)) == {0, 2, 3} if frame == cine.ed else {0, 3}
            assert np.allclose(nibabel.load(f"{stem}.nii.gz").affine, cine.affine, atol=1e-4)


def test_mnms_files_label_ed_and_es_only(sunnybrook_cines, sunnybrook_volumes):
    root = sunnybrook_volumes["mnms"]
    with open(root / volumes.MNMS_CSV, newline="") as fh:
        rows = {row["External code"]: row for row in csv.DictReader(fh)}
    for cine in sunnybrook_cines:
        code = cine.patient_id
        assert (int(rows[code]["ED"]), int(rows[code]["ES"])) == (cine.ed, cine.es)
        assert rows[code]["VendorName"]
        folder = root / "Training" / "Labeled" / code
        assert np.array_equal(_load(folder / f"{code}_sa.nii.gz"), cine.voxels(cine.images))
        # The raw uint8 labels: get_fdata's float copy of a 4D map only costs time here.
        labels = np.asarray(nibabel.load(str(folder / f"{code}_sa_gt.nii.gz")).dataobj)
        assert labels.dtype == np.uint8
        assert labels.shape == cine.voxels(cine.images).shape
        assert np.array_equal(labels == 1, cine.voxels(cine.lv))
        assert np.array_equal(labels == 2, cine.voxels(cine.myo))
        labelled = np.flatnonzero(labels.reshape(-1, cine.frames).any(axis=0))
        assert set(labelled) == {cine.ed, cine.es}


def test_msd_files_are_the_ed_frame_and_its_i_contours(sunnybrook_cines, sunnybrook_volumes):
    root = sunnybrook_volumes["msd"]
    description = json.loads((root / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "left atrium"}
    assert len(description["training"]) == len(sunnybrook_cines)
    for n, cine in enumerate(sunnybrook_cines, start=1):
        name = f"{volumes.msd_id(n)}.nii.gz"
        ed = slice(cine.ed, cine.ed + 1)
        image = _load(root / "imagesTr" / name)
        assert image.ndim == 3
        assert np.array_equal(image, cine.voxels(cine.images[ed])[..., 0])
        labels = _load(root / "labelsTr" / name)
        assert np.array_equal(labels, cine.voxels(cine.inner[ed])[..., 0].astype(float))


# -- the transform between the two paths ------------------------------------------------


def test_the_volume_path_gives_the_dicom_pixels_up_to_the_predicted_transform(
    sunnybrook_cines, sunnybrook_volumes
):
    """read_volume's planes against the DICOM images, under each of the 8 flips and
    transposes: exactly one matches, on every (frame, slice), and it is the rule's."""
    root = sunnybrook_volumes["acdc"]
    for n, cine in enumerate(sunnybrook_cines, start=1):
        name = volumes.acdc_id(n)
        volume = read_volume(str(root / name / f"{name}_4d.nii.gz"), max_voxels=MAX_VOXELS)
        found = set()
        for f in range(cine.frames):
            for k in range(cine.positions):
                plane = volume.images[f, cine.slice_number(k)]
                found.add(tuple(volumes.empirical_transforms(cine.images[f, k], plane)))
        assert found == {(TRANSFORMS[cine.patient_id],)}, cine.patient_id
        assert cine.transform() == TRANSFORMS[cine.patient_id]
        assert np.array_equal(
            volume.images, volumes.planes_by_rule(cine.voxels(cine.images), cine.affine)
        )


def test_expected_records_are_the_volume_paths_planes(sunnybrook_cines, sunnybrook_volumes):
    root = sunnybrook_volumes["acdc"]
    expected = volumes.expected_records(sunnybrook_cines, "acdc")
    assert len(expected) == sum(2 * c.positions for c in sunnybrook_cines)
    for n, cine in enumerate(sunnybrook_cines, start=1):
        name = volumes.acdc_id(n)
        for frame in (cine.ed, cine.es):
            stem = root / name / f"{name}_frame{frame + 1:02d}"
            volume = read_volume(f"{stem}.nii.gz", f"{stem}_gt.nii.gz", max_voxels=MAX_VOXELS)
            for s in range(cine.positions):
                record = expected[(name, frame, s)]
                assert record.phase == ("ED" if frame == cine.ed else "ES")
                assert np.array_equal(volume.images[0, s], record.image)
                for kind, value in volumes.LABELS["acdc"].items():
                    assert np.array_equal(volume.labels[0, s] == value, record.masks[kind])


def test_expected_records_agree_with_the_dicom_path_where_it_has_records(
    sunnybrook_cines, real_root
):
    """The DICOM pipeline on the same files: where it lists a record, the expected
    record holds its image and masks up to the transform."""
    ds = daskmri.load_dataset(real_root, scheduler="sync").compute()
    table, _ = daskmri.scan(real_root)
    expected = volumes.expected_records(sunnybrook_cines, "mnms", labels="all")
    by_path = {record.dicom_path: record for record in expected.values()}
    assert len(table) == 56 == sum(len(c.contoured) for c in sunnybrook_cines)
    for i, path in enumerate(table["image_path"]):
        record = by_path[str(path)]
        t = record.transform
        assert np.array_equal(t.apply(ds["image"].values[i]), record.image)
        assert record.contours == {k for k in "io" if ds[f"has_{k}contour"].values[i]}
        inner, outer = ds["icontour"].values[i], ds["ocontour"].values[i]
        assert np.array_equal(t.apply(inner), record.masks["lv"])
        if "o" in record.contours:
            assert np.array_equal(t.apply(outer & ~inner), record.masks["myo"])


# -- orientation variants ---------------------------------------------------------------


def test_the_variants_are_sixteen_distinct_voxel_orders():
    assert len({str(v) for v in volumes.VARIANTS}) == 16
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    orders = {
        volumes.Variant(f, t).apply(data, np.eye(4))[0].tobytes()
        for f, t in [
            ((False, False, False), False),
            ((True, False, False), False),
            ((False, False, True), True),
        ]
    }
    assert len(orders) == 3


@pytest.mark.parametrize("variant", volumes.VARIANTS, ids=str)
def test_every_voxel_order_reads_as_identical_planes_and_labels(
    sunnybrook_cines, tmp_path, variant
):
    """The ED frame of the patient that needs a transpose, and of one that does not,
    in every voxel order: read_volume gives the expected planes and labels."""
    for n in (0, 1):
        cine = sunnybrook_cines[n]
        root = volumes.write_msd([cine], tmp_path / str(n), variant)
        name = f"{volumes.msd_id(1)}.nii.gz"
        volume = read_volume(
            str(root / "imagesTr" / name), str(root / "labelsTr" / name), max_voxels=MAX_VOXELS
        )
        expected = volumes.expected_records([cine], "msd")
        for s in range(cine.positions):
            record = expected[(volumes.msd_id(1), 0, s)]
            assert np.array_equal(volume.images[0, s], record.image), (variant, s)
            assert np.array_equal(volume.labels[0, s] == 1, record.masks["la"]), (variant, s)


# -- synthetic volume datasets ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["acdc", "mnms", "msd-heart"])
def test_synthetic_volume_datasets_hold_the_promised_files(tmp_path, layout):
    root = synth.make_volume_dataset(
        tmp_path / layout, layout=layout, patients=2, frames=6, slices=4, shape=(40, 32)
    )
    ids = synth.volume_patient_ids(layout, 2)
    ed, es = synth.volume_ed_es(6)
    values = synth.VOLUME_LABELS[layout]
    for patient, name in enumerate(ids, start=1):
        raw, masks = synth.volume_phantom(
            seed=0, patient=patient, frames=6, slices=4, shape=(40, 32)
        )
        slope, inter = synth.volume_rescale(patient) or (1.0, 0.0)
        if layout == "acdc":
            files = [
                root / name / f"{name}_4d.nii.gz",
                root / name / f"{name}_frame{es + 1:02d}_gt.nii.gz",
            ]
            frames = (slice(None), es)
            assert (
                (root / name / "Info.cfg").read_text().startswith(f"ED: {ed + 1}\nES: {es + 1}\n")
            )
        elif layout == "mnms":
            folder = root / "Training" / "Labeled" / name
            files = [folder / f"{name}_sa.nii.gz", folder / f"{name}_sa_gt.nii.gz"]
            frames = (slice(None), slice(None))
        else:
            files = [root / "imagesTr" / f"{name}.nii.gz", root / "labelsTr" / f"{name}.nii.gz"]
            frames = (ed, ed)
        image, labels = (nibabel.load(str(f)) for f in files)
        assert image.get_fdata().shape == raw[..., frames[0]].shape
        assert np.array_equal(image.get_fdata(), raw[..., frames[0]] * slope + inter)
        assert np.allclose(image.affine, synth.volume_affine(patient, 4, (40, 32)), atol=1e-4)
        assert np.allclose(image.header.get_zooms()[:3], synth.VOLUME_SPACING)
        label = labels.get_fdata()
        for kind, value in values.items():
            mask = masks["lv" if kind == "la" else kind][..., frames[1]]
            if layout == "mnms":  # labelled at ED and ES only
                mask = mask & np.isin(np.arange(6), [ed, es])
            assert mask.any() and np.array_equal(label == value, mask), kind
        assert set(np.unique(label)) == {0, *values.values()}
    if layout == "mnms":
        with open(root / volumes.MNMS_CSV, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["External code"], int(r["ED"]), int(r["ES"])) for r in rows] == [
            (i, ed, es) for i in ids
        ]
    if layout == "msd-heart":
        training = json.loads((root / "dataset.json").read_text())["training"]
        assert [t["image"] for t in training] == [f"./imagesTr/{i}.nii.gz" for i in ids]


def test_synthetic_volumes_read_with_permuted_spacing_and_a_contracting_heart(tmp_path):
    root = synth.make_volume_dataset(tmp_path / "d", patients=1, frames=4, slices=3, compress=False)
    path = root / "patient001" / "patient001_4d.nii"
    assert path.is_file()
    volume = read_volume(str(path), max_voxels=MAX_VOXELS)
    assert volume.images.shape == (4, 3, 64, 64)
    # The affine is near RAS+: rows are y (1.5 mm), columns x (1.25 mm), slices z.
    assert volume.orientation.pixel_spacing == pytest.approx(synth.VOLUME_SPACING[1::-1])
    assert volume.orientation.slice_mm == pytest.approx(synth.VOLUME_SPACING[2])
    data = nibabel.load(str(path)).get_fdata(dtype=np.float32)
    assert np.array_equal(
        volume.images, volumes.planes_by_rule(data, nibabel.load(str(path)).affine)
    )
    _, masks = synth.volume_phantom(seed=0, patient=1, frames=4, slices=3, shape=(64, 64))
    areas = masks["lv"].sum(axis=(0, 1, 2))
    assert areas[0] > areas[2]  # ED larger than ES
    assert synth.make_volume_dataset(tmp_path / "e", layout="msd", patients=1, frames=2, slices=2)


def test_make_volume_dataset_refuses_what_it_cannot_write(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(DaskmriError, match="not an empty folder"):
        synth.make_volume_dataset(tmp_path / "full")
    with pytest.raises(ValueError, match="layout"):
        synth.make_volume_dataset(tmp_path / "a", layout="sunnybrook")
    with pytest.raises(ValueError, match="2 frames"):
        synth.make_volume_dataset(tmp_path / "b", frames=1)
    with pytest.raises(ValueError, match="too small"):
        synth.make_volume_dataset(tmp_path / "c", shape=(8, 64))
