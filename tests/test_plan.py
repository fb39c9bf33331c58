"""Stage 3, plan: chunks, slots and fingerprints, as pure functions of a scan (no
pixel is read, nothing runs)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import daskmri
from daskmri import DaskmriError
from daskmri.plan import (
    fill_chunks,
    iter_plan,
    plan_chunks,
    plan_inputs,
    plan_row,
    plan_slots,
    record_fingerprint,
    record_key,
    runs,
)
from daskmri.record import Problem, Record
from daskmri.settings import Source

from .conftest import PATIENTS, SLICES


def test_parts_number_slots_across_the_chunks_as_planned(synth_root):
    plan = plan_chunks(daskmri.scan(synth_root), chunk_size=5)
    parts = plan.parts()
    assert [[r for _, r in part] for part in parts] == [list(c) for c in plan.chunks]
    slots = [slot for part in parts for slot, _ in part]
    assert slots == list(range(plan.n_records))


def test_a_record_the_scan_found_broken_is_dropped_not_planned():
    row = {
        "patient_id": "P",
        "original_id": "O",
        "instance": 4,
        "image_path": None,
        "icontour_path": None,
        "ocontour_path": "/c/o.txt",
        "problem": "contour without its DICOM",
    }
    dropped: list[Problem] = []
    assert plan_row(row, dropped) is None
    assert dropped == [Problem("/c/o.txt", "contour without its DICOM", "P", "O", 4)]
    assert dropped[0].row() == {
        "patient_id": "P",
        "original_id": "O",
        "instance": 4,
        "path": "/c/o.txt",
        "reason": "contour without its DICOM",
    }
    assert plan_row(row | {"problem": None, "image_path": "/d/4.dcm"}, dropped) == Record(
        "P", "O", 4, "/d/4.dcm", (("icontour", None), ("ocontour", "/c/o.txt"))
    )


class TestSlots:
    def test_a_new_store_takes_the_records_in_order(self):
        plan = plan_slots(np.full(5, -1), np.array([], int), n_slots=0, chunk_size=2)
        assert plan.target.tolist() == [0, 1, 2, 3, 4]
        assert plan.parse.all() and plan.need.tolist() == [2, 2, 1]
        assert (plan.n_slots, plan.n_chunks, plan.first_new) == (5, 3, 0)
        assert all(plan.is_new(slot) for slot in range(5))

    def test_an_update_appends_new_records_in_a_fresh_chunk(self):
        # Slots 0-4 hold records 0, 1, 3 (2 is gone: a changed file); chunk 1 is
        # not done (its task must run again), record 4 is new.
        reuse = np.array([0, 1, 3, -1])
        plan = plan_slots(reuse, np.array([1]), n_slots=5, chunk_size=2)
        assert plan.first_new == 6  # the next chunk boundary: chunk 2 is untouched
        assert plan.target.tolist() == [0, 1, 3, 6]
        assert plan.parse.tolist() == [False, False, True, True]
        assert plan.need.tolist() == [0, 1, 0, 1]
        assert plan.added.tolist() == [3] and plan.n_slots == 7
        assert not plan.is_new(5) and plan.is_new(6)

    def test_nothing_to_do(self):
        plan = plan_slots(np.array([0, 1]), np.array([], int), n_slots=2, chunk_size=2)
        assert plan.n_chunks == 0 and not plan.parse.any() and plan.n_slots == 2


def _records(n: int) -> list[Record]:
    return [Record("P", "O", i, f"/d/{i}.dcm") for i in range(n)]


class TestFillChunks:
    def test_yields_each_chunk_once_it_has_its_records(self):
        records = _records(5)
        keys = np.array([record_key(*r.key) for r in records], np.uint64)
        plan = plan_slots(np.full(5, -1), np.array([], int), n_slots=0, chunk_size=2)
        chunks = list(fill_chunks(records, keys, plan, root="/d"))
        assert [(k, sorted(c)) for k, c in chunks] == [(0, [0, 1]), (1, [2, 3]), (2, [4])]
        assert chunks[2][1][4] == records[4]

    def test_a_folder_that_changed_since_the_plan_is_an_error(self):
        records = _records(4)
        keys = np.array([record_key(*r.key) for r in records], np.uint64)
        plan = plan_slots(np.full(4, -1), np.array([], int), n_slots=0, chunk_size=2)
        other = [*records[:2], Record("P", "O", 9, None), records[3]]
        with pytest.raises(DaskmriError, match="changed while the build was running"):
            list(fill_chunks(other, keys, plan, root="/d"))
        with pytest.raises(DaskmriError, match="changed while the build was running"):
            list(fill_chunks(records[:3], keys, plan, root="/d"))
        with pytest.raises(DaskmriError, match="changed while the build was running"):
            list(fill_chunks([*records, Record("P", "O", 7, None)], keys, plan, root="/d"))


def test_runs_of_contiguous_slots():
    r = Record("P", "O", 1, None)
    got = [(s, len(rs), fs) for s, rs, fs in runs([(7, r, 3), (1, r, 1), (2, r, 2)])]
    assert got == [(1, 2, [1, 2]), (7, 1, [3])]


class TestFingerprints:
    def test_moving_the_whole_root_keeps_every_fingerprint(self, synth_root, tmp_path):
        moved = tmp_path / "moved"
        shutil.copytree(synth_root, moved, copy_function=shutil.copy2)
        here, there = plan_inputs(Source.of(synth_root)), plan_inputs(Source.of(moved))
        assert here.fingerprints.tolist() == there.fingerprints.tolist()
        assert here.keys.tolist() == there.keys.tolist()
        assert len(here.keys) == len(set(here.keys.tolist()))

    def test_a_touched_link_file_changes_only_the_overall_fingerprint(self, damaged_root):
        before = plan_inputs(Source.of(damaged_root))
        os.utime(damaged_root / "link.csv", ns=(1, 1))
        after = plan_inputs(Source.of(damaged_root))
        assert after.fingerprints.tolist() == before.fingerprints.tolist()
        assert after.fingerprint != before.fingerprint

    def test_a_record_fingerprint_covers_its_ids_and_every_file(self, synth_root):
        record = next(iter_plan(Source.of(synth_root), problems=[]))
        root = str(synth_root)
        base = record_fingerprint(record, root)
        for change in (
            {"patient_id": "X"},
            {"original_id": "X"},
            {"instance": 999},
            {"contours": (("icontour", None), ("ocontour", record.path("ocontour")))},
            {"image_path": record.image_path + ".gone"},
        ):
            fields = {s: getattr(record, s) for s in Record.__slots__} | change
            assert record_fingerprint(Record(**fields), root) != base, change

    def test_plan_inputs_sees_every_record_once(self, synth_root):
        inputs = plan_inputs(Source.of(synth_root, labels="all"), names=True)
        table = daskmri.scan(synth_root, labels="all").table
        planned = table[table["problem"].isna()]
        assert inputs.names == tuple(zip(planned["patient_id"], planned["instance"], strict=True))
        assert len(inputs.names) == PATIENTS * SLICES == len(set(inputs.names))
