"""The volume path end to end (issue 25, Parts 2 and 3), against the API of
notes/design25.md: ``daskmri.scan`` and ``daskmri.load_dataset`` with the presets
``daskmri.ACDC``, ``daskmri.MNMS`` and ``daskmri.MSD_HEART``.

The truth is independent of the volume path: the real Sunnybrook sample's DICOM
pixels and contours (tests/volumes.py), under the one transform per patient that the
orientation rule predicts; synthetic volumes with known geometry
(synth.make_volume_dataset); and nibabel's own test files read by nibabel."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")

import daskmri  # noqa: E402
from daskmri import synth  # noqa: E402

from . import volumes  # noqa: E402

PRESETS = {"acdc": "ACDC", "mnms": "MNMS", "msd": "MSD_HEART"}
COORDS = ("patient_id", "original_id", "instance", "frame", "slice", "phase")


def _preset(layout: str):
    return getattr(daskmri, PRESETS[layout])


def _load(root, layout: str, **kwargs):
    return daskmri.load_dataset(root, layout=_preset(layout), scheduler="sync", **kwargs).compute()


def _key(ds, i: int) -> tuple[str, int, int]:
    return (str(ds["patient_id"].values[i]), int(ds["frame"].values[i]), int(ds["slice"].values[i]))


def _assert_records(ds, expected: dict, layout: str) -> None:
    """``ds`` holds exactly the expected records, pixel for pixel and mask for mask."""
    assert daskmri.dropped(ds).empty, daskmri.dropped(ds)
    for name in COORDS:
        assert name in ds.coords, name
    keys = [_key(ds, i) for i in range(ds.sizes["record"])]
    assert sorted(keys) == sorted(expected)
    images = ds["image"].values
    assert images.dtype == np.float32
    for i, key in enumerate(keys):
        record = expected[key]
        assert np.array_equal(images[i], record.image), key
        assert str(ds["phase"].values[i]) == record.phase, key
        for kind, mask in record.masks.items():
            assert np.array_equal(ds[kind].values[i], mask), (key, kind)


def _slices(expected: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for patient_id, _, s in expected:
        out[patient_id] = max(out.get(patient_id, 0), s + 1)
    return out


# -- the real sample, converted ---------------------------------------------------------


@pytest.mark.parametrize("layout", list(PRESETS))
def test_scan_lists_every_slice_of_the_labelled_frames(
    sunnybrook_cines, sunnybrook_volumes, layout
):
    table, _ = daskmri.scan(sunnybrook_volumes[layout], layout=_preset(layout))
    expected = volumes.expected_records(sunnybrook_cines, layout)
    assert len(table) == len(expected)
    assert set(table["patient_id"]) == set(volumes.patient_ids(sunnybrook_cines, layout))


@pytest.mark.parametrize("layout", list(PRESETS))
def test_load_dataset_gives_the_dicom_pixels_and_contours(
    sunnybrook_cines, sunnybrook_volumes, layout
):
    """Every record equals the DICOM path's image and masks, up to the stated transform
    (tests/test_volumes_fixture.TRANSFORMS), with its frame, slice and phase."""
    ds = _load(sunnybrook_volumes[layout], layout)
    expected = volumes.expected_records(sunnybrook_cines, layout)
    _assert_records(ds, expected, layout)
    slices = _slices(expected)
    for i in range(ds.sizes["record"]):
        patient_id, frame, s = _key(ds, i)
        assert int(ds["instance"].values[i]) == frame * slices[patient_id] + s
    if layout == "acdc":
        assert set(ds["original_id"].values) == set(volumes.patient_ids(sunnybrook_cines, "acdc"))
    if layout == "msd":
        assert set(ds["frame"].values) == {0} and set(ds["phase"].values) == {""}


def test_the_pixel_spacing_comes_from_the_affine_after_the_reordering(
    sunnybrook_cines, sunnybrook_volumes
):
    ds = _load(sunnybrook_volumes["acdc"], "acdc")
    for n, cine in enumerate(sunnybrook_cines, start=1):
        at = ds["patient_id"].values == volumes.acdc_id(n)
        zooms = np.linalg.norm(cine.affine[:3, :3], axis=0)  # x (DICOM column), y (row)
        t = cine.transform()
        row_mm, column_mm = (zooms[0], zooms[1]) if t.transpose else (zooms[1], zooms[0])
        assert np.allclose(ds["source_row_spacing"].values[at], row_mm, atol=1e-4)
        assert np.allclose(ds["source_column_spacing"].values[at], column_mm, atol=1e-4)


@pytest.fixture(scope="module")
def one_patient(sunnybrook_cines, tmp_path_factory) -> dict:
    """The patient whose DICOMs need a transpose (240 planes), alone in each 4D layout:
    every frame of all three would be 700 planes of 256 x 256 per dataset."""
    base = tmp_path_factory.mktemp("one-patient")
    cines = sunnybrook_cines[:1]
    return {
        "cines": cines,
        "acdc": volumes.write_acdc(cines, base / "acdc"),
        "mnms": volumes.write_mnms(cines, base / "mnms"),
    }


@pytest.mark.parametrize("layout", ["acdc", "mnms"])
def test_labels_all_adds_the_unlabelled_frames_with_empty_masks(one_patient, layout):
    root, cines = one_patient[layout], one_patient["cines"]
    expected = volumes.expected_records(cines, layout, labels="all")
    assert len(expected) == cines[0].frames * cines[0].positions
    assert len(daskmri.scan(root, layout=_preset(layout), labels="all").table) == len(expected)
    ds = _load(root, layout, labels="all")
    _assert_records(ds, expected, layout)
    for i in range(ds.sizes["record"]):
        labelled = str(ds["phase"].values[i]) in ("ED", "ES")
        for kind in ("lv", "myo", "rv"):
            if not labelled:
                assert not ds[f"has_{kind}"].values[i]
                assert not ds[kind].values[i].any()


@pytest.mark.parametrize(
    "variant",
    [
        volumes.Variant((False, False, True)),  # the slice axis reversed
        volumes.Variant((False, False, False), transpose=True),
        volumes.Variant((True, True, False), transpose=True),
        volumes.Variant((True, False, True)),
    ],
    ids=str,
)
def test_every_voxel_order_gives_an_identical_dataset(one_patient, tmp_path, variant):
    """The patient whose DICOMs need a transpose, written in another voxel order with
    the affine to match: the same records, pixels, masks and numbering."""
    cines = one_patient["cines"]
    reference = _load(one_patient["acdc"], "acdc")
    ds = _load(volumes.write_acdc(cines, tmp_path / "variant", variant), "acdc")
    for name in ("image", "lv", "myo", "rv", *COORDS[2:]):
        assert np.array_equal(ds[name].values, reference[name].values), name
    for name in ("source_row_spacing", "source_column_spacing"):
        assert np.allclose(ds[name].values, reference[name].values, atol=1e-4)
    _assert_records(ds, volumes.expected_records(cines, "acdc"), "acdc")


@pytest.mark.parametrize("variant", volumes.VARIANTS, ids=str)
def test_every_voxel_order_of_msd_gives_the_expected_records(sunnybrook_cines, tmp_path, variant):
    root = volumes.write_msd(sunnybrook_cines, tmp_path / "msd", variant)
    _assert_records(_load(root, "msd"), volumes.expected_records(sunnybrook_cines, "msd"), "msd")


# -- synthetic volumes --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["acdc", "mnms", "msd-heart"])
def test_synthetic_volumes_load_as_their_phantom(tmp_path, layout):
    frames, slices, shape = 6, 4, (40, 32)
    root = synth.make_volume_dataset(
        tmp_path / "d", layout=layout, patients=2, frames=frames, slices=slices, shape=shape
    )
    short = "msd" if layout == "msd-heart" else layout
    ds = _load(root, short, labels="all") if short != "msd" else _load(root, short)
    ed, es = synth.volume_ed_es(frames)
    values = synth.VOLUME_LABELS[layout]
    expected = {}
    for patient, name in enumerate(synth.volume_patient_ids(layout, 2), start=1):
        affine = synth.volume_affine(patient, slices, shape)
        raw, masks = synth.volume_phantom(
            seed=0, patient=patient, frames=frames, slices=slices, shape=shape
        )
        slope, inter = synth.volume_rescale(patient) or (1.0, 0.0)
        kept = [ed] if short == "msd" else list(range(frames))
        images = volumes.planes_by_rule((raw * slope + inter)[..., kept].astype(np.float32), affine)
        planes = {
            kind: volumes.planes_by_rule(masks["lv" if kind == "la" else kind][..., kept], affine)
            for kind in values
        }
        for n, f in enumerate(kept):
            for s in range(slices):
                labelled = f in (ed, es)
                expected[(name, 0 if short == "msd" else f, s)] = (
                    images[n, s],
                    {k: planes[k][n, s] & labelled for k in values},
                )
    keys = [_key(ds, i) for i in range(ds.sizes["record"])]
    assert sorted(keys) == sorted(expected)
    for i, key in enumerate(keys):
        image, masks = expected[key]
        assert np.allclose(ds["image"].values[i], image, rtol=0, atol=1e-4), key
        for kind, mask in masks.items():
            assert np.array_equal(ds[kind].values[i], mask), (key, kind)
    # Rows along y (1.5 mm), columns along x (1.25 mm): the spacing permuted with the axes.
    assert np.allclose(ds["source_row_spacing"].values, synth.VOLUME_SPACING[1], atol=1e-4)
    assert np.allclose(ds["source_column_spacing"].values, synth.VOLUME_SPACING[0], atol=1e-4)


# -- nibabel's own files ----------------------------------------------------------------


def _nibabel_file(name: str) -> str:
    from nibabel.testing import data_path

    path = os.path.join(data_path, name)
    if not os.path.exists(path):
        pytest.skip(f"nibabel's test file {name} is not installed (nibabel.testing.data_path)")
    return path


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"])
def test_nibabels_3d_files_read_as_msd_volumes_equal_get_fdata(tmp_path, name):
    """A file nobody here made, as an MSD case (its label an empty map on its grid):
    the records are nibabel's get_fdata, in the convention, slice by slice."""
    source = _nibabel_file(name)
    image = nibabel.load(source)
    if len(image.shape) != 3:
        pytest.skip(f"{name} is {len(image.shape)}D here")
    ext = ".nii.gz" if name.endswith(".gz") else ".nii"
    (tmp_path / "imagesTr").mkdir()
    shutil.copy(source, tmp_path / "imagesTr" / f"la_001{ext}")
    (tmp_path / "labelsTr").mkdir()
    label = nibabel.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine)
    nibabel.save(label, str(tmp_path / "labelsTr" / f"la_001{ext}"))
    ds = _load(tmp_path, "msd")
    expected = volumes.planes_by_rule(image.get_fdata(dtype=np.float32), image.affine)[0]
    assert ds.sizes["record"] == expected.shape[0]
    order = np.argsort(ds["slice"].values)
    assert np.array_equal(ds["image"].values[order], expected)
    assert not ds["la"].values.any()


def test_nibabels_4d_example_reads_every_frame_as_acdc(tmp_path):
    source = _nibabel_file("example4d.nii.gz")
    image = nibabel.load(source)
    folder = tmp_path / "patient001"
    folder.mkdir()
    frames = image.shape[3]
    (folder / "Info.cfg").write_text(f"ED: 1\nES: 2\nNbFrame: {frames}\n")
    shutil.copy(source, folder / "patient001_4d.nii.gz")
    data = image.get_fdata(dtype=np.float32)
    for frame in (0, 1):
        stem = folder / f"patient001_frame{frame + 1:02d}"
        # float32 frames: exactly the 4D file's scaled values.
        nibabel.save(nibabel.Nifti1Image(data[..., frame], image.affine), f"{stem}.nii.gz")
        labels = nibabel.Nifti1Image(np.zeros(data.shape[:3], np.uint8), image.affine)
        nibabel.save(labels, f"{stem}_gt.nii.gz")
    ds = _load(tmp_path, "acdc", labels="all")
    expected = volumes.planes_by_rule(data, image.affine)
    assert ds.sizes["record"] == expected.shape[0] * expected.shape[1]
    for i in range(ds.sizes["record"]):
        _, frame, s = _key(ds, i)
        assert np.array_equal(ds["image"].values[i], expected[frame, s]), (frame, s)
