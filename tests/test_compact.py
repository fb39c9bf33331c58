"""The compact records (issue 26): daskmri.compact's formulas, the readers' compact
form against today's float32 on every real file, the dtype across a dataset (in
memory and in a store, retyped once), and the lazy derived variables."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydicom.pixels import apply_modality_lut

import daskmri
from daskmri.compact import (
    MAX_KINDS,
    Compact,
    common_dtype,
    fits,
    label_dtype,
    pack_labels,
    padding,
    to_dtype,
    unpack_labels,
    verified,
    widen,
)
from daskmri.dicom import read_dicom, read_slice_compact
from daskmri.parse import DefaultReader, parse_chunk, read_record
from daskmri.plan import plan_chunks
from daskmri.record import Record
from daskmri.schema import COMPACT
from daskmri.testing import assert_records_equal, eager_load, raise_if_dask_computes

INTEGERS = ("uint8", "int8", "uint16", "int16", "uint32", "int32")


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def pydicom_image(path) -> np.ndarray:
    """Today's float32 of a DICOM file, by pydicom alone."""
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


# -- the formulas ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(INTEGERS),
    slope=st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: v != 0),
    intercept=st.floats(-1e4, 1e4, allow_nan=False),
    data=st.data(),
)
def test_widen_is_the_float64_rescale_rounded_once(dtype, slope, intercept, data):
    pixels = data.draw(hnp.arrays(dtype, (3, 4)))
    expected = (pixels.astype(np.float64) * slope + intercept).astype(np.float32)
    assert np.array_equal(bits(widen(pixels, slope, intercept)), bits(expected))
    compact = verified(expected, Compact(pixels, slope, intercept))
    assert compact.pixels.dtype == dtype and not compact.is_fallback


def test_widen_per_record_and_its_plain_cast():
    pixels = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 12
    slope, intercept = np.array([1.0, 0.25]), np.array([0.0, -3.5])
    out = widen(pixels, slope, intercept)
    for k in range(2):
        expected = (pixels[k].astype(np.float64) * slope[k] + intercept[k]).astype(np.float32)
        assert np.array_equal(bits(out[k]), bits(expected))
    big = np.array([[2**31 - 1, -(2**31), 16777217]], np.int32)  # not exact in float32
    assert np.array_equal(widen(big, 1.0, 0.0), big.astype(np.float64).astype(np.float32))
    with pytest.raises(ValueError, match="one value per record"):
        widen(pixels, np.ones(3), np.zeros(3))


def test_verified_falls_back_on_any_differing_bit():
    pixels = np.array([[0, 1, 2]], np.int16)
    image = widen(pixels, 0.5, 1.0)
    assert verified(image, Compact(pixels, 0.5, 1.0)).pixels is pixels
    off = image.copy()
    off.view(np.uint32)[0, 2] += 1  # one ulp
    fallback = verified(off, Compact(pixels, 0.5, 1.0))
    assert fallback.is_fallback and (fallback.slope, fallback.intercept) == (1.0, 0.0)
    assert np.array_equal(bits(fallback.pixels), bits(off))
    assert verified(image, None).is_fallback
    assert verified(image, Compact(pixels[:, :2], 0.5, 1.0)).is_fallback  # another shape
    nan = np.array([[np.nan]], np.float32)
    assert verified(nan, None).image().view(np.uint32) == nan.view(np.uint32)


def test_common_dtype_fits_and_to_dtype_are_exact():
    assert common_dtype(["int16", "uint16"]) == np.int32
    assert common_dtype(["uint8", "int8", "int16"]) == np.int16
    assert common_dtype(["uint32", "int32"]) == np.int64
    assert common_dtype(["uint64", "int8"]) == np.float32  # no integer type holds both
    assert common_dtype(["int16", "float32"]) == np.float32
    assert fits("int16", "float32") and fits("uint8", "int16") and not fits("uint16", "int16")
    assert not fits("float32", "int32")
    pixels = np.array([[[-5, 300]], [[7, 0]]], np.int16)
    slope, intercept = np.array([0.1, 3.0]), np.array([-2.0, 0.5])
    image = widen(pixels, slope, intercept)
    for dtype in ("int32", "int64", "float32"):
        p, s, i = to_dtype(pixels, slope, intercept, dtype)
        assert p.dtype == dtype and np.array_equal(bits(widen(p, s, i)), bits(image))
    with pytest.raises(ValueError, match="do not fit"):
        to_dtype(pixels, slope, intercept, "uint16")


def test_padding_widens_to_exactly_zero_or_is_refused():
    assert padding(Compact(np.zeros((1, 1), np.int16), 2.0, -2048.0)) == 1024
    assert padding(Compact(np.zeros((1, 1), np.uint16), 1.0, 0.0)) == 0
    assert padding(Compact(np.zeros((1, 1), np.uint16), 3.0, 1.0)) is None  # -1/3: no integer
    assert padding(Compact(np.zeros((1, 1), np.uint8), 1.0, 1000.0)) is None  # out of range


@pytest.mark.parametrize(
    ("n_kinds", "dtype"),
    [
        (1, "uint8"),
        (8, "uint8"),
        (9, "uint16"),
        (16, "uint16"),
        (17, "uint32"),
        (33, "uint64"),
        (64, "uint64"),
    ],
)
def test_labels_round_trip_in_every_width(n_kinds, dtype):
    rng = np.random.default_rng(n_kinds)
    kinds = [f"k{k}" for k in range(n_kinds)]
    masks = {kind: rng.random((5, 7)) < 0.3 for kind in kinds}
    masks[kinds[-1]] = np.ones((5, 7), bool)  # the top bit set everywhere
    if n_kinds > 1:
        masks[kinds[0]] = None  # a record without that kind
    labels = pack_labels(masks, kinds)
    assert labels.dtype == dtype == label_dtype(n_kinds)
    back = unpack_labels(labels, kinds)
    for kind in kinds:
        expected = np.zeros((5, 7), bool) if masks[kind] is None else masks[kind]
        assert back[kind].dtype == bool and np.array_equal(back[kind], expected), kind


@settings(max_examples=40, deadline=None)
@given(n_kinds=st.integers(1, MAX_KINDS), data=st.data())
def test_labels_round_trip_any_masks(n_kinds, data):
    kinds = [f"k{k}" for k in range(n_kinds)]
    masks = {kind: data.draw(hnp.arrays(bool, (2, 3))) for kind in kinds}
    back = unpack_labels(pack_labels(masks, kinds), kinds)
    assert all(np.array_equal(back[k], masks[k]) for k in kinds)


def test_more_than_64_kinds_are_refused():
    kinds = [f"k{k}" for k in range(65)]
    with pytest.raises(ValueError, match="at most 64"):
        pack_labels({"k0": np.ones(2, bool)}, kinds)
    with pytest.raises(ValueError, match="at most 64"):
        unpack_labels(np.zeros(2, np.uint64), kinds)


# -- bit-identity on every real file -----------------------------------------------------


def every_dicom(root: Path) -> list[Path]:
    return sorted((root / "dicoms").rglob("*.dcm"))


def test_every_real_dicom_widens_to_todays_float32(real_root):
    """Every DICOM of the real sample (labelled or not), through the chunk task the
    dataset uses: the derived float32 equals read_dicom and pydicom bit for bit, and
    the pixels are the source's integers (not the fallback)."""
    paths = every_dicom(real_root)
    assert len(paths) >= 700
    records = [Record("P", "P", k, str(path)) for k, path in enumerate(paths)]
    dtypes = set()
    for lo in range(0, len(records), 64):
        chunk = records[lo : lo + 64]
        shape = read_dicom(chunk[0].image_path).shape
        same = [r for r in chunk if read_dicom(r.image_path).shape == shape]
        result = parse_chunk(same, shape=shape, reader=read_record, kinds=())
        assert len(result.kept) == len(same) and result.dtype != "float32"
        dtypes.add(result.dtype)
        derived = widen(result.pixels, result.slope, result.intercept)
        for k, record in enumerate(same):
            today = read_dicom(record.image_path)
            assert np.array_equal(bits(derived[k]), bits(today)), record.image_path
            assert np.array_equal(bits(today), bits(pydicom_image(record.image_path)))
            _, compact, _ = read_slice_compact(record.image_path)
            assert not compact.is_fallback and np.array_equal(bits(compact.image()), bits(today))
    assert dtypes <= set(INTEGERS)


@pytest.mark.parametrize("where", ["memory", "store"])
def test_real_dataset_equals_eager_pydicom_bit_for_bit(real_root, tmp_path, where):
    """load_dataset and a store of the real sample: derived image and masks equal the
    eager pydicom loop (assert_records_equal compares the image's bits), compactly held."""
    if where == "memory":
        ds = daskmri.load_dataset(real_root, chunk_size=16, scheduler="processes")
    else:
        daskmri.build(real_root, tmp_path / "ds.zarr", chunk_size=16, scheduler="processes")
        ds = daskmri.open_dataset(tmp_path / "ds.zarr")
    assert ds.pixels.dtype.kind in "iu" and ds.labels.dtype == np.uint8
    assert_records_equal(ds, eager_load(real_root))


def test_real_volume_conversions_equal_todays_reader(sunnybrook_volumes):
    """Every plane of the real sample converted to NIfTI volumes (each layout): the
    dataset's derived image and masks equal the reader's float32 and masks."""
    from daskmri.parse import DefaultReader
    from daskmri.sources import volumes

    for name, root in sunnybrook_volumes.items():
        layout = {"acdc": volumes.ACDC, "mnms": volumes.MNMS, "msd": volumes.MSD_HEART}[name]
        ds = daskmri.load_dataset(root, layout=layout, scheduler="sync", chunk_size=32)
        assert ds.pixels.dtype.kind in "iu", name
        table, _ = daskmri.scan(root, layout=layout)
        records = [r for chunk in daskmri.plan.plan_chunks(table).chunks for r in chunk]
        reader = DefaultReader(shape=ds.image.shape[1:])
        today = [
            fitted
            for _, unit in itertools.groupby(records, key=lambda r: r.unit)
            for fitted in reader.read_unit(list(unit))
        ]
        image = ds.image.values
        assert len(today) == len(image) == ds.sizes["record"]
        for k, fitted in enumerate(today):
            assert np.array_equal(bits(image[k]), bits(fitted[0])), (name, k)
            for j, kind in enumerate(layout.kinds):
                mask = fitted[1 + j]
                expected = np.zeros(image.shape[1:], bool) if mask is None else mask
                assert np.array_equal(ds[kind].values[k], expected), (name, k, kind)


def nibabel_files() -> list[str]:
    from nibabel.testing import data_path

    names = ("example4d.nii.gz", "anatomical.nii", "example_nifti2.nii.gz", "functional.nii")
    return [os.path.join(data_path, n) for n in names if os.path.exists(os.path.join(data_path, n))]


@pytest.mark.parametrize("path", nibabel_files() or [None])
def test_nibabel_files_widen_to_todays_float32(path):
    if path is None:
        pytest.skip("nibabel's test data folder (nibabel.testing.data_path) is not installed")
    from daskmri.sources.nifti import (
        open_image,
        plane_orientation,
        read_raw_frames,
        read_volume,
        to_planes,
    )

    today = read_volume(path, max_voxels=10**9).images
    image = open_image(path, limits=daskmri.Limits(max_voxels=10**9))
    raw, slope, inter = read_raw_frames(image, path)
    if raw.dtype.kind == "f":
        pytest.skip(f"{os.path.basename(path)} holds float voxels: kept float32")
    planes = to_planes(raw, plane_orientation(image.affine))
    assert np.array_equal(bits(widen(np.ascontiguousarray(planes), slope, inter)), bits(today))


# -- laziness ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["memory", "store"])
def test_derived_variables_compute_nothing_until_read(synth_root, tmp_path, where):
    if where == "memory":
        ds = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")
    else:
        daskmri.build(synth_root, tmp_path / "s.zarr", chunk_size=4, scheduler="sync")
        with raise_if_dask_computes():
            ds = daskmri.open_dataset(tmp_path / "s.zarr")
    with raise_if_dask_computes():
        mask = ds["icontour"]
        image = ds["image"].isel(record=slice(1, 5))
        total = ds["ocontour"].sum()
    assert mask.dtype == bool and image.dtype == np.float32
    held = ds[list(COMPACT)].compute()
    expected = (held.labels.values & 1).astype(bool)
    assert np.array_equal(mask.values, expected)
    widened = widen(held.pixels.values, held.slope.values, held.intercept.values)
    assert np.array_equal(bits(image.values), bits(widened[1:5]))
    assert int(total) == int(((held.labels.values >> 1) & 1).sum())


def test_in_memory_dataset_holds_only_the_compact_arrays(synth_root):
    ds = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="processes")
    graph_arrays = {
        name: [
            v
            for v in dict(ds[name].data.dask).values()
            if isinstance(getattr(v, "value", v), np.ndarray)
        ]
        for name in ("pixels", "labels")
    }
    held = sum(a.nbytes for arrays in graph_arrays.values() for a in arrays)
    n, rows, columns = ds.image.shape
    assert held == n * rows * columns * (ds.pixels.dtype.itemsize + 1)
    today = n * rows * columns * (4 + len(json.loads(ds.attrs["kinds"])))  # float32 + bools
    assert held <= 0.55 * today


# -- the dtype across a dataset ------------------------------------------------------------


def unsigned_copy(path: Path) -> None:
    """Rewrite a synthetic (int16) DICOM as uint16 with the same stored values + 40000."""
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(np.int32) + 40000
    ds.PixelRepresentation = 0
    ds.PixelData = values.astype("<u2").tobytes()
    ds.save_as(path)


def modality_lut_copy(path: Path) -> None:
    """Rewrite a DICOM with a Modality LUT in place of its rescale: no compact form."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(path)
    for name in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if name in ds:
            delattr(ds, name)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [(3 * v) // 2 for v in range(4096)])  # LUTData
    ds.ModalityLUTSequence = Sequence([item])
    ds.save_as(path)


@pytest.fixture
def mixed_root(damaged_root) -> Path:
    """The synthetic dataset with one uint16 DICOM among its int16 ones (patient 2,
    instance 6: not in the first chunk, so the store's first guess is int16)."""
    unsigned_copy(damaged_root / "dicoms" / "SYN0002" / "6.dcm")
    return damaged_root


def test_a_uint16_record_among_int16_ones_makes_the_dataset_int32(mixed_root, tmp_path, caplog):
    memory = daskmri.load_dataset(mixed_root, chunk_size=3, scheduler="processes")
    assert memory.pixels.dtype == np.int32
    assert_records_equal(memory, eager_load(mixed_root))
    store = tmp_path / "ds.zarr"
    with caplog.at_level(logging.INFO, logger="daskmri.store.builder"):
        daskmri.build(mixed_root, store, chunk_size=3, scheduler="sync")
    assert any("retyping it to int32" in r.getMessage() for r in caplog.records)
    assert zarr.open_group(str(store)).attrs["pixels_dtype"] == "int32"
    ds = daskmri.open_dataset(store)
    assert ds.pixels.dtype == np.int32
    assert_records_equal(ds, eager_load(mixed_root))
    for name in COMPACT:  # the store holds what memory holds
        assert np.array_equal(ds[name].values, memory[name].values), name
    # Nothing left to do, and an update that finds nothing changed keeps the dtype.
    assert daskmri.build(mixed_root, store, chunk_size=3, scheduler="sync").parsed_chunks == 0


def test_update_with_a_modality_lut_record_retypes_the_store_to_float32(damaged_root, tmp_path):
    store = tmp_path / "ds.zarr"
    daskmri.build(damaged_root, store, chunk_size=3, scheduler="sync")
    assert daskmri.open_dataset(store).pixels.dtype == np.int16
    modality_lut_copy(damaged_root / "dicoms" / "SYN0001" / "4.dcm")
    _, compact, _ = read_slice_compact(damaged_root / "dicoms" / "SYN0001" / "4.dcm")
    assert compact.is_fallback
    report = daskmri.build(damaged_root, store, chunk_size=3, scheduler="sync", mode="update")
    ds = daskmri.open_dataset(store)
    assert ds.pixels.dtype == np.float32 and report.records == ds.sizes["record"]
    # The update appended the changed record: in (patient, instance) order again.
    ds = ds.isel(record=np.lexsort((ds.instance.values, ds.patient_id.values)))
    assert_records_equal(ds, eager_load(damaged_root))
    memory = daskmri.load_dataset(damaged_root, chunk_size=3, scheduler="sync")
    assert memory.pixels.dtype == np.float32
    assert_records_equal(memory, ds)


@pytest.mark.parametrize("how", ["reader", "spacing"])
def test_custom_readers_and_resampling_keep_float32(synth_root, how):
    def reader(record):
        image, *masks = read_record(record)
        return (image * 1, *masks)  # a plain tuple: no compact form

    options = {"reader": reader} if how == "reader" else {"spacing": 1.0, "fit": "pad_or_crop"}
    ds = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync", **options)
    assert ds.pixels.dtype == np.float32
    assert (ds.slope.values == 1).all() and (ds.intercept.values == 0).all()
    assert np.array_equal(bits(ds.image.values), bits(ds.pixels.values))


def test_a_store_of_format_4_is_refused_naming_the_rebuild(synth_root, tmp_path):
    store = tmp_path / "ds.zarr"
    daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
    zarr.open_group(str(store), mode="r+").attrs["format"] = 4
    with pytest.raises(daskmri.StoreError) as info:
        daskmri.open_dataset(store)
    message = str(info.value)
    assert "\n" not in message and "format 4" in message
    assert "daskmri.build(root, store, mode='overwrite')" in message
    daskmri.build(synth_root, store, chunk_size=4, scheduler="sync", mode="overwrite")
    assert daskmri.open_dataset(store).pixels.dtype == np.int16


@pytest.mark.parametrize("order", ["int16 first", "uint16 first", "fallback first"])
def test_a_chunk_of_mixed_records_is_what_each_record_reads(damaged_root, order):
    """One chunk of int16, uint16 and Modality-LUT (float32) records, in any order,
    through the build's reader (DefaultReader.compact_only: no float32 image, the pixels
    copied in as read, widened when a record needs more) and through a custom reader
    (the float32 image, verified): the same arrays, and each record's image is
    read_dicom's bit for bit."""
    folder = damaged_root / "dicoms" / "SYN0001"
    unsigned_copy(folder / "2.dcm")
    modality_lut_copy(folder / "4.dcm")
    chunks = plan_chunks(daskmri.scan(damaged_root), chunk_size=1000).chunks
    scanned = [r for chunk in chunks for r in chunk if r.patient_id == "SYN0001"]
    first = {"int16 first": 1, "uint16 first": 2, "fallback first": 4}[order]
    records = sorted(scanned, key=lambda r: r.instance != first)
    assert {2, 4} <= {r.instance for r in records}
    shape, kinds = read_dicom(records[0].image_path).shape, daskmri.SUNNYBROOK.kinds
    built = parse_chunk(records, shape=shape, reader=DefaultReader(shape=shape), kinds=kinds)
    custom = parse_chunk(records, shape=shape, reader=lambda r: read_record(r), kinds=kinds)
    assert built.dtype == custom.dtype == "float32"  # a Modality LUT record: the fallback
    for name in COMPACT:
        assert np.array_equal(bits(built.array(name)), bits(custom.array(name))), name
    derived = widen(built.pixels, built.slope, built.intercept)
    for k, record in enumerate(records):
        assert np.array_equal(bits(derived[k]), bits(read_dicom(record.image_path)))
    ints = [r for r in records if r.instance != 4]
    built = parse_chunk(ints, shape=shape, reader=DefaultReader(shape=shape), kinds=kinds)
    assert built.dtype == "int32" and built.slope.dtype == np.float64
    derived = widen(built.pixels, built.slope, built.intercept)
    for k, record in enumerate(ints):
        assert np.array_equal(bits(derived[k]), bits(read_dicom(record.image_path)))
