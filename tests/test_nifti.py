"""NIfTI volumes as planes (issue 25, Part 2): the orientation convention, its
invariance under every voxel order of one physical volume, the grid check, and
damaged files, each a one-line VolumeError."""

from __future__ import annotations

import gzip
import itertools
import os
import struct
import tracemalloc

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
from nibabel.orientations import apply_orientation, inv_ornt_aff  # noqa: E402

from daskmri.errors import RecordError, VolumeError  # noqa: E402
from daskmri.sources.nifti import (  # noqa: E402
    PlaneOrientation,
    plane_affine,
    plane_orientation,
    read_volume,
    same_grid,
    to_planes,
)

MAX_VOXELS = 10**7
SHAPE = (5, 7, 4)  # non-square planes: a transpose changes the shape
ZOOMS = (0.7, 1.3, 8.0)  # anisotropic: a spacing not permuted with the array shows


def _rotation(degrees: float, axis: int) -> np.ndarray:
    """A rotation by ``degrees`` about world ``axis``."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def _affine(rotation: np.ndarray, zooms=ZOOMS, origin=(-40.5, 12.25, 7.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


# Slightly oblique, like a planned cardiac stack: no axis is exactly a world axis.
OBLIQUE = _affine(_rotation(12, 0) @ _rotation(-9, 1) @ _rotation(20, 2))


def _variant(data: np.ndarray, affine: np.ndarray, flips, transpose: bool):
    """The same physical volume in another voxel order, the affine adjusted as nibabel
    does it (apply_orientation / inv_ornt_aff): independent of the code under test."""
    axes = (1, 0, 2) if transpose else (0, 1, 2)
    ornt = np.array([[axes[k], -1 if flips[k] else 1] for k in range(3)])
    new_affine = affine @ inv_ornt_aff(ornt, data.shape[:3])
    return apply_orientation(data, ornt), new_affine


def _save(data, affine, path, dtype=None) -> str:
    image = nibabel.Nifti1Image(np.asarray(data, dtype=dtype or data.dtype), affine)
    nibabel.save(image, str(path))
    return str(path)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- the convention ------------------------------------------------------------------


def test_a_ras_volume_runs_toward_left_posterior_inferior_by_hand():
    """Written out by hand: planes[s, r, c] = data[nx-1-c, ny-1-r, nz-1-s] for RAS+."""
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    orientation = plane_orientation(np.diag([*ZOOMS, 1.0]))
    planes = to_planes(data, orientation)
    nx, ny, nz = SHAPE
    assert planes.shape == (1, nz, ny, nx)
    for s, r, c in itertools.product(range(nz), range(ny), range(nx)):
        assert planes[0, s, r, c] == data[nx - 1 - c, ny - 1 - r, nz - 1 - s]
    # Rows are along y (1.3 mm apart), columns along x (0.7 mm): permuted with the array.
    assert orientation.pixel_spacing == pytest.approx((1.3, 0.7))
    assert orientation.slice_mm == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("plane", "rotation", "expected"),
    [
        # closest plane, voxel axes (x, y, z) -> world; the expected (slices, rows, columns)
        ("axial", np.eye(3), ("I", "P", "L")),
        ("coronal", _rotation(90, 0), ("P", "I", "L")),
        ("sagittal", _rotation(90, 1) @ _rotation(90, 2), ("L", "I", "P")),
    ],
)
def test_each_plane_follows_the_documented_table(plane, rotation, expected):
    affine = _affine(rotation)
    directions = plane_affine(affine, SHAPE, plane_orientation(affine))[:3, :3]
    names = {0: "L", 1: "P", 2: "I"}  # each index must step toward decreasing R, A, S
    got = []
    for column in directions.T:
        axis = int(np.argmax(np.abs(column)))
        assert column[axis] < 0, plane
        got.append(names[axis])
    assert tuple(got) == expected


def test_the_convention_holds_for_random_oblique_affines():
    rng = np.random.default_rng(25)
    for _ in range(200):
        # A signed permutation, tilted by up to 3 x 15 degrees: each voxel axis keeps one
        # closest world axis (past 45 degrees, io_orientation's tie-break decides).
        signed = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)
        tilt = [_rotation(rng.uniform(-15, 15), axis) for axis in range(3)]
        affine = _affine(
            tilt[0] @ tilt[1] @ tilt[2] @ signed,
            zooms=rng.uniform(0.5, 10, 3),
            origin=rng.normal(0, 50, 3),
        )
        slice_axis = int(rng.integers(3))
        orientation = plane_orientation(affine, slice_axis=slice_axis)
        directions = plane_affine(affine, SHAPE, orientation)[:3, :3]
        closest = np.argmax(np.abs(directions), axis=0)
        assert all(directions[closest[k], k] < 0 for k in range(3))
        assert closest[2] < closest[1]  # columns take the earlier world axis
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        in_plane = [a for a in range(3) if a != slice_axis]
        assert orientation.slice_mm == zooms[slice_axis]  # the acquired axis is kept
        assert sorted(orientation.pixel_spacing) == sorted(zooms[in_plane])
        assert np.allclose(
            np.linalg.norm(directions, axis=0), [orientation.slice_mm, *orientation.pixel_spacing]
        )


# -- the key property: one physical volume, every voxel order -------------------------


@pytest.mark.parametrize("frames", [None, 3])
def test_every_voxel_order_of_one_volume_gives_identical_planes(tmp_path, frames):
    rng = np.random.default_rng(0)
    shape = SHAPE if frames is None else (*SHAPE, frames)
    data = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    labels = rng.integers(0, 4, size=shape).astype(np.uint8)
    reference = None
    for n, (flips, transpose) in enumerate(
        itertools.product(itertools.product((False, True), repeat=3), (False, True))
    ):
        image, affine = _variant(data, OBLIQUE, flips, transpose)
        label, label_affine = _variant(labels, OBLIQUE, flips, transpose)
        assert np.allclose(affine, label_affine)
        suffix = ".nii.gz" if n % 2 else ".nii"
        volume = read_volume(
            _save(image, affine, tmp_path / f"image{n}{suffix}"),
            _save(label, affine, tmp_path / f"label{n}{suffix}"),
            max_voxels=MAX_VOXELS,
        )
        o = volume.orientation
        got = (volume.images, volume.labels, (o.slice_mm, o.row_mm, o.column_mm), volume.affine)
        if reference is None:
            reference = got
            assert volume.images.shape == (frames or 1, SHAPE[2], SHAPE[1], SHAPE[0])
            continue
        assert np.array_equal(got[0], reference[0]), (flips, transpose)
        assert np.array_equal(got[1], reference[1]), (flips, transpose)
        assert got[2] == pytest.approx(reference[2], abs=1e-6), (flips, transpose)
        # Slice k is the same physical plane in every variant: same affine, same numbers.
        assert np.allclose(got[3], reference[3], atol=1e-4), (flips, transpose)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_the_slice_axis_is_kept_whichever_it_is(slice_axis):
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    reference = to_planes(data, plane_orientation(OBLIQUE, slice_axis=slice_axis))
    assert reference.shape[1] == SHAPE[slice_axis]
    for flips in itertools.product((False, True), repeat=3):
        ornt = np.array([[k, -1 if flips[k] else 1] for k in range(3)])
        variant = apply_orientation(data, ornt)
        affine = OBLIQUE @ inv_ornt_aff(ornt, SHAPE)
        got = to_planes(variant, plane_orientation(affine, slice_axis=slice_axis))
        assert np.array_equal(got, reference), flips


def test_to_planes_returns_a_view_of_the_same_dtype():
    data = np.zeros((3, 4, 5, 2), np.float32)
    planes = to_planes(data, PlaneOrientation(2, True, True, False, True, 1.0, 1.0, 1.0))
    assert planes.shape == (2, 5, 4, 3)
    assert planes.dtype == np.float32
    assert np.shares_memory(planes, data)
    with pytest.raises(ValueError, match="3D or 4D"):
        to_planes(np.zeros((3, 4)), plane_orientation(np.eye(4)))


# -- nibabel's own files --------------------------------------------------------------


def _nibabel_files() -> list[str]:
    from nibabel.testing import data_path

    if not os.path.isdir(data_path):
        return []
    names = ("example4d.nii.gz", "anatomical.nii", "example_nifti2.nii.gz", "functional.nii")
    return [os.path.join(data_path, n) for n in names if os.path.exists(os.path.join(data_path, n))]


@pytest.mark.parametrize("path", _nibabel_files() or [None])
def test_nibabel_test_files_give_get_fdata_reordered(path):
    if path is None:
        pytest.skip("nibabel's test data folder (nibabel.testing.data_path) is not installed")
    image = nibabel.load(path)
    expected = image.get_fdata(dtype=np.float32)
    volume = read_volume(path, max_voxels=MAX_VOXELS)
    assert volume.images.dtype == np.float32
    shape = image.shape if len(image.shape) == 4 else (*image.shape, 1)
    o = volume.orientation
    assert volume.images.shape == tuple(shape[a] for a in (3, 2, o.row_axis, o.column_axis))
    assert np.array_equal(np.sort(volume.images, axis=None), np.sort(expected, axis=None))
    assert volume.images.sum(dtype=np.float64) == expected.sum(dtype=np.float64)
    # All these files are LAS+: x runs toward L (columns as they are), y toward A and z
    # toward S (both reversed), in-plane axes swapped. Written out by hand:
    assert nibabel.aff2axcodes(image.affine) == ("L", "A", "S")
    by_hand = expected.reshape(*expected.shape[:3], -1).transpose(3, 2, 1, 0)[:, ::-1, ::-1, :]
    assert np.array_equal(volume.images, by_hand)


def test_scaled_voxels_are_nibabels_float32_values(tmp_path):
    path = _save(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4), tmp_path / "s.nii")
    with open(path, "r+b") as f:  # scl_slope, scl_inter at bytes 112 and 116
        f.seek(112)
        f.write(struct.pack("<ff", 0.37, -12.5))
    expected = nibabel.load(path).get_fdata(dtype=np.float32)
    volume = read_volume(path, max_voxels=MAX_VOXELS)
    o = plane_orientation(np.eye(4))
    assert np.array_equal(volume.images, to_planes(expected, o))
    raw = np.arange(60).reshape(3, 4, 5)
    assert np.allclose(volume.images, to_planes(raw * 0.37 - 12.5, o), rtol=0, atol=1e-5)


# -- image and label grids ------------------------------------------------------------


def test_a_label_flipped_relative_to_its_image_is_refused_with_a_reason(tmp_path):
    data = np.zeros(SHAPE, np.int16)
    flipped, flipped_affine = _variant(data.astype(np.uint8), OBLIQUE, (True, False, False), False)
    reason = same_grid((OBLIQUE, SHAPE), (flipped_affine, SHAPE))
    assert reason is not None and "direction of voxel axis 0" in reason
    image = _save(data, OBLIQUE, tmp_path / "image.nii.gz")
    label = _save(flipped, flipped_affine, tmp_path / "label.nii.gz")
    with pytest.raises(VolumeError, match=r"not on the grid of .*image\.nii\.gz") as info:
        read_volume(image, label, max_voxels=MAX_VOXELS)
    assert info.value.path == label and "\n" not in str(info.value)


def test_same_grid_takes_images_and_headers(tmp_path):
    image = nibabel.Nifti1Image(np.zeros(SHAPE, np.int16), OBLIQUE)
    label = nibabel.Nifti1Image(np.zeros(SHAPE, np.uint8), OBLIQUE)
    assert same_grid(image, label) is None
    assert same_grid(image.header, label.header) is None
    moved = nibabel.Nifti1Image(
        np.zeros(SHAPE, np.uint8), OBLIQUE + np.outer([1, 0, 0, 0], [0, 0, 0, 1])
    )
    assert "origin" in same_grid(image, moved)


def test_affines_differing_by_rounding_are_the_same_grid(tmp_path):
    rounded = OBLIQUE + np.random.default_rng(1).uniform(-1e-6, 1e-6, (4, 4)) * [1, 1, 1, 1]
    rounded[3] = [0, 0, 0, 1]
    assert same_grid((OBLIQUE, SHAPE), (rounded, SHAPE)) is None
    image = _save(np.zeros(SHAPE, np.int16), OBLIQUE, tmp_path / "image.nii")
    label = _save(np.ones(SHAPE, np.uint8), rounded, tmp_path / "label.nii")
    volume = read_volume(image, label, max_voxels=MAX_VOXELS)
    assert volume.labels.dtype == np.int32 and volume.labels.shape == volume.images.shape
    assert np.all(volume.labels == 1)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda a: a + np.diag([0, 0, 0.01, 0]), "voxel size"),
        (
            lambda a: a + np.outer([0, 1, 0, 0], [0, 0, 0, 0.002]),
            "origin",
        ),
        (lambda a: _affine(_rotation(0.05, 2)), "direction"),
    ],
)
def test_each_grid_difference_is_named(change, words):
    affine = _affine(np.eye(3))
    reason = same_grid((affine, SHAPE), (change(affine), SHAPE))
    assert reason is not None and words in reason and "\n" not in reason


def test_shapes_and_frame_counts_must_agree():
    assert "shape (5, 7, 3)" in same_grid((OBLIQUE, SHAPE), (OBLIQUE, (5, 7, 3)))
    assert "2 frame(s)" in same_grid((OBLIQUE, (*SHAPE, 3)), (OBLIQUE, (*SHAPE, 2)))
    assert same_grid((OBLIQUE, SHAPE), (OBLIQUE, (*SHAPE, 1))) is None  # one frame either way
    assert "NaN" in same_grid((OBLIQUE, SHAPE), (OBLIQUE * np.nan, SHAPE))


# -- damaged input: one line each, never raised as anything else ----------------------


@pytest.fixture
def good_nii(tmp_path) -> str:
    return _save(np.arange(140, dtype=np.int16).reshape(SHAPE), OBLIQUE, tmp_path / "good.nii")


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _refused(path, label=None, match="", max_voxels=MAX_VOXELS) -> VolumeError:
    with pytest.raises(VolumeError, match=match) as info:
        read_volume(path, label, max_voxels=max_voxels)
    _one_line(info)
    assert isinstance(info.value, RecordError)
    return info.value


def test_a_truncated_nii_gz_is_a_volume_error(tmp_path, good_nii):
    whole = gzip.compress(_bytes(good_nii))
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(whole[: len(whole) // 2])
    _refused(str(path), match="truncated")


def test_a_truncated_nii_is_a_volume_error(tmp_path, good_nii):
    path = tmp_path / "cut.nii"
    path.write_bytes(_bytes(good_nii)[:400])
    _refused(str(path), match="truncated: 400 of the 632 bytes its header declares")


def test_a_wrong_magic_is_a_volume_error(tmp_path, good_nii):
    data = bytearray(_bytes(good_nii))
    data[344:348] = b"xyz\0"
    path = tmp_path / "magic.nii"
    path.write_bytes(bytes(data))
    _refused(str(path), match="not a NIfTI file")


def test_a_header_declaring_a_trillion_voxels_is_refused_before_allocating(tmp_path):
    header = nibabel.Nifti1Header()
    header.set_data_shape((10000, 10000, 10000))
    header.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * 4096)
    tracemalloc.start()
    try:
        error = _refused(str(path), match="declares 1000000000000 voxels")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    assert error.path == str(path)


def test_nan_in_the_affine_is_a_volume_error(tmp_path, good_nii):
    data = bytearray(_bytes(good_nii))
    data[254:256] = struct.pack("<h", 1)  # sform_code: the srow rows are the affine
    data[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]
    path = tmp_path / "nan.nii"
    path.write_bytes(bytes(data))
    assert np.isnan(nibabel.load(str(path)).affine).any()
    _refused(str(path), match="NaN or inf")


def test_a_5d_image_is_a_volume_error(tmp_path):
    path = _save(np.zeros((2, 3, 4, 2, 2), np.int16), np.eye(4), tmp_path / "five.nii.gz")
    _refused(path, match="5D image")


def test_non_integer_labels_are_a_volume_error(tmp_path, good_nii):
    labels = np.zeros(SHAPE, np.float32)
    labels[1, 2, 3] = 0.5
    label = _save(labels, OBLIQUE, tmp_path / "label.nii.gz")
    error = _refused(good_nii, label, match=r"non-integer values \(e.g. 0.5\)")
    assert error.path == label


def test_a_label_of_another_shape_is_a_volume_error(tmp_path, good_nii):
    label = _save(np.zeros((5, 7, 3), np.uint8), OBLIQUE, tmp_path / "label.nii")
    _refused(good_nii, label, match="shape")


def test_an_empty_or_non_nifti_image_is_a_volume_error(tmp_path):
    _refused(_save(np.zeros((0, 3, 4), np.int16), np.eye(4), tmp_path / "e.nii"), match="no voxels")
    mgh = tmp_path / "image.mgz"
    nibabel.save(nibabel.MGHImage(np.zeros(SHAPE, np.float32), np.eye(4)), str(mgh))
    _refused(str(mgh), match="not a NIfTI file")


def test_a_missing_file_is_a_volume_error(tmp_path):
    _refused(str(tmp_path / "absent.nii.gz"), match="NIfTI file does not exist")


def test_float_labels_with_integer_values_are_accepted(tmp_path, good_nii):
    labels = np.full(SHAPE, 3.0, np.float32)
    volume = read_volume(
        good_nii, _save(labels, OBLIQUE, tmp_path / "l.nii"), max_voxels=MAX_VOXELS
    )
    assert volume.labels.dtype == np.int32 and np.all(volume.labels == 3)
