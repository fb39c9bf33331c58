"""The epoch as a state machine, and stopping it: garbage never waits (``del`` mid-epoch
returns at once, even with a slow chunk in flight, and the threads end soon after),
an explicit close waits, bounded, and leaves no thread behind."""

from __future__ import annotations

import gc
import threading
import time

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskmri import BatchIterator, DaskmriError
from daskmri.batches.epoch import Cursor, Epoch, EpochState
from daskmri.batches.fetching import FetchSettings
from daskmri.batches.loading import FetchCounts, Loading, WarmSlot

from .test_iterator_golden import MIXED, mixed_dataset

SLOW = 3.0  # seconds a slow chunk takes to load


def daskmri_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("daskmri-")]


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def slow_dataset(n: int = 32, chunk: int = 8, fail: bool = False) -> xr.Dataset:
    """Record k's image is all k; every chunk but the first takes SLOW seconds (or,
    with ``fail``, raises)."""

    def load(block):
        if block[0, 0, 0] >= chunk:
            if fail:
                raise OSError("stub read failure")
            time.sleep(SLOW)
        return block

    index = da.arange(n, chunks=chunk, dtype=np.float32)[:, None, None]
    image = (index * da.ones((1, 4, 4), dtype=np.float32, chunks=(1, 4, 4))).map_blocks(
        load, dtype=np.float32
    )
    return xr.Dataset(
        {"image": (("record", "y", "x"), image)},
        coords={
            "patient_id": ("record", np.array(["P"] * n)),
            "instance": ("record", np.arange(n)),
        },
    )


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    assert wait_for(lambda: not daskmri_threads()), daskmri_threads()


def test_del_mid_epoch_returns_at_once_with_a_slow_chunk_in_flight():
    it = BatchIterator(slow_dataset(), batch_size=8, shuffle=False, variables=["image"])
    batches = iter(it)
    assert next(batches)["instance"].tolist() == list(range(8))
    time.sleep(0.3)  # the batch thread now waits for chunk 1, which takes SLOW s
    assert daskmri_threads()
    started = time.monotonic()
    del batches, it
    gc.collect()
    took = time.monotonic() - started
    # Functional bound, generous: the old __del__ waited for the slow chunk (SLOW s).
    assert took < 1.0, took
    # Nothing leaks: the threads end once the chunk load under way ends.
    assert wait_for(lambda: not daskmri_threads(), timeout=SLOW + 20), daskmri_threads()


def test_an_explicit_close_waits_bounded_and_leaves_no_thread():
    it = BatchIterator(slow_dataset(), batch_size=8, shuffle=False, variables=["image"])
    batches = iter(it)
    next(batches)
    time.sleep(0.3)
    started = time.monotonic()
    it.close()
    assert time.monotonic() - started < it.timeout + 10
    assert not daskmri_threads()  # close waited for them
    with pytest.raises(StopIteration):
        next(batches)  # the closed epoch ends, as before


def loading(ds, **kw) -> Loading:
    from daskmri import BatchSchema

    schema = BatchSchema(chunks=(8,) * (ds.sizes["record"] // 8), batch_size=8, shuffle=False)
    settings = FetchSettings(ds, ("image",), schema.chunks)
    defaults = dict(prefetch=1, retries=0, timeout=30.0, transform=None)
    return Loading(
        schema=schema,
        fetching=settings,
        counts=FetchCounts(),
        warm=WarmSlot(),
        **{**defaults, **kw},
    )


def test_the_states_of_an_epoch():
    epoch = Epoch(loading(slow_dataset(16, fail=False).isel(record=slice(0, 8))), Cursor(0))
    assert epoch.state is EpochState.PLANNED and epoch.position == 0
    assert len(epoch.next_batch()["image"]) == 8
    assert epoch.state is EpochState.RUNNING and epoch.position == 1
    assert epoch.resume_point() == Cursor(0, (), 1)
    with pytest.raises(StopIteration):
        epoch.next_batch()
    assert epoch.state is EpochState.DRAINED and epoch.resume_point() == Cursor(1)
    epoch.cancel()  # a final state stays
    assert epoch.state is EpochState.DRAINED

    failing = Epoch(loading(slow_dataset(16, fail=True)), Cursor(0))
    failing.next_batch()
    with pytest.raises(DaskmriError, match="after 1 tries: OSError: stub read failure"):
        failing.next_batch()
    assert failing.state is EpochState.FAILED and failing.resume_point() == Cursor(0, (), 1)
    with pytest.raises(StopIteration):
        failing.next_batch()

    closed = Epoch(loading(slow_dataset()), Cursor(2, (), 1))
    assert closed.next_batch()["instance"].tolist() == list(range(8, 16))
    assert closed.close(timeout=SLOW + 10)
    assert closed.state is EpochState.CLOSED and closed.resume_point() == Cursor(2, (), 2)
    with pytest.raises(StopIteration):
        closed.next_batch()


def test_compressed_chunks_of_any_dtype_through_a_cluster(client):
    """int16, uint8 and float64 variables, persisted and packed on the workers: the
    batches of the local iterator, dtype for dtype."""
    local = list(BatchIterator(mixed_dataset(), batch_size=4, seed=4, variables=MIXED))
    persisted = client.persist(mixed_dataset())
    for compress in (False, True):
        it = BatchIterator(persisted, batch_size=4, seed=4, variables=MIXED, compress=compress)
        assert it.client is client
        for got, want in zip(it, local, strict=True):
            assert sorted(got) == sorted(want)
            for name in want:
                assert got[name].dtype == want[name].dtype
                np.testing.assert_array_equal(got[name], want[name])
