"""Slices of mixed sizes and pixel spacings fitted into one frame (fit="pad_or_crop",
spacing=), their geometry coordinates, and to_source back onto the source slice,
against exact ground truth from the synthetic generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

import daskmri
from daskmri import synth
from daskmri.fit import GEOMETRY, Geometry, paste, place, to_source

from .reference import iou, pnpoly_exact

FRAME = (48, 64)
#: Pad on both axes, crop on both, taller but narrower, and one pixel off each way.
SHAPES = [(40, 56), (56, 80), (60, 40), (49, 63)]


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "data"
    return synth.make_dataset(root, patients=len(SHAPES), slices=6, shape=SHAPES, seed=3)


def expected_record(patient: int, instance: int) -> tuple[np.ndarray, ...]:
    """The exact frame image and masks of one synthetic record: its pixels and its
    contours shifted by the centring offsets (the mask by an independent rasteriser)."""
    shape = synth.patient_shape(SHAPES, patient)
    offsets = ((FRAME[0] - shape[0]) // 2, (FRAME[1] - shape[1]) // 2)
    pixels = synth.slice_pixels(seed=3, patient=patient, instance=instance, shape=shape)
    rescale = synth.patient_rescale(patient)
    image = pixels.astype(np.float64)
    if rescale is not None:
        image = image * rescale[0] + rescale[1]
    image = paste(image.astype(np.float32), *offsets, FRAME)
    masks = []
    for polygon in synth.slice_contours(seed=3, patient=patient, instance=instance, shape=shape):
        if polygon is None:
            masks.append(np.zeros(FRAME, bool))
        else:
            masks.append(pnpoly_exact(polygon + np.array([offsets[1], offsets[0]]), FRAME))
    return image, masks[0], masks[1], offsets


class TestPadOrCrop:
    def test_every_slice_is_centred_exactly(self, mixed_root):
        ds = daskmri.load_dataset(mixed_root, shape=FRAME, fit="pad_or_crop", scheduler="sync")
        ds = ds.compute()
        assert ds.sizes["record"] == len(SHAPES) * 4  # instances 2, 3, 4, 6 have contours
        for k in range(ds.sizes["record"]):
            patient = int(str(ds.patient_id[k].item())[3:])
            instance = int(ds.instance[k])
            image, inner, outer, offsets = expected_record(patient, instance)
            assert np.array_equal(ds.image[k].values, image), (patient, instance)
            assert np.array_equal(ds.icontour[k].values, inner), (patient, instance)
            assert np.array_equal(ds.ocontour[k].values, outer), (patient, instance)
            assert (int(ds.row_offset[k]), int(ds.column_offset[k])) == offsets
            shape = synth.patient_shape(SHAPES, patient)
            assert (int(ds.source_rows[k]), int(ds.source_columns[k])) == shape
            assert float(ds.row_scale[k]) == 1.0 and float(ds.source_row_spacing[k]) == 1.25

    def test_to_source_gives_back_the_source_mask(self, mixed_root):
        ds = daskmri.load_dataset(mixed_root, shape=FRAME, fit="pad_or_crop", scheduler="sync")
        for k in range(ds.sizes["record"]):
            record = ds.isel(record=k)
            patient, instance = int(str(record.patient_id.item())[3:]), int(record.instance)
            shape = synth.patient_shape(SHAPES, patient)
            inner, _ = synth.slice_contours(seed=3, patient=patient, instance=instance, shape=shape)
            if inner is None:
                continue
            # The source pixels that landed in the frame: the rest was cropped away.
            offsets = ((FRAME[0] - shape[0]) // 2, (FRAME[1] - shape[1]) // 2)
            seen = paste(np.ones(FRAME, bool), -offsets[0], -offsets[1], shape)
            back = to_source(record.icontour.values, record)
            assert back.shape == shape and back.dtype == bool
            assert np.array_equal(back, pnpoly_exact(inner, shape) & seen), (patient, instance)
            image = to_source(record.image.values, record)
            assert image.shape == shape and not image[~seen].any()

    def test_the_default_drops_other_sizes_and_says_how_to_keep_them(self, mixed_root):
        ds = daskmri.load_dataset(mixed_root, shape=FRAME, scheduler="sync")
        assert ds.sizes["record"] == 0
        reasons = daskmri.dropped(ds).reason
        assert len(reasons) == len(SHAPES) * 4
        assert all("fit='pad_or_crop'" in r for r in reasons)
        assert "image is 40x56 but this dataset's images are 48x64" in reasons.iloc[0]

    def test_processes_a_cluster_and_the_store_agree(self, mixed_root, tmp_path, client):
        kwargs = {"shape": FRAME, "fit": "pad_or_crop", "chunk_size": 5}
        expected = daskmri.load_dataset(mixed_root, scheduler="sync", **kwargs).compute()
        daskmri.build(mixed_root, tmp_path / "ds.zarr", scheduler="processes", **kwargs)
        reopened = daskmri.open_dataset(tmp_path / "ds.zarr")
        for ds in (
            daskmri.load_dataset(mixed_root, scheduler="processes", **kwargs),
            daskmri.load_dataset(mixed_root, client=client, **kwargs),
            reopened,
        ):
            with client.as_current():
                computed = ds.compute()
            assert computed.drop_attrs().identical(expected.drop_attrs())
        record = reopened.isel(record=3)
        assert np.array_equal(
            to_source(record.icontour.values, record),
            to_source(expected.isel(record=3).icontour.values, expected.isel(record=3)),
        )
        assert reopened.attrs["fit"] == "pad_or_crop"

    def test_a_custom_reader_is_centred_too(self, mixed_root):
        def reader(record):  # its own arrays, of the source size
            image = daskmri.read_dicom(record.image_path)
            return image, np.ones(image.shape, bool), None

        ds = daskmri.load_dataset(
            mixed_root, shape=FRAME, fit="pad_or_crop", reader=reader, scheduler="sync"
        )
        k = int(np.flatnonzero(ds.source_rows.values == 56)[0])  # a slice cropped on both axes
        assert (int(ds.row_offset[k]), int(ds.column_offset[k])) == (-4, -8)
        assert ds.icontour[k].values.all()  # the crop fills the frame
        k = int(np.flatnonzero(ds.source_rows.values == 40)[0])  # padded on both axes
        expected = paste(np.ones((40, 56), bool), 4, 4, FRAME)
        assert np.array_equal(ds.icontour[k].values, expected)


def test_resuming_a_store_with_another_fit_is_refused(mixed_root, tmp_path):
    store = tmp_path / "ds.zarr"
    daskmri.build(mixed_root, store, shape=FRAME, fit="pad_or_crop", scheduler="sync")
    with pytest.raises(daskmri.DaskmriError, match="was built with fit='pad_or_crop'"):
        daskmri.build(mixed_root, store, shape=FRAME, scheduler="sync")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A 96x96 dataset at 1.25 mm, and the same slices downsampled 2x (2x2 means,
    PixelSpacing 2.5 mm, contours mapped by x -> (x + 0.5) / 2 - 0.5)."""
    base = tmp_path_factory.mktemp("spacing")
    fine = synth.make_dataset(base / "fine", patients=1, slices=6, shape=(96, 96), seed=5)
    coarse = base / "coarse"
    shutil.copytree(fine, coarse)
    for path in (coarse / "dicoms").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float64)
        small = pixels.reshape(48, 2, 48, 2).mean(axis=(1, 3)).round().astype(np.int16)
        ds.Rows, ds.Columns, ds.PixelSpacing = 48, 48, [2.5, 2.5]
        ds.PixelData = small.tobytes()
        ds.save_as(path)
    for path in (coarse / "contourfiles").rglob("*.txt"):
        points = np.loadtxt(path)
        path.write_text("".join(f"{x:.6f} {y:.6f}\n" for x, y in (points + 0.5) / 2 - 0.5))
    return fine, coarse


class TestSpacing:
    def test_a_slice_downsampled_and_resampled_back_matches(self, pair):
        fine, coarse = pair
        original = daskmri.load_dataset(fine, scheduler="sync").compute()
        back = daskmri.load_dataset(coarse, spacing=1.25, scheduler="sync").compute()
        assert back.sizes == original.sizes  # the frame: the first slice, resampled
        assert (back.row_scale == 2.0).all() and (back.source_rows == 48).all()
        assert (back.row_offset == 0).all() and (back.source_row_spacing == 2.5).all()
        for k in range(original.sizes["record"]):
            r = np.corrcoef(original.image[k].values.ravel(), back.image[k].values.ravel())[0, 1]
            assert r >= 0.97, (k, r)
            for name in ("icontour", "ocontour"):
                if original[f"has_{name}"][k]:
                    assert iou(original[name][k].values, back[name][k].values) >= 0.9

    def test_to_source_maps_back_onto_the_coarse_grid(self, pair):
        _, coarse = pair
        back = daskmri.load_dataset(coarse, spacing=1.25, scheduler="sync")
        native = daskmri.load_dataset(coarse, scheduler="sync").compute()
        for k in range(back.sizes["record"]):
            record = back.isel(record=k)
            for name in ("icontour", "ocontour"):
                if bool(record[f"has_{name}"]):
                    mapped = to_source(record[name].values, record)
                    assert mapped.shape == (48, 48) and mapped.dtype == bool
                    assert iou(mapped, native[name][k].values) >= 0.9
            image = to_source(record.image.values, record)
            r = np.corrcoef(image.ravel(), native.image[k].values.ravel())[0, 1]
            assert r >= 0.97

    def test_a_slice_without_pixel_spacing_is_dropped_saying_so(self, tmp_path):
        root = synth.make_dataset(
            tmp_path / "d", patients=2, slices=4, shape=(32, 32), spacing=[1.0, None]
        )
        ds = daskmri.load_dataset(root, spacing=1.0, scheduler="sync")
        assert set(ds.patient_id.values) == {"SYN0001"}
        lost = daskmri.dropped(ds)
        assert (lost.patient_id == "SYN0002").all() and len(lost) == 3  # instances 2, 3, 4
        assert all("no PixelSpacing" in r for r in lost.reason)
        # Without spacing= it is read as it is, its spacing NaN.
        ds = daskmri.load_dataset(root, scheduler="sync")
        assert np.isnan(ds.source_row_spacing.values[ds.patient_id.values == "SYN0002"]).all()


class TestGeometry:
    @pytest.mark.parametrize(
        ("source", "offsets"),
        [((40, 56), (4, 4)), ((56, 80), (-4, -8)), ((60, 40), (-6, 12)), ((49, 63), (-1, 0)),
         ((47, 65), (0, -1)), ((48, 64), (0, 0))],
    )  # fmt: skip
    def test_centring(self, source, offsets):
        geometry = place(source, FRAME)
        assert (geometry.row_offset, geometry.column_offset) == offsets
        assert geometry.scaled_shape == source and not geometry.scaled

    def test_points_map_with_aligned_pixel_edges(self):
        geometry = place((10, 20), (40, 40), spacing=(2.0, 1.0), target=(1.0, 1.0))
        assert geometry.scaled_shape == (20, 20)
        # The source's far edge (x = 19.5, y = 9.5) lands on the resampled far edge.
        edge = geometry.to_frame(np.array([[-0.5, -0.5], [19.5, 9.5]]))
        assert np.allclose(
            edge - [geometry.column_offset, geometry.row_offset], [[-0.5, -0.5], [19.5, 19.5]]
        )

    def test_geometry_round_trips_its_row(self):
        geometry = place((30, 50), FRAME, spacing=(0.7, 0.9), target=(1.0, 1.0))
        assert Geometry.of(geometry.row()) == geometry and len(geometry.row()) == len(GEOMETRY)

    def test_paste_is_cut_where_it_falls_outside(self):
        source = np.arange(12).reshape(3, 4)
        assert np.array_equal(paste(source, -1, 2, (2, 3)), [[0, 0, 4], [0, 0, 8]])
        assert np.array_equal(paste(source, 5, 0, (2, 3)), np.zeros((2, 3), int))


def test_bad_fit_and_spacing_arguments(synth_root):
    with pytest.raises(ValueError, match="fit must be one of"):
        daskmri.load_dataset(synth_root, fit="stretch")
    for bad in (0, -1.0, (1.0,), (1.0, "x"), float("nan")):
        with pytest.raises(ValueError, match="spacing must be"):
            daskmri.load_dataset(synth_root, spacing=bad)


class TestReviewFindings:
    def test_a_custom_readers_mask_of_another_size_is_dropped_not_placed(self, mixed_root):
        def reader(record):
            image = daskmri.read_dicom(record.image_path)
            return image, np.ones((4, 4), bool), None

        ds = daskmri.load_dataset(
            mixed_root, shape=FRAME, fit="pad_or_crop", reader=reader, scheduler="sync"
        )
        lost = daskmri.dropped(ds)
        assert ds.sizes["record"] == 0 and len(lost) == len(SHAPES) * 4
        assert all("reader returned a icontour mask of shape (4, 4)" in r for r in lost.reason)

    def test_spacing_with_a_custom_reader_is_refused(self, synth_root):
        with pytest.raises(ValueError, match="resample in the reader"):
            daskmri.load_dataset(synth_root, spacing=1.0, reader=daskmri.read_record)

    @pytest.mark.parametrize("absurd", [1e300, 1e-300])
    def test_an_absurd_pixel_spacing_drops_its_slices_and_never_sets_the_frame(
        self, tmp_path, absurd
    ):
        root = synth.make_dataset(
            tmp_path / "d", patients=2, slices=4, shape=(32, 32), spacing=[absurd, 1.0]
        )
        ds = daskmri.load_dataset(root, spacing=0.5, fit="pad_or_crop", scheduler="sync")
        assert ds.sizes["y"] == ds.sizes["x"] == 64  # from patient 2: 32 px at 1.0 -> 0.5 mm
        assert set(ds.patient_id.values) == {"SYN0002"}
        lost = daskmri.dropped(ds)
        assert len(lost) == 3 and all("would resample the slice" in r for r in lost.reason)

    def test_to_source_reads_labels_by_the_nearest_pixel(self):
        geometry = place((8, 8), (16, 16), spacing=(1.0, 1.0), target=(0.5, 0.5))
        record = xr_record(geometry)
        labels = np.zeros((16, 16), np.int64)
        labels[:, 8:] = 3
        back = to_source(labels, record)
        assert set(np.unique(back).tolist()) <= {0, 3} and back.dtype == np.int64
        assert (back[:, 4:] == 3).all() and (back[:, :4] == 0).all()

    def test_a_binary_pixel_spacing_is_read_as_pydicom_reads_it(self, tmp_path):
        from daskmri.dicom import _fast_header, read_slice

        root = synth.make_dataset(tmp_path / "d", patients=1, slices=2, shape=(32, 32))
        path = root / "dicoms" / "SYN0001" / "1.dcm"
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.add_new(0x00280030, "FD", [0.7, 0.8])
        ds.save_as(path)
        assert _fast_header(path.read_bytes()) is None  # pydicom's job
        image, spacing = read_slice(path)
        assert spacing == (0.7, 0.8) and image.shape == (32, 32)


def xr_record(geometry: Geometry):
    import xarray as xr

    return xr.Dataset(coords=dict(zip(GEOMETRY, geometry.row(), strict=True)))
