"""Batches in reused memory (daskmri.batches.buffers.Recycler): an array is handed out
again only once nothing holds it, in any form (the batch, a slice, a memoryview, a
torch tensor, a transform's output); a batch the loop keeps never changes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import daskmri
from daskmri.batches.buffers import Recycler
from daskmri.synth import make_dataset

SHAPE = (256, 256)  # a 16-record batch of these is several MB: recycled


@pytest.fixture(scope="module")
def big_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("big"), patients=6, slices=30, shape=SHAPE)


@pytest.fixture(scope="module", params=["memory", "store"])
def big_ds(request, big_root, tmp_path_factory):
    if request.param == "memory":
        return daskmri.load_dataset(big_root, chunk_size=16, scheduler="sync")
    store = tmp_path_factory.mktemp("store") / "ds.zarr"
    daskmri.build(big_root, store, chunk_size=16, scheduler="sync")
    return daskmri.open_dataset(store)


@pytest.mark.parametrize(
    "hold",
    [
        lambda a: a[1:],
        memoryview,
        np.asarray,
        lambda a: {"image": a},
        lambda a: np.frombuffer(a, np.uint8),
        lambda a: a.reshape(-1)[::7],
    ],
    ids=["slice", "memoryview", "asarray", "dict", "frombuffer", "strided view"],
)
def test_an_array_is_reused_only_when_nothing_holds_it(hold):
    recycler = Recycler(capacity=8)
    shape = (4, 512, 512)
    first = recycler.empty(shape, np.float32)
    address = first.ctypes.data
    held = hold(first)
    del first
    other = recycler.empty(shape, np.float32)
    assert other.ctypes.data != address  # still held: a new array
    del other, held
    assert recycler.empty(shape, np.float32).ctypes.data == address  # let go: reused
    assert recycler.empty(shape, np.int16).dtype == np.int16  # another kind: its own


def test_the_pool_keeps_at_most_its_capacity():
    recycler = Recycler(capacity=2)
    held = [recycler.empty((1, 1024, 1024), np.float32) for _ in range(5)]
    assert len(recycler._pool) == 2
    del held


def test_without_exact_reference_counts_nothing_is_reused(monkeypatch):
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    recycler = Recycler(capacity=4)
    a = recycler.empty((1, 1024, 1024), np.float32)
    address = a.ctypes.data
    del a
    b = recycler.empty((1, 1024, 1024), np.float32)
    c = recycler.empty((1, 1024, 1024), np.float32)
    assert address not in {b.ctypes.data, c.ctypes.data} or len(recycler._pool) == 0
    assert len(recycler._pool) == 0


def _holds(batch: dict, j: int, names: list[str]):
    """Something the training loop keeps of batch ``j``: the batch, a slice, a
    memoryview, a torch tensor (when torch is here) or a transform-like view."""
    name = names[j % len(names)]
    kind = j % 5
    if kind == 0:
        return batch
    if kind == 1:
        return batch[name][1:]
    if kind == 2:
        return memoryview(batch[name])
    if kind == 3:
        torch = pytest.importorskip("torch", reason="the torch extra is not installed")
        return torch.from_numpy(batch[name])
    return batch[name].reshape(-1)[::3]


def _values(held) -> np.ndarray | dict:
    if isinstance(held, dict):
        return {k: np.array(v, copy=True) for k, v in held.items()}
    if hasattr(held, "numpy"):
        return held.numpy().copy()
    return np.array(held, copy=True)


@pytest.mark.parametrize("compact", [False, True])
def test_batches_the_loop_keeps_never_change(big_ds, compact):
    """Keep something of every other batch for two epochs while the rest are let go
    (and recycled): everything kept still holds what it held when served."""
    it = daskmri.BatchIterator(big_ds, batch_size=16, seed=3, compact=compact)
    names = list(it.serving.served)
    kept = []
    served = 0
    for _ in range(2):
        for j, batch in enumerate(it):
            served += 1
            if j % 2 == 0:
                held = _holds(batch, j // 2, names)
                kept.append((held, _values(held)))
            del batch
    assert served >= 10 and kept
    for held, values in kept:
        now = _values(held)
        if isinstance(values, dict):
            for name in values:
                assert np.array_equal(now[name], values[name]), name
        else:
            assert np.array_equal(now, values)
    it.close()


def test_let_go_batches_are_recycled_and_hold_the_right_records(big_ds):
    """Batches let go are made in reused memory, and each holds its records' values
    (those of the dataset, record by record)."""
    eager = big_ds[["image", "icontour", "ocontour"]].compute()
    keys = zip(eager.patient_id.values.tolist(), eager.instance.values.tolist(), strict=True)
    row = {key: k for k, key in enumerate(keys)}
    it = daskmri.BatchIterator(big_ds, batch_size=16, seed=5)
    addresses = []
    for _ in range(2):
        for batch in it:
            addresses.append(batch["image"].ctypes.data)
            pairs = zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True)
            for j, key in enumerate(pairs):
                for name in ("image", "icontour", "ocontour"):
                    assert np.array_equal(batch[name][j], eager[name].values[row[key]]), name
            del batch
    assert len(set(addresses)) < len(addresses) / 2
    it.close()
