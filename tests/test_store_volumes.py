"""A store of NIfTI volumes: each volume's records lie in as few chunks as they fit
in, so that a build reads every volume file once, as :func:`daskmri.load_dataset`
does, and equals it record for record."""

from __future__ import annotations

import collections
import os

import nibabel
import numpy as np
import pytest

import daskmri
import daskmri.sources.volumes
from daskmri.plan import SlotCursor, aligned_slot, plan_chunks, plan_slots
from daskmri.record import Record, VolumePlane
from daskmri.store import OK, RETIRED, StoreSpec, read_state
from daskmri.testing import assert_records_equal

BY_KEY = ["patient_id", "instance"]


@pytest.fixture
def acdc(tmp_path):
    """Three ACDC patients: 4D cines of 6 frames of 5 slices (30 records a volume with
    ``labels="all"``), ED and ES frame files of 5 records each (``labels="any"``)."""
    return daskmri.synth.make_volume_dataset(
        tmp_path / "acdc", layout="acdc", patients=3, frames=6, slices=5, shape=(24, 20)
    )


@pytest.fixture
def opened(monkeypatch):
    """How many times each volume file is opened for its voxels."""
    counts: collections.Counter = collections.Counter()
    real = daskmri.sources.volumes.open_image

    def counting(path, **kwargs):
        counts[os.path.basename(path)] += 1
        return real(path, **kwargs)

    monkeypatch.setattr(daskmri.sources.volumes, "open_image", counting)
    return counts


def build(root, store, **kwargs):
    return daskmri.build(root, store, layout=daskmri.ACDC, scheduler="sync", **kwargs)


def load(root, labels):
    return daskmri.load_dataset(root, layout=daskmri.ACDC, labels=labels, scheduler="sync")


# -- placing units -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pos", "count", "expected"),
    [
        (0, 1, 0),
        (7, 1, 7),  # a record read alone never moves
        (5, 3, 5),  # fits in the rest of its chunk
        (5, 4, 8),  # does not: the next chunk
        (5, 8, 8),  # exactly a chunk
        (5, 20, 8),  # larger than a chunk: starts one
        (8, 20, 8),  # already starts one
        (16, 8, 16),
    ],
)
def test_aligned_slot(pos, count, expected):
    assert aligned_slot(pos, count, 8) == expected


def plane(path, k, n):
    return Record("P", "", k, path, volume=VolumePlane(0, k, unit_index=k, unit_size=n))


def test_a_cursor_keeps_each_volume_in_as_few_chunks_as_it_fits_in():
    cursor = SlotCursor(0, chunk_size=4)
    slots = [cursor.place(plane("a", k, 3)) for k in range(3)]  # 0..2
    slots += [cursor.place(Record("P", "", 90, "90.dcm"))]  # 3: alone, never moves
    slots += [cursor.place(plane("b", k, 6)) for k in range(6)]  # 4..9: starts a chunk
    slots += [cursor.place(plane("c", k, 3)) for k in range(3)]  # 12..14: 10, 11 padding
    assert slots == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14]
    assert cursor.pos == 15


def test_volume_planes_keep_their_fingerprint_identity():
    # unit_index and unit_size are the scan's bookkeeping: out of repr (so of
    # record_fingerprint) and of equality.
    a = VolumePlane(1, 2, "ED", unit_index=3, unit_size=10)
    b = VolumePlane(1, 2, "ED")
    assert repr(a) == repr(b) and a == b


def test_an_update_places_the_added_records_of_a_volume_together():
    # Two records reused in chunk 0; added: a volume's 3 records split by a reused
    # one (the same unit, 7), then one record alone.
    reuse = np.array([0, -1, 1, -1, -1, -1])
    units = np.array([1, 7, 7, 7, 7, 8], dtype=np.uint32)
    plan = plan_slots(reuse, np.array([], int), n_slots=2, chunk_size=4, units=units)
    assert plan.target.tolist() == [0, 4, 1, 5, 6, 7]
    units = np.array([1, 2, 7, 7, 7, 7], dtype=np.uint32)  # one alone, then a volume of 3
    plan = plan_slots(np.array([0, -1, 1, -1, -1, -1]), np.array([], int), n_slots=2,
                      chunk_size=3, units=units)  # fmt: skip
    assert plan.target.tolist() == [0, 3, 1, 6, 7, 8]
    assert plan.n_slots == 9 and plan.need.tolist() == [0, 1, 3]
    assert [plan.added_at(s) for s in (3, 6, 8)] == [1, 3, 5]


# -- building ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "chunk_size"),
    [
        ("any", 7),  # volumes of 5 records, smaller than a chunk
        ("any", 5),  # equal to a chunk
        ("all", 7),  # volumes of 30 records, larger than a chunk
        ("all", 64),  # two volumes a chunk, the third in the next
    ],
)
def test_each_volume_is_read_once_and_the_store_equals_load_dataset(
    acdc, tmp_path, opened, labels, chunk_size
):
    store = tmp_path / "ds.zarr"
    report = build(acdc, store, labels=labels, chunk_size=chunk_size)
    assert opened and set(opened.values()) == {1}, opened
    expected = load(acdc, labels)
    ds = daskmri.open_dataset(store)
    assert_records_equal(ds, expected)  # same records in the same order
    assert daskmri.dropped(ds).empty and report.dropped == 0 and report.retired == 0
    assert report.parsed_records == report.records  # padding is not parsed
    assert report.records == ds.sizes["record"] == expected.sizes["record"]
    assert daskmri.check(store).fresh
    # Padding slots are retired, never shown, never dropped.
    state = read_state(StoreSpec.of(store))
    padding = state.fingerprint == 0
    assert (state.status[padding] == RETIRED).all() and (state.status[~padding] == OK).all()
    # Every volume's records in consecutive slots, in as few chunks as they fit in.
    names = read_state(StoreSpec.of(store), names=True)
    unit = names.patient_id.astype(str)
    if labels == "any":  # a file per frame
        unit = unit + "/" + names.planes["frame"].astype(str)
    for name in set(unit[~padding]):
        slots = np.flatnonzero(unit == name)
        assert (np.diff(slots) == 1).all()
        assert len(np.unique(slots // chunk_size)) == -(-len(slots) // chunk_size), name
    opened.clear()
    assert build(acdc, store, labels=labels, chunk_size=chunk_size).parsed_chunks == 0
    assert not opened


def rewrite(path):
    """The same volume with other voxels and another modification time."""
    image = nibabel.load(path)
    data = np.asanyarray(image.dataobj) + 1
    nibabel.save(nibabel.Nifti1Image(data, image.affine, image.header), path)
    os.utime(path, ns=(0, 10**18))


@pytest.mark.parametrize(("labels", "chunk_size"), [("any", 7), ("all", 7), ("all", 30)])
def test_an_update_rereads_only_the_rewritten_volume(acdc, tmp_path, opened, labels, chunk_size):
    store = tmp_path / "ds.zarr"
    build(acdc, store, labels=labels, chunk_size=chunk_size)
    image = "patient002_4d.nii.gz" if labels == "all" else "patient002_frame01.nii.gz"
    rewrite(acdc / "patient002" / image)
    assert not daskmri.check(store).fresh
    opened.clear()
    report = build(acdc, store, labels=labels, chunk_size=chunk_size, mode="update")
    # The rewritten volume (and the label files of its planes) read once; nothing else.
    assert opened[image] == 1 and set(opened.values()) == {1}
    assert all(name.startswith("patient002") for name in opened), opened
    assert report.retired == (30 if labels == "all" else 5)
    ds = daskmri.open_dataset(store)
    assert_records_equal(ds.sortby(BY_KEY), load(acdc, labels).sortby(BY_KEY))
    assert daskmri.dropped(ds).empty and daskmri.check(store).fresh


@pytest.mark.parametrize("labels", ["any", "all"])
def test_an_update_reads_an_added_patient_once(acdc, tmp_path, opened, labels):
    store = tmp_path / "ds.zarr"
    build(acdc, store, labels=labels, chunk_size=7)
    more = daskmri.synth.make_volume_dataset(
        tmp_path / "more", layout="acdc", patients=4, frames=6, slices=5, shape=(24, 20)
    )
    (more / "patient004").rename(acdc / "patient004")
    opened.clear()
    report = build(acdc, store, labels=labels, chunk_size=7, mode="update")
    assert opened and set(opened.values()) == {1}
    assert all(name.startswith("patient004") for name in opened), opened
    assert report.retired == 0 and report.records == (4 * 30 if labels == "all" else 4 * 10)
    ds = daskmri.open_dataset(store)
    assert_records_equal(ds.sortby(BY_KEY), load(acdc, labels).sortby(BY_KEY))
    assert daskmri.dropped(ds).empty and daskmri.check(store).fresh


def test_a_dicom_store_has_no_padding(synth_root, tmp_path):
    store = tmp_path / "ds.zarr"
    daskmri.build(synth_root, store, chunk_size=3, scheduler="sync")
    state = read_state(StoreSpec.of(store))
    n = plan_chunks(daskmri.scan(synth_root)).n_records
    assert state.n_slots == n and (state.fingerprint != 0).all()


def test_a_custom_reader_never_sees_a_padding_slot(acdc, tmp_path):
    seen = []

    def reader(record):
        seen.append(record.image_path)
        assert record.image_path is not None  # a padding slot would fail the build
        return daskmri.read_record(record)

    store = tmp_path / "ds.zarr"
    report = build(acdc, store, labels="any", chunk_size=7, reader=reader)
    assert report.dropped == 0 and len(seen) == report.records == 30
    assert (read_state(StoreSpec.of(store)).fingerprint == 0).any()  # there was padding
    expected = daskmri.load_dataset(acdc, layout=daskmri.ACDC, reader=reader, scheduler="sync")
    assert_records_equal(daskmri.open_dataset(store), expected)
