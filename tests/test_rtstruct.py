"""Contours from DICOM RTSTRUCT files, and layouts with more contour kinds."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import daskmri
from daskmri import ContourKind, Layout, Problem, RTStruct, RTStructError
from daskmri.rtstruct import Plane, read_plane, read_structure_set
from daskmri.testing import assert_records_equal

from .conftest import FUZZ_CASES
from .reference import iou, pnpoly_exact, snap
from .rtstructs import (
    GAP,
    RT_LAYOUT,
    SHAPE,
    Drawn,
    Roi,
    oblique_series,
    real_as_rtstruct,
    slice_header,
    to_patient,
    write_rtstruct,
)

# -- the real sample, as RTSTRUCTs ----------------------------------------------


@pytest.fixture(scope="module")
def real_rt(real_root, tmp_path_factory):
    table = daskmri.scan(real_root).table
    return real_as_rtstruct(table, tmp_path_factory.mktemp("real-rt") / "data")


def test_real_rtstruct_masks_equal_the_text_masks(real_root, real_rt):
    text = daskmri.load_dataset(real_root, scheduler="sync")
    rt = daskmri.load_dataset(real_rt, layout=RT_LAYOUT, scheduler="sync")
    assert daskmri.scan(real_rt, layout=RT_LAYOUT).problems == ()
    assert len(daskmri.dropped(rt)) == 0
    assert rt.sizes["record"] == text.sizes["record"] == 56
    # IoU 1.0 on every contour: the same records, flags and masks, pixel for pixel.
    assert_records_equal(rt, text)
    contours = 0
    for kind in ("icontour", "ocontour"):
        has = text[f"has_{kind}"].values
        for a, b in zip(rt[kind].values[has], text[kind].values[has], strict=True):
            assert iou(a, b) == 1.0
            contours += 1
    assert contours == 56 + 28


def test_real_rtstruct_points_come_back_off_the_grid(real_root, real_rt):
    """The equality above rests on the mask rule: the points that come back from
    patient space are not the text's (they miss the half-pixel grid by float noise)."""
    table = daskmri.scan(real_rt, layout=RT_LAYOUT).table
    row = table.iloc[0]
    plane = Plane(*row.rtstruct.plane)
    path, index = row.rtstruct.of("icontour")[0]
    back = plane.to_pixels(read_structure_set(path).contours[index].points)
    text = daskmri.scan(real_root).table
    original = np.loadtxt(text.set_index("instance").loc[row.instance].icontour_path)
    assert 0 < np.abs(back - original).max() < 1e-6
    assert np.array_equal(snap(back), original)


# -- synthetic oblique series --------------------------------------------------

A = np.array([[10.5, 8.5], [30.5, 8.5], [30.5, 20.5], [10.5, 20.5]])
A2 = np.array([[25.5, 15.5], [40.5, 15.5], [40.5, 30.5], [25.5, 30.5]])
EPI = np.array([[5.5, 5.5], [44.5, 5.5], [44.5, 35.5], [5.5, 35.5]])
OUTER = np.array([[6.5, 6.5], [40.5, 6.5], [40.5, 33.5], [6.5, 33.5]])
HOLE = np.array([[15.5, 12.5], [30.5, 12.5], [30.5, 25.5], [15.5, 25.5]])
SLANT = np.array([[8.0, 10.0], [30.0, 4.5], [38.0, 30.0], [12.5, 34.0]])
ROIS = {"icontour": r"lv endo.*", "ocontour": r"lv epi"}
EPI_3D = np.column_stack([EPI, np.zeros(len(EPI))])


def oblique_layout(rois=None) -> Layout:
    return Layout(
        name="oblique",
        contours=(),
        rtstruct=RTStruct(glob="rt/{patient_id}/*.dcm", rois=rois or ROIS),
    )


def _drawn(root: Path, instance: int, points, *, ref: bool = True, shift: float = 0.0) -> Drawn:
    ds = slice_header(root, instance)
    patient = to_patient(points, ds)
    if shift:
        cosines = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(cosines[:3], cosines[3:])
        patient = patient + shift * normal / np.linalg.norm(normal)
    return Drawn(patient, str(ds.SOPInstanceUID) if ref else None)


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    """Six oblique slices and an RTSTRUCT with every case of the issue."""
    root = oblique_series(tmp_path_factory.mktemp("oblique") / "data")
    rt = root / "rt" / "SYN0001" / "rt.dcm"
    endo = Roi(1, "LV Endo", [_drawn(root, 1, A), _drawn(root, 2, OUTER), _drawn(root, 2, HOLE)])
    endo.contours.append(_drawn(root, 3, SLANT, ref=False))  # no image reference
    endo.contours.append(_drawn(root, 4, A, shift=0.6 * GAP))  # off its plane
    endo.contours.append(_drawn(root, 5, A[:2]))  # two points
    copy = Roi(2, "LV endo (copy)", [_drawn(root, 1, A2)])  # a second ROI of the kind
    epi = Roi(3, "LV Epi", [_drawn(root, 1, EPI)])
    lungs = Roi(4, "Lungs", [_drawn(root, 1, EPI)])
    write_rtstruct(rt, [endo, copy, epi, lungs])
    mr = write_rtstruct(root / "rt" / "SYN0001" / "z-not-rt.dcm", [epi], modality="MR")
    return root, rt, mr


def truth(*polygons) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    for polygon in polygons:
        mask ^= pnpoly_exact(polygon, SHAPE)
    return mask


def test_oblique_rtstruct_keeps_and_drops_exactly_as_the_issue_says(oblique):
    root, rt, mr = oblique
    ds = daskmri.load_dataset(root, layout=oblique_layout(), scheduler="sync")
    assert ds.instance.values.tolist() == [1, 2, 3]
    assert ds.has_icontour.values.tolist() == [True, True, True]
    assert ds.has_ocontour.values.tolist() == [True, False, False]
    # Two ROIs of one kind are united; a contour inside another is a hole; a contour
    # without image reference goes to the slice whose plane it lies in.
    np.testing.assert_array_equal(ds.icontour.values[0], truth(A) | truth(A2))
    np.testing.assert_array_equal(ds.icontour.values[1], truth(OUTER, HOLE))
    assert not ds.icontour.values[1][20, 20] and ds.icontour.values[1][8, 8]
    np.testing.assert_array_equal(ds.icontour.values[2], truth(SLANT))
    np.testing.assert_array_equal(ds.ocontour.values[0], truth(EPI))
    problems = daskmri.scan(root, layout=oblique_layout()).problems
    reasons = {(p.path, p.instance, p.reason.split(":")[0]) for p in problems}
    assert len(problems) == 4, problems
    texts = " | ".join(p.reason for p in problems)
    assert "contour 4 of ROI 'LV Endo': lies 4.8 mm off the plane of its slice" in texts
    assert "more than half the slice spacing (4 mm)" in texts
    assert "contour 5 of ROI 'LV Endo': degenerate: only 2 point(s)" in texts
    assert "ROI 'Lungs' (number 4) matches no contour kind" in texts
    assert (str(mr), None, "Modality is 'MR', not 'RTSTRUCT'") in reasons
    assert {p.path for p in problems} == {str(rt), str(mr)}
    # The scan's problems are in dropped(), each with its file.
    lost = daskmri.dropped(ds)
    assert sorted(lost.reason) == sorted(p.reason for p in problems)


def test_oblique_rtstruct_the_same_on_every_way_of_running(oblique, client, tmp_path):
    """The RTSTRUCT corpus (wrong Modality, off-plane, degenerate, unmatched ROI)
    through worker processes, a cluster and a store: the same records and drops."""
    root, _, _ = oblique
    layout = oblique_layout()
    reference = daskmri.load_dataset(root, layout=layout, scheduler="sync")
    runs = [
        daskmri.load_dataset(root, layout=layout, chunk_size=2, scheduler="processes"),
        daskmri.load_dataset(root, layout=layout, chunk_size=2, client=client),
    ]
    daskmri.build(root, tmp_path / "s.zarr", layout=layout, chunk_size=2, client=client)
    runs.append(daskmri.open_dataset(tmp_path / "s.zarr"))
    for ds in runs:
        assert_records_equal(ds, reference)
        assert daskmri.dropped(ds).equals(daskmri.dropped(reference))


def test_a_contour_outside_its_slice_drops_the_record_naming_the_file(tmp_path):
    root = oblique_series(tmp_path / "data", slices=2)
    rt = root / "rt" / "SYN0001" / "rt.dcm"
    wide = np.array([[10.5, 8.5], [300.5, 8.5], [30.5, 20.5]])
    write_rtstruct(rt, [Roi(1, "LV Endo", [_drawn(root, 1, wide), _drawn(root, 2, A)])])
    ds = daskmri.load_dataset(root, layout=oblique_layout(), scheduler="sync")
    assert ds.instance.values.tolist() == [2]
    lost = daskmri.dropped(ds)
    assert lost.path.tolist() == [str(rt)] and lost.instance.tolist() == [1]
    assert "lies outside the 40x48 image" in lost.reason[0]


def test_oblique_rtstruct_labels_and_scan_columns(oblique):
    root, rt, _ = oblique
    layout = oblique_layout()
    table = daskmri.scan(root, layout=layout, labels="all").table
    assert table.instance.tolist() == [1, 2, 3, 4, 5, 6]
    assert table.icontour_path.tolist() == [str(rt)] * 3 + [None] * 3
    assert table.ocontour_path.tolist() == [str(rt)] + [None] * 5
    assert daskmri.scan(root, layout=layout, labels="ocontour").table.instance.tolist() == [1]
    with pytest.raises(ValueError, match="labels must be one of"):
        daskmri.scan(root, layout=layout, labels="i")  # no aliases in this layout
    ds = daskmri.load_dataset(root, layout=layout, labels="all", scheduler="sync")
    assert ds.has_icontour.values.tolist() == [True] * 3 + [False] * 3
    assert not ds.icontour.values[3:].any()


def test_oblique_rtstruct_store_equals_memory(oblique, tmp_path):
    root, _, _ = oblique
    layout = oblique_layout()
    store = tmp_path / "rt.zarr"
    daskmri.build(root, store, layout=layout, chunk_size=2, scheduler="processes")
    memory = daskmri.load_dataset(root, layout=layout, chunk_size=2, scheduler="processes")
    opened = daskmri.open_dataset(store)
    assert_records_equal(opened, memory)
    assert json.loads(opened.attrs["kinds"]) == ["icontour", "ocontour"]
    assert daskmri.build(root, store, layout=layout, chunk_size=2).parsed_chunks == 0


def test_unreferenced_contour_in_several_planes_and_a_missing_slice(tmp_path):
    root = oblique_series(tmp_path / "data", slices=4, same_plane=(2,))
    rt = root / "rt" / "SYN0001" / "rt.dcm"
    stray = Drawn(_drawn(root, 3, A).points, "1.2.3.4.5")
    write_rtstruct(rt, [Roi(1, "LV Endo", [_drawn(root, 1, A, ref=False), stray])])
    problems = daskmri.scan(root, layout=oblique_layout()).problems
    texts = sorted(p.reason for p in problems)
    assert len(texts) == 2
    assert "lies in the plane of 2 slices (instances 1, 2)" in texts[0]
    assert "references SOPInstanceUID 1.2.3.4.5, which no readable slice has" in texts[1]


def test_unreferenced_contour_in_no_plane_and_a_slice_without_position(tmp_path):
    root = oblique_series(tmp_path / "data", slices=3)
    header = root / "dicoms" / "SYN0001" / "3.dcm"
    from .hostile import rewrite

    rewrite(header, header, ImagePositionPatient=None)
    far = _drawn(root, 1, A, ref=False, shift=-(GAP / 2 + 0.5))  # outside the series
    write_rtstruct(root / "rt" / "SYN0001" / "rt.dcm", [Roi(1, "LV Endo", [far])])
    problems = daskmri.scan(root, layout=oblique_layout(), labels="all").problems
    texts = sorted(p.reason for p in problems)
    assert "no image reference and lies in no slice's plane" in texts[0]
    assert "no usable ImagePositionPatient" in texts[1] and str(header) in str(problems)


def test_the_rtstruct_is_read_once_per_process_and_reread_when_replaced(oblique, tmp_path):
    from daskmri.rtstruct import cached_structure_set

    _, rt, _ = oblique
    first = cached_structure_set(str(rt))
    assert cached_structure_set(str(rt)) is first
    copy = tmp_path / "rt.dcm"
    shutil.copy(rt, copy)
    before = cached_structure_set(str(copy))
    write_rtstruct(copy, [Roi(1, "LV Endo", [])])
    assert cached_structure_set(str(copy)) is not before
    with pytest.raises(RTStructError, match="cannot read the RTSTRUCT file"):
        cached_structure_set(str(tmp_path / "gone.dcm"))


def test_a_contour_gone_from_a_replaced_file_drops_its_record(oblique, tmp_path):
    root, _, _ = oblique
    work = tmp_path / "data"
    shutil.copytree(root, work)
    table = daskmri.scan(work, layout=oblique_layout()).table
    plan = daskmri.plan.plan_chunks(table)
    write_rtstruct(work / "rt" / "SYN0001" / "rt.dcm", [Roi(1, "LV Endo", [])])
    result = daskmri.parse.parse_chunk(
        plan.chunks[0], shape=SHAPE, reader=daskmri.read_record, kinds=("icontour", "ocontour")
    )
    assert len(result.kept) == 0
    assert all("is gone; the file changed since the scan" in r["reason"] for r in result.dropped)


def test_plane_solves_with_the_slices_own_cosines():
    """Exact for points in the plane however far the 6-digit cosines are from
    orthonormal; the naive inverse (dot products) is not."""
    row = np.array([0.104592, 0.346381, -0.932245])
    col = np.array([-0.733192, -0.660188, -0.163037])
    plane = Plane("1", (162.673, 35.6185, 144.459), (*row, *col), (1.367188, 1.367188), 10.0)
    pixels = np.array([[120.5, 137.5], [200.0, 3.5], [0.0, 255.0]])
    patient = np.asarray(plane.origin) + np.outer(pixels[:, 0] * 1.367188, row)
    patient += np.outer(pixels[:, 1] * 1.367188, col)
    assert np.abs(plane.to_pixels(patient) - pixels).max() < 1e-9
    naive = (patient - plane.origin) @ np.stack([row, col]).T / 1.367188
    assert np.abs(naive - pixels).max() > 1e-4
    assert np.abs(plane.distance(patient)).max() < 1e-9


# -- RTSTRUCT files that are wrong ----------------------------------------------


def test_read_structure_set_refuses_what_is_not_one(oblique, tmp_path):
    _, rt, mr = oblique
    with pytest.raises(RTStructError, match="Modality is 'MR', not 'RTSTRUCT'"):
        read_structure_set(mr)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(rt.read_bytes()[:-300])
    with pytest.raises(RTStructError, match="damaged or truncated structure set"):
        read_structure_set(cut)
    cut.write_bytes(rt.read_bytes()[:200])
    with pytest.raises(RTStructError, match="no Modality: a truncated file"):
        read_structure_set(cut)
    with pytest.raises(RTStructError, match=r"over Limits\.max_file_bytes"):
        read_structure_set(rt, limits=daskmri.Limits(max_file_bytes=100))
    bare = write_rtstruct(tmp_path / "bare.dcm", [])
    import pydicom

    ds = pydicom.dcmread(bare)
    del ds.ROIContourSequence
    ds.save_as(bare)
    with pytest.raises(RTStructError, match="no ROIContourSequence"):
        read_structure_set(bare)


def _patched(rt: Path, dst: Path, old: bytes, new: bytes) -> Path:
    data = rt.read_bytes()
    assert data.count(old) >= 1 and len(old) == len(new)
    dst.write_bytes(data.replace(old, new, 1))
    return dst


def test_damaged_contour_data_and_nan_drop_only_that_contour(tmp_path):
    root = oblique_series(tmp_path / "data", slices=3)
    rt = root / "rt" / "SYN0001" / "rt.dcm"
    marked = to_patient(A, slice_header(root, 2))
    marked[0] = [123.25, 456.5, 789.75]  # recognisable values, patched below
    contours = [_drawn(root, 1, A), Drawn(marked, str(slice_header(root, 2).SOPInstanceUID))]
    write_rtstruct(rt, [Roi(1, "LV Endo", contours)])
    for old, new, reason in (
        (b"456.5", b"4x6.5", "damaged ContourData"),
        (b"456.5", b"nan  ", "non-finite coordinates in ContourData"),
    ):
        _patched(rt, rt.with_suffix(".new"), old, new).replace(rt)
        ds = daskmri.load_dataset(root, layout=oblique_layout(), scheduler="sync")
        assert ds.instance.values.tolist() == [1], new
        np.testing.assert_array_equal(ds.icontour.values[0], truth(A))
        lost = daskmri.dropped(ds)
        assert lost.path.tolist() == [str(rt)]
        assert f"contour 1 of ROI 'LV Endo': {reason}" in lost.reason[0], lost.reason[0]
        write_rtstruct(rt, [Roi(1, "LV Endo", contours)])
    ten = Drawn(np.arange(10.0), contours[1].uid)  # 10 numbers: not triples
    write_rtstruct(rt, [Roi(1, "LV Endo", [contours[0], ten])])
    lost = daskmri.dropped(daskmri.load_dataset(root, layout=oblique_layout(), scheduler="sync"))
    assert "damaged ContourData (10 numbers, not x y z triples)" in lost.reason[0]


def test_a_truncated_rtstruct_costs_only_its_own_contours(tmp_path):
    root = oblique_series(tmp_path / "data", slices=3)
    folder = root / "rt" / "SYN0001"
    write_rtstruct(folder / "a.dcm", [Roi(1, "LV Endo", [_drawn(root, 1, A)])])
    bad = write_rtstruct(folder / "b.dcm", [Roi(1, "LV Endo", [_drawn(root, 2, A)])])
    bad.write_bytes(bad.read_bytes()[:200])
    ds = daskmri.load_dataset(root, layout=oblique_layout(), scheduler="sync")
    assert ds.instance.values.tolist() == [1]
    lost = daskmri.dropped(ds)
    assert lost.path.tolist() == [str(bad)] and "truncated" in lost.reason[0]


@pytest.mark.timeout(60 + 20 * FUZZ_CASES)
def test_mutated_rtstructs_never_fail_the_scan(oblique, tmp_path):
    """Random byte damage anywhere in the file: the scan reports, it never raises."""
    root, rt, _ = oblique
    work = tmp_path / "data"
    shutil.copytree(root, work)
    target = work / "rt" / "SYN0001" / "rt.dcm"
    pristine = rt.read_bytes()
    rng = np.random.default_rng(16)
    outcomes = set()
    for _ in range(20 * FUZZ_CASES):
        data = bytearray(pristine)
        for at in rng.integers(132, len(data), size=int(rng.integers(1, 6))):
            data[at] = int(rng.integers(0, 256))
        target.write_bytes(bytes(data))
        try:
            structure = read_structure_set(target)
            outcomes.add("read" if not structure.problems else "contours dropped")
        except RTStructError as exc:
            outcomes.add("refused")
            assert exc.path == str(target)
        ds = daskmri.load_dataset(work, layout=oblique_layout(), scheduler="sync")
        # A flip may also make a valid contour of a broken one (a digit turned into a
        # separator): any slice may then be a record, but nothing fails.
        assert set(ds.instance.values.tolist()) <= set(range(1, 7))
    assert outcomes - {"read"}, outcomes  # the damage really broke something


def test_read_plane_refuses_a_slice_that_cannot_be_placed(tmp_path):
    from pydicom.uid import ExplicitVRBigEndian

    from daskmri.dicom import PLANE_TAGS, read_text_tags

    from .hostile import rewrite, with_syntax

    root = oblique_series(tmp_path / "data", slices=2)
    path = root / "dicoms" / "SYN0001" / "1.dcm"

    walked = read_plane(path)
    assert walked.gap == GAP
    # A file the header walk leaves to pydicom (big endian) gives the same plane.
    other = tmp_path / "big.dcm"
    with_syntax(path, other, ExplicitVRBigEndian)
    assert read_text_tags(other, PLANE_TAGS) is None
    assert read_plane(other) == walked
    rewrite(path, path, SliceThickness=None, SpacingBetweenSlices=None)
    assert read_plane(path).gap is None
    rewrite(path, path, ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    with pytest.raises(RTStructError, match="degenerate"):
        read_plane(path)
    rewrite(path, path, SOPInstanceUID=None)
    with pytest.raises(RTStructError, match="no SOPInstanceUID"):
        read_plane(path)
    path.write_bytes(b"junk")
    with pytest.raises(RTStructError, match="cannot read the slice header"):
        read_plane(path)


# -- more contour kinds -----------------------------------------------------------

PCONTOUR = ContourKind(
    "pcontour",
    glob="contourfiles/{original_id}/p-contours/*.txt",
    regex=r"IM-\d+-(?P<instance>\d+)-pcontour-manual\.txt",
)
THREE = dataclasses.replace(daskmri.SUNNYBROOK, contours=(*daskmri.SUNNYBROOK.contours, PCONTOUR))
TRIANGLE = np.array([[20.5, 10.5], [40.5, 14.5], [28.0, 30.5]])


@pytest.fixture(scope="module")
def three_kinds(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("three") / "data"
    shutil.copytree(synth_root, root)
    for folder in sorted((root / "contourfiles").iterdir()):
        target = folder / "p-contours"
        target.mkdir()
        for path in sorted((folder / "i-contours").glob("*.txt"))[::2]:
            name = path.name.replace("icontour", "pcontour")
            np.savetxt(target / name, TRIANGLE, fmt="%.2f")
    return root


def test_a_third_kind_is_a_variable_in_memory_in_the_store_and_in_batches(three_kinds, tmp_path):
    table = daskmri.scan(three_kinds, layout=THREE).table
    assert "pcontour_path" in table.columns
    has_p = table.pcontour_path.notna().to_numpy()
    assert 0 < has_p.sum() < len(table)
    ds = daskmri.load_dataset(three_kinds, layout=THREE, chunk_size=4, scheduler="processes")
    assert list(ds.data_vars)[:4] == ["image", "icontour", "ocontour", "pcontour"]
    assert ds.has_pcontour.values.tolist() == has_p.tolist()
    for k in np.flatnonzero(has_p):
        np.testing.assert_array_equal(
            ds.pcontour.values[k], pnpoly_exact(TRIANGLE, ds.image.shape[1:])
        )
    assert not ds.pcontour.values[~has_p].any()
    plain = daskmri.load_dataset(three_kinds, scheduler="sync")
    assert_records_equal(ds.drop_vars(["pcontour", "has_pcontour"]), plain)
    store = tmp_path / "three.zarr"
    daskmri.build(three_kinds, store, layout=THREE, chunk_size=4, scheduler="sync")
    assert_records_equal(daskmri.open_dataset(store), ds)
    with daskmri.BatchIterator(ds, batch_size=5, seed=0) as it:
        batch = next(iter(it))
    assert {"image", "icontour", "ocontour", "pcontour"} <= set(batch)
    only = daskmri.load_dataset(three_kinds, layout=THREE, labels="pcontour", scheduler="sync")
    assert only.sizes["record"] == has_p.sum() and only.has_pcontour.values.all()
    assert daskmri.scan(three_kinds, layout=THREE, labels="i").table.shape[0] == (
        table.icontour_path.notna().sum()
    )


def test_plot_and_torch_follow_the_kinds(three_kinds):
    from daskmri import plot

    ds = daskmri.load_dataset(three_kinds, layout=THREE, scheduler="sync")
    k = int(np.flatnonzero(ds.has_pcontour.values)[0])
    mosaic = plot.overlay_grid(ds, [k])
    blue = np.all(mosaic == plot.PALETTE[2], axis=-1)
    assert blue.any()
    torch = pytest.importorskip("torch")
    from daskmri.torch import TorchBatches

    loader = torch.utils.data.DataLoader(
        TorchBatches(daskmri.BatchIterator(ds, batch_size=4, seed=0)), batch_size=None
    )
    batch = next(iter(loader))
    assert batch["pcontour"].dtype == torch.bool


def test_a_store_of_version_0_1_is_refused_in_one_line_and_overwrite_rebuilds_it(
    synth_root, tmp_path
):
    import zarr

    store = tmp_path / "old.zarr"
    daskmri.build(synth_root, store, chunk_size=8, scheduler="sync")
    fresh = daskmri.open_dataset(store).compute()
    group = zarr.open_group(store, mode="r+")
    # What 0.1.0 wrote: store format 3, no "kinds", done markers without "size".
    group.attrs.update({"format": 3})
    group.attrs.pop("kinds")
    for k in range(group["done"].shape[0]):
        marker = json.loads(str(group["done"][k]))
        del marker["size"]
        group["done"][k] = json.dumps(marker)
    for call in (
        lambda: daskmri.open_dataset(store),
        lambda: daskmri.check(store),
        lambda: daskmri.build(synth_root, store, chunk_size=8, scheduler="sync"),
    ):
        with pytest.raises(daskmri.StoreError, match=r"format 3.*this version reads 5") as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "daskmri.build(root, store, mode='overwrite')" in message
    report = daskmri.build(synth_root, store, chunk_size=8, scheduler="sync", mode="overwrite")
    assert report.parsed_chunks > 0
    assert_records_equal(daskmri.open_dataset(store), fresh)


def test_kinds_are_checked(synth_root):
    with pytest.raises(daskmri.LayoutError, match="declared twice"):
        Layout(contours=(PCONTOUR, PCONTOUR))
    with pytest.raises(daskmri.LayoutError, match="declared twice"):
        Layout(rtstruct=RTStruct("rt/{patient_id}/*.dcm", {"icontour": "x"}))
    with pytest.raises(daskmri.LayoutError, match="is reserved"):
        ContourKind("image", glob="{original_id}/*.txt", regex="(?P<instance>1)")
    with pytest.raises(daskmri.LayoutError, match="is empty"):
        RTStruct("rt/{patient_id}/*.dcm", {})
    with pytest.raises(daskmri.LayoutError, match="not a valid regex"):
        RTStruct("rt/{patient_id}/*.dcm", {"scar": "("})
    with pytest.raises(daskmri.LayoutError, match="must contain"):
        RTStruct("rt/*.dcm", {"scar": "scar"})
    with pytest.raises(daskmri.LayoutError, match=r"takes a tuple of daskmri\.ContourKind"):
        Layout(contours=("icontour",))
    with pytest.raises(ValueError, match="labels must be one of"):
        daskmri.load_dataset(synth_root, labels="pcontour")
    assert Layout.from_dict(json.loads(json.dumps(RT_LAYOUT.to_dict()))) == RT_LAYOUT
    assert Layout.from_dict(json.loads(json.dumps(THREE.to_dict()))) == THREE


def test_a_reader_returning_the_wrong_number_of_masks_drops_its_record(three_kinds):
    def two(record):
        image, inner, outer, _ = daskmri.read_record(record)
        return image, inner, outer

    ds = daskmri.load_dataset(three_kinds, layout=THREE, reader=two, scheduler="sync")
    assert ds.sizes["record"] == 0
    assert "one mask (or None) per contour kind" in daskmri.dropped(ds).reason[0]


def test_without_a_slice_spacing_tag_half_the_gap_between_planes_is_the_limit():
    from daskmri.rtstruct import Contour, StructureSet, assign

    def plane(uid: str, z: float) -> Plane:
        return Plane(uid, (0.0, 0.0, z), (1, 0, 0, 0, 1, 0), (1.0, 1.0), None)

    planes = {1: plane("a", 0.0), 2: plane("b", 10.0), 3: plane("c", 20.0)}
    square = np.array([[1, 1, 0], [5, 1, 0], [5, 5, 0]], dtype=float)
    heights = (4.0, 16.0, 26.0)
    contours = tuple(
        Contour(1, "LV Endo", k, square + np.array([0, 0, z]), None) for k, z in enumerate(heights)
    )
    found = assign([StructureSet("rt.dcm", contours)], planes, [("icontour", "lv endo")])
    assert found.picks == {1: {"icontour": [("rt.dcm", 0)]}, 3: {"icontour": [("rt.dcm", 1)]}}
    assert [p.reason.split(": ")[1] for p in found.problems] == [
        "has no image reference and lies in no slice's plane; dropped"
    ]
    # One plane only and no tag: half a pixel is the limit.
    alone = assign([StructureSet("rt.dcm", contours[:1])], {1: plane("a", 0.0)}, [("x", ".*")])
    assert alone.picks == {} and len(alone.problems) == 1


@pytest.mark.timeout(120 + 30 * FUZZ_CASES)
def test_mutated_real_slices_under_the_rtstruct_layout_never_fail(real_rt, tmp_path):
    """The mutation fuzz of test_reliability on the slices an RTSTRUCT places: the
    scan reads their headers; a damaged one costs only its own record (or its
    contours), never the scan, the build or another slice."""
    from .test_reliability import mutate

    work = tmp_path / "data"
    shutil.copytree(real_rt, work)
    table = daskmri.scan(work, layout=RT_LAYOUT).table
    pristine = daskmri.load_dataset(work, layout=RT_LAYOUT, scheduler="sync")
    originals = {row.image_path: Path(row.image_path).read_bytes() for row in table.itertuples()}
    touched = 0
    for case in range(FUZZ_CASES):
        rng = np.random.default_rng(100 + case)
        for path, data in originals.items():
            Path(path).write_bytes(data)
        hit = {table.image_path.iloc[int(k)] for k in rng.choice(len(table), 6, replace=False)}
        for path in hit:
            Path(path).write_bytes(mutate(originals[path], rng, 256 * 256 * 2))
        ds = daskmri.load_dataset(work, layout=RT_LAYOUT, scheduler="processes", chunk_size=8)
        lost = daskmri.dropped(ds)
        rt_rows = lost[lost.path.str.endswith("rt.dcm")]
        # Only the mutated files are named, or the RTSTRUCT for a contour whose slice a
        # mutation made unreadable or moved.
        assert set(lost.path) - set(rt_rows.path) <= hit, case
        assert rt_rows.reason.str.contains("no readable slice has|off the plane").all(), case
        keys = list(zip(ds.patient_id.values, ds.instance.values.tolist(), strict=True))
        expected = list(
            zip(pristine.patient_id.values, pristine.instance.values.tolist(), strict=True)
        )
        untouched = [k for k, row in enumerate(table.itertuples()) if row.image_path not in hit]
        assert {expected[k] for k in untouched} <= set(keys), case
        assert_records_equal(
            ds.isel(record=[keys.index(expected[k]) for k in untouched]),
            pristine.isel(record=untouched),
        )
        touched += len(lost)
    assert touched > 0


def test_the_cli_takes_a_layout_file_and_its_kinds(three_kinds, tmp_path, capsys):
    from daskmri.cli import main

    saved = tmp_path / "three.json"
    saved.write_text(json.dumps(THREE.to_dict()))
    assert main(["scan", str(three_kinds), "--layout", str(saved), "--labels", "pcontour"]) == 0
    out = capsys.readouterr().out
    n = int(daskmri.scan(three_kinds, layout=THREE).table.pcontour_path.notna().sum())
    assert f"records:     {n} (labels='pcontour')" in out and f"pcontour:    {n}" in out
    for argv, message in (
        (["--layout", str(saved), "--labels", "scar"], "invalid choice: 'scar'"),
        (["--layout", str(tmp_path / "none.json")], "cannot read a layout from"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["scan", str(three_kinds), *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_an_roi_of_two_kinds_is_a_contour_of_each_and_a_contour_of_no_roi_is_reported(tmp_path):
    import pydicom

    root = oblique_series(tmp_path / "data", slices=2)
    rt = root / "rt" / "SYN0001" / "rt.dcm"
    write_rtstruct(
        rt, [Roi(1, "LV Endo", [_drawn(root, 1, A)]), Roi(2, "Scar", [_drawn(root, 2, A)])]
    )
    ds = pydicom.dcmread(rt)
    ds.ROIContourSequence[1].ReferencedROINumber = 9  # names no StructureSetROI
    ds.save_as(rt)
    layout = oblique_layout({"icontour": "lv endo", "blood": "lv.*"})
    loaded = daskmri.load_dataset(root, layout=layout, scheduler="sync")
    assert loaded.instance.values.tolist() == [1]
    np.testing.assert_array_equal(loaded.icontour.values[0], truth(A))
    np.testing.assert_array_equal(loaded.blood.values[0], truth(A))
    lost = daskmri.dropped(loaded)
    assert lost.reason.tolist() == [
        "contour 1: ROI number 9 has no StructureSetROI; dropped",
        "ROI 'Scar' (number 2) matches no contour kind; ignored",
    ]


# -- review findings -------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["rt/{patient_id}/rt.dcm", "rt/{patient_id}.dcm"])
def test_a_literal_rtstruct_name_that_links_out_of_the_root_is_refused(tmp_path, pattern):
    from .test_layout import watching

    root = oblique_series(tmp_path / "data", slices=2)
    outside = write_rtstruct(tmp_path / "outside" / "rt.dcm", [Roi(1, "LV Endo", [])])
    link = root / pattern.format(patient_id="SYN0001")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    layout = Layout(contours=(), rtstruct=RTStruct(glob=pattern, rois={"icontour": "lv endo"}))
    with watching(outside.parent) as hits:
        problems = daskmri.scan(root, layout=layout, labels="all").problems
    assert hits == []
    reasons = [(p.path, p.reason) for p in problems]
    assert reasons == [(str(link), "file is a link that leaves the root; not followed")]


def test_a_literal_contour_name_that_links_out_of_the_root_is_refused(synth_root, tmp_path):
    from .test_layout import watching

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    name = "IM-0001-0004-icontour-manual.txt"
    inside = root / "contourfiles" / "SYN-C-1" / "i-contours" / name
    outside = tmp_path / "outside" / name
    outside.parent.mkdir()
    shutil.move(inside, outside)
    inside.symlink_to(outside)
    glob = str(inside.relative_to(root)).replace("SYN-C-1", "{original_id}")
    kind = dataclasses.replace(daskmri.sources.dicom_contours.ICONTOUR, glob=glob)
    with watching(outside.parent) as hits:
        table, problems = daskmri.scan(root, layout=Layout(contours=(kind,)), labels="all")
    assert hits == []
    assert str(inside) not in table.icontour_path.tolist()
    leaving = [p for p in problems if "leaves the root" in p.reason]
    assert [p.path for p in leaving] == [str(inside)]


@pytest.mark.parametrize(
    "name", ["x", "y", "padding", "record", "row_offset", "source_column_spacing"]
)
def test_kind_names_the_dataset_or_batches_use_are_refused(name):
    with pytest.raises(daskmri.LayoutError, match=f"is reserved.*rename the kind, e.g. '{name}_"):
        ContourKind(name, glob="{original_id}/*.txt", regex="(?P<instance>1)")
    with pytest.raises(daskmri.LayoutError, match="is reserved"):
        RTStruct("rt/{patient_id}/*.dcm", {name: "lv endo"})


def test_every_geometry_coordinate_is_reserved():
    from daskmri.fit import GEOMETRY
    from daskmri.record import RESERVED

    assert set(GEOMETRY) <= RESERVED


def test_editing_the_second_rtstruct_of_a_slice_makes_the_store_stale(tmp_path):
    root = oblique_series(tmp_path / "data", slices=3)
    first, second = root / "rt" / "SYN0001" / "a.dcm", root / "rt" / "SYN0001" / "b.dcm"
    write_rtstruct(first, [Roi(1, "LV Endo", [_drawn(root, 1, A), _drawn(root, 2, A)])])
    write_rtstruct(second, [Roi(1, "LV Endo", [_drawn(root, 1, A2)])])
    layout, store = oblique_layout(), tmp_path / "ds.zarr"
    # Slice 1's contours come from both files; its icontour_path names the first only.
    assert daskmri.scan(root, layout=layout).table.icontour_path.tolist() == [str(first)] * 2
    daskmri.build(root, store, layout=layout, chunk_size=1, scheduler="sync")
    assert daskmri.check(store).fresh

    write_rtstruct(second, [Roi(1, "LV Endo", [_drawn(root, 1, HOLE)])])
    os.utime(second, ns=(10**18, 10**18))  # a new time even on a coarse clock
    assert daskmri.check(store).changed == (("SYN0001", 1),)
    result = daskmri.build(root, store, layout=layout, chunk_size=1, mode="update")
    assert result.parsed_records == 1
    fresh = daskmri.load_dataset(root, layout=layout, scheduler="sync")
    # The re-parsed record takes a new slot: compare in key order.
    stored = daskmri.open_dataset(store).sortby(["patient_id", "instance"])
    assert_records_equal(stored, fresh)
    assert np.array_equal(fresh.icontour.values[0], truth(A) | truth(HOLE))


def test_reading_in_threads_leaves_pydicoms_settings_and_the_warning_filters_alone(oblique):
    import threading
    import warnings

    from pydicom import config

    from daskmri.rtstruct import _quiet

    _, rt, _ = oblique
    before = (config.settings.reading_validation_mode, list(warnings.filters))
    # The interleaving two threads can make: each saving and restoring in turn
    # would leave validation off and an "ignore" filter behind.
    first, second = _quiet(), _quiet()
    first.__enter__()
    second.__enter__()
    assert config.settings.reading_validation_mode == config.IGNORE
    first.__exit__(None, None, None)
    assert config.settings.reading_validation_mode == config.IGNORE  # second still reads
    second.__exit__(None, None, None)
    assert (config.settings.reading_validation_mode, warnings.filters) == before

    start, failed = threading.Barrier(8), []

    def read() -> None:
        start.wait()
        try:
            for _ in range(10):
                assert len(read_structure_set(rt).contours) == 8
        except BaseException as exc:  # reported below, not lost in the thread
            failed.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    assert (config.settings.reading_validation_mode, warnings.filters) == before


def test_contour_data_over_the_point_limit_is_refused_before_it_is_split(tmp_path):
    import tracemalloc

    import pydicom
    from pydicom.dataelem import RawDataElement

    from daskmri.limits import Limits

    rt = write_rtstruct(tmp_path / "rt.dcm", [Roi(1, "LV Endo", [Drawn(EPI_3D, None)])])
    ds = pydicom.dcmread(rt)
    # 600,000 numbers (200,000 points) as raw text, as a file declares them; over
    # 64 KiB, so in implicit VR (explicit VR has no DS that long).
    text = b"\\".join([b"0"] * 600_000) + b" "
    tag = pydicom.tag.Tag(0x30060050)
    ds.ROIContourSequence[0].ContourSequence[0][tag] = RawDataElement(
        tag, "DS", len(text), text, 0, True, True
    )
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(rt, enforce_file_format=True)
    limits = Limits(max_contour_points=1000)
    tracemalloc.start()
    try:
        found = read_structure_set(rt, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.contours == ()
    assert found.problems == (
        Problem(
            str(rt),
            "contour 0 of ROI 'LV Endo': 200000 points, over Limits.max_contour_points=1000; "
            "dropped",
        ),
    )
    # The file is read whole (and pydicom copies the value): about 3 times its
    # size; a Python string per number took over 11 times.
    assert peak < 6 * rt.stat().st_size, peak / rt.stat().st_size


def test_exactly_half_a_spacing_off_is_within_it_on_either_side(tmp_path):
    from daskmri.rtstruct import Contour, StructureSet, assign

    root = oblique_series(tmp_path / "data", slices=3)
    planes = {k: read_plane(root / "dicoms" / "SYN0001" / f"{k}.dcm") for k in (1, 2, 3)}
    contours = []
    for side in (-1, 1):
        drawn = _drawn(root, 2, SLANT, shift=side * GAP / 2)
        contours.append(Contour(1, "LV Endo", len(contours), drawn.points, drawn.uid))
    found = assign([StructureSet("rt.dcm", tuple(contours))], planes, [("icontour", "lv endo")])
    assert found.picks == {2: {"icontour": [("rt.dcm", 0), ("rt.dcm", 1)]}}
    assert found.problems == []
    # Without a reference, such a contour lies in two planes, on either side.
    unreferenced = tuple(dataclasses.replace(c, uid=None) for c in contours)
    found = assign([StructureSet("rt.dcm", unreferenced)], planes, [("icontour", "lv endo")])
    assert found.picks == {}
    reasons = [p.reason.split(": ", 1)[1] for p in found.problems]
    assert len(reasons) == 2
    assert all(r.startswith("has no image reference and lies in the plane of 2") for r in reasons)
    # Beyond the tie, the message shows the difference, never "4 mm, more than 4 mm".
    far = _drawn(root, 2, SLANT, shift=GAP / 2 + 1e-4)
    found = assign(
        [StructureSet("rt.dcm", (Contour(1, "LV Endo", 0, far.points, far.uid),))],
        planes,
        [("icontour", "lv endo")],
    )
    assert (
        "lies 4.0001 mm off the plane of its slice (instance 2), more than half the slice "
        "spacing (4 mm)" in found.problems[0].reason
    )


def test_padded_roi_names_match_and_a_uid_two_slices_carry_is_reported(tmp_path):
    from daskmri.rtstruct import assign

    root = oblique_series(tmp_path / "data", slices=3)
    rt = write_rtstruct(tmp_path / "rt.dcm", [Roi(1, " LV Endo ", [_drawn(root, 1, A)])])
    structure = read_structure_set(rt)
    assert structure.names == ((1, "LV Endo"),)
    planes = {k: read_plane(root / "dicoms" / "SYN0001" / f"{k}.dcm") for k in (1, 2, 3)}
    found = assign([structure], planes, [("icontour", "lv endo")])
    assert found.picks == {1: {"icontour": [(str(rt), 0)]}} and found.problems == []
    planes[3] = dataclasses.replace(planes[3], uid=planes[1].uid)  # a copied header
    found = assign([structure], planes, [("icontour", "lv endo")])
    assert found.picks == {}
    assert found.problems == [
        Problem(
            str(rt),
            f"contour 0 of ROI 'LV Endo': references SOPInstanceUID {planes[1].uid}, which "
            "slices [1, 3] all carry; give each slice its own SOPInstanceUID; dropped",
        )
    ]
