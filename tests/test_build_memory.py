"""The client's memory during a build does not grow with the number of records: a new
store's build holds one chunk, one wave and one block of the per-slot tables, never
an array or a list over the whole dataset. Measured with tracemalloc (allocations,
not time), on a cheap synthetic scan whose pixels are made by a stub reader."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import daskmri
import daskmri.plan as plan
from daskmri.record import Record
from daskmri.store import StoreSpec, builder, read_state
from daskmri.store import format as fmt
from daskmri.store import state as store_state

SHAPE = (4, 4)
PER_PATIENT = 40


def stub_reader(record: Record):
    """A record's image (its instance everywhere) and an inner contour on its odd rows."""
    image = np.full(SHAPE, record.instance, dtype=np.float32)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1::2] = True
    return image, mask, None


def fake_scan(n: int, root: str):
    """A scan of ``n`` records (no files: the reader is a stub), patient by patient."""

    def iter_plan(source, *, problems, excluded=None):
        for k in range(n):
            patient = f"P{k // PER_PATIENT:06d}"
            yield Record(
                patient,
                f"O{k // PER_PATIENT:06d}",
                k % PER_PATIENT + 1,
                f"{root}/dicoms/{patient}/{k}.dcm",
                (("icontour", f"{root}/c/{k}.txt"), ("ocontour", None)),
            )

    return iter_plan


def held_by_build(n: int, tmp_path, monkeypatch) -> tuple[int, str]:
    """The most memory (bytes) that daskmri's own code held, between waves of tasks and
    at the end of the plan, while building a new store of ``n`` stub records; and the
    store. Python objects and numpy arrays count where daskmri made them (zarr's, dask's
    and asyncio's passing objects are left out, and garbage is collected first: they
    follow the machine's timing, not the records)."""
    root = tmp_path / f"data{n}"
    root.mkdir()
    scan = fake_scan(n, str(root))
    monkeypatch.setattr(plan, "iter_plan", scan)
    monkeypatch.setattr(builder, "iter_plan", scan)
    held = []
    ours = [tracemalloc.Filter(True, daskmri.__path__[0] + "/*")]

    def measured(function):
        def call(*args, **kwargs):
            # A full collection also empties Python's free lists (of tuples, floats...),
            # whose objects tracemalloc counts as allocated where they were made.
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces(ours)
            held.append(sum(stat.size for stat in snapshot.statistics("filename")))
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(builder._Waves, "_flush", measured(builder._Waves._flush))
    monkeypatch.setattr(builder, "_finish", measured(builder._finish))
    store = str(tmp_path / f"n{n}.zarr")
    tracemalloc.start()
    try:
        report = daskmri.build(
            root, store, chunk_size=16, shape=SHAPE, reader=stub_reader, scheduler="sync"
        )
    finally:
        tracemalloc.stop()
    assert report.records == n and report.parsed_chunks == n // 16
    return max(held), store


@pytest.mark.slow
def test_a_new_stores_client_memory_does_not_grow_with_its_records(tmp_path, monkeypatch):
    # Small blocks, batches and waves, so that 800 records already span many of each:
    # what is bounded by them shows as a constant, anything per record as growth.
    monkeypatch.setattr(fmt, "TABLE_CHUNK", 128)
    monkeypatch.setattr(store_state, "TABLE_CHUNK", 128)
    monkeypatch.setattr(builder, "PLAN_BATCH", 64)
    monkeypatch.setattr(builder, "KEEP_RECORDS", 16)
    monkeypatch.setattr(builder, "WAVE_CHUNKS", 4)
    # Imports and caches are filled once, before measuring.
    held_by_build(2_400, tmp_path, monkeypatch)
    small, _ = held_by_build(800, tmp_path, monkeypatch)
    large, store = held_by_build(3_200, tmp_path, monkeypatch)
    # 2,400 records more: the former build held its plan's arrays (keys, fingerprints,
    # units, slots, and the status, key and fingerprint tables read back) while the
    # tasks ran, more than 50 bytes a record.
    assert large - small < 10 * 2_400, (small, large)
    # And what it built is right: every record in its slot, with its pixels.
    state = read_state(StoreSpec.of(store), names=True)
    assert (state.status == fmt.OK).all() and state.done.all()
    ds = daskmri.open_dataset(store)
    assert ds.sizes["record"] == 3_200
    instances = ds["instance"].values
    assert instances.tolist() == [k % PER_PATIENT + 1 for k in range(3_200)]
    image = ds["image"].values
    assert (image == instances[:, None, None].astype(np.float32)).all()
    assert ds["icontour"].values[:, 1::2].all() and not ds["icontour"].values[:, ::2].any()
    assert not ds["ocontour"].values.any()
