"""BatchIterator: exactly once, deterministic, resumable, bounded, and nothing left behind."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import daskmri
from daskmri import BatchIterator, BatchSchema, DaskmriError
from daskmri.batches.iterator import remote_workers

from .conftest import SHAPE

N_RECORDS = 16  # in the session's synthetic dataset (labels="any")


def keys(batch) -> list[tuple[str, int]]:
    """(patient_id, instance) of each record of a batch (or of a dataset)."""
    patients, instances = np.asarray(batch["patient_id"]), np.asarray(batch["instance"])
    return list(zip(patients.tolist(), instances.tolist(), strict=True))


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("daskmri-prefetch")]


@pytest.fixture(params=["memory", "dask", "zarr"])
def ds(request, reference, synth_root):
    if request.param == "memory":
        return reference
    if request.param == "dask":
        return daskmri.load_dataset(synth_root, chunk_size=3, scheduler="sync")
    return request.getfixturevalue("zarr_ds")


def assert_batch_is_true(batch, reference) -> None:
    """Every array of the batch equals the dataset at the batch's records."""
    index = {k: i for i, k in enumerate(keys(reference))}
    rows = [index[k] for k in keys(batch)]
    for name in ("image", "icontour", "ocontour"):
        np.testing.assert_array_equal(batch[name], reference[name].values[rows])
    assert batch["image"].dtype == np.float32 and batch["icontour"].dtype == bool


class TestEpoch:
    def test_exactly_once_and_true(self, ds, reference):
        with BatchIterator(ds, batch_size=5, seed=1) as it:
            batches = list(it)
        assert len(batches) == len(it) == 4  # 16 records: 5 + 5 + 5 + 1
        assert [len(b["instance"]) for b in batches] == [5, 5, 5, 1]
        served = [k for b in batches for k in keys(b)]
        assert sorted(served) == sorted(keys(reference))
        for batch in batches:
            assert_batch_is_true(batch, reference)

    def test_drop_last(self, reference):
        it = BatchIterator(reference, batch_size=5, seed=1, drop_last=True)
        batches = list(it)
        assert len(batches) == len(it) == 3
        served = [k for b in batches for k in keys(b)]
        assert len(served) == len(set(served)) == 15

    def test_same_seed_same_order_and_epochs_differ(self, ds):
        first = [keys(b) for b in BatchIterator(ds, batch_size=4, seed=7)]
        again = [keys(b) for b in BatchIterator(ds, batch_size=4, seed=7)]
        assert first == again
        it = BatchIterator(ds, batch_size=4, seed=7)
        epoch0, epoch1 = [keys(b) for b in it], [keys(b) for b in it]
        assert it.epoch == 2
        assert epoch0 == first and epoch1 != epoch0
        assert sorted(k for b in epoch1 for k in b) == sorted(k for b in epoch0 for k in b)
        assert [keys(b) for b in BatchIterator(ds, batch_size=4, seed=8)] != first

    def test_epoch_can_be_set(self, reference):
        it = BatchIterator(reference, batch_size=4, seed=7)
        list(it)
        second = [keys(b) for b in it]
        it.epoch = 1
        assert [keys(b) for b in it] == second

    def test_no_shuffle_is_dataset_order(self, reference):
        batches = list(BatchIterator(reference, batch_size=6, shuffle=False))
        assert [k for b in batches for k in keys(b)] == keys(reference)

    def test_variables(self, reference):
        (batch, *_) = BatchIterator(reference, batch_size=4, variables=["image", "has_icontour"])
        assert sorted(batch) == ["has_icontour", "image", "instance", "padding", "patient_id"]
        with pytest.raises(ValueError, match="no \\['nope'\\]"):
            BatchIterator(reference, variables=["nope"])

    def test_a_batch_mixes_chunks(self, reference):
        """Statistic: the share of a batch taken by its most common chunk, averaged over
        batches (1.0: every batch from one chunk; 1/3: three chunks per batch of 3). With
        shuffle_chunks=4 every step deals one record from each of three chunks (chunks of 3
        in 4 parts: 1, 1, 1, 0), so a batch of 3 mostly spans three chunks, or two where it
        straddles steps: 0.57 with this seed. With shuffle_chunks=1 a batch is one chunk
        except where the dataset's one short chunk shifts the alignment: 0.86. Threshold
        0.7 between the two, averaged over 20 epochs (about 120 batches)."""

        def mean_max_share(shuffle_chunks: int) -> float:
            chunk_of = {k: i // 3 for i, k in enumerate(keys(reference))}
            it = BatchIterator(reference, batch_size=3, seed=3, shuffle_chunks=shuffle_chunks)
            shares = []
            for _ in range(20):
                for batch in it:
                    counts = np.bincount([chunk_of[k] for k in keys(batch)])
                    shares.append(counts.max() / len(batch["instance"]))
            return float(np.mean(shares))

        assert mean_max_share(4) < 0.7
        assert mean_max_share(1) >= 0.85


class TestResume:
    @pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 4])
    def test_resume_mid_epoch_gives_the_rest(self, ds, stop_after):
        full = BatchIterator(ds, batch_size=3, seed=11, shuffle_chunks=2)
        list(full)  # epoch 0
        expected = list(full)  # epoch 1, uninterrupted
        it = BatchIterator(ds, batch_size=3, seed=11, shuffle_chunks=2)
        list(it)
        epoch = iter(it)
        for _ in range(stop_after):
            next(epoch)
        state = it.state_dict()
        it.close()

        resumed = BatchIterator(ds, batch_size=3, seed=999, shuffle_chunks=2)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(expected) - stop_after
        for got, want in zip(rest, expected[stop_after:], strict=True):
            assert keys(got) == keys(want)
            for name in ("image", "icontour", "ocontour"):
                np.testing.assert_array_equal(got[name], want[name])
        assert resumed.epoch == 2 and resumed.state_dict()["batch"] == 0

    def test_state_from_other_settings_is_refused(self, reference):
        state = BatchIterator(reference, batch_size=3, shuffle_chunks=2).state_dict()
        with pytest.raises(ValueError, match="shuffle_chunks=2"):
            BatchIterator(reference, batch_size=3).load_state_dict(state)
        state = BatchIterator(reference.isel(record=slice(1, None)), batch_size=3).state_dict()
        with pytest.raises(ValueError, match="chunks="):
            BatchIterator(reference, batch_size=3).load_state_dict(state)

    @pytest.mark.parametrize("batch", [0, 2])
    def test_a_state_of_the_old_format_is_refused_in_one_line(self, reference, batch):
        old = {"epoch": 1, "batch": batch, "seed": 0, "batch_size": 3}  # format 1: no "format"
        it = BatchIterator(reference, batch_size=3)
        for state in (old, {**old, "format": 1}):
            with pytest.raises(ValueError, match="start a new epoch") as info:
                it.load_state_dict(state)
            assert "\n" not in str(info.value) and "format" in str(info.value)
        assert (it.epoch, it.state_dict()["batch"]) == (0, 0)  # untouched
        it.load_state_dict(it.state_dict())  # the current format still loads


class TestSchema:
    def test_plan_covers_every_record_once_for_many_shapes(self):
        for chunks in [(1,), (5, 5, 2), (64,) * 7 + (3,), (0, 4, 0, 4)]:
            for bs in (1, 3, 8):
                for span in (1, 2, 4):
                    schema = BatchSchema(chunks=chunks, batch_size=bs, seed=2, shuffle_chunks=span)
                    batches = list(schema.batches(epoch=5))
                    assert len(batches) == len(schema)
                    flat = np.concatenate(batches)
                    assert sorted(flat.tolist()) == list(range(sum(chunks)))

    def test_a_chunk_spans_at_most_shuffle_chunks_steps_and_a_step_opens_one(self):
        schema = BatchSchema(chunks=(6,) * 5 + (4,), batch_size=4, seed=3, shuffle_chunks=2)
        plan = schema.plan(0)
        spans = {c: plan.steps[plan.chunks == c] for c in np.unique(plan.chunks)}
        assert all(steps.max() - steps.min() <= 1 for steps in spans.values())
        opened = sorted(int(steps.min()) for steps in spans.values())
        assert opened == list(range(len(spans)))  # one new chunk per step
        # served step by step: the steps never go back
        assert (np.diff(plan.steps) >= 0).all()

    def test_fetch_order_is_first_use_and_release_is_last_use(self):
        schema = BatchSchema(chunks=(5, 5, 5, 5), batch_size=3, seed=1, shuffle_chunks=2)
        plan = schema.plan(2)
        chunks, first, last = plan.fetches(start=4)
        for c, f, z in zip(chunks, first, last, strict=True):
            used = np.flatnonzero(plan.chunks == c)
            used = used[used >= 4]
            assert (f, z) == (used.min(), used.max())
        assert (np.diff(first) > 0).all()

    def test_epochs_differ_and_repeat(self):
        schema = BatchSchema(chunks=(4, 4, 4), batch_size=3, seed=5)
        first = [b.tolist() for b in schema.batches(0)]
        assert first == [b.tolist() for b in schema.batches(0)]
        assert first != [b.tolist() for b in schema.batches(1)]
        in_order = BatchSchema(chunks=(4, 4, 4), batch_size=5, shuffle=False)
        assert next(in_order.batches(0)).tolist() == [0, 1, 2, 3, 4]

    def test_drop_last_leaves_out_only_the_short_batch(self):
        schema = BatchSchema(chunks=(5, 5), batch_size=3, drop_last=True, seed=0)
        batches = list(schema.batches(0))
        assert len(batches) == len(schema) == 3 and all(len(b) == 3 for b in batches)
        assert len({int(i) for b in batches for i in b}) == 9

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="batch_size"):
            BatchSchema(chunks=(3,), batch_size=0)
        with pytest.raises(ValueError, match="shuffle_chunks"):
            BatchSchema(chunks=(3,), shuffle_chunks=0)


def lazy_dataset(n: int, chunk: int = 64, size: int = 64) -> xr.Dataset:
    """A dask-backed daskmri-like dataset computed on demand, nothing in memory: record
    k's image is all k, its masks true where k is even or a multiple of 3."""
    index = da.arange(n, chunks=chunk, dtype=np.float32)[:, None, None]
    image = index * da.ones((1, size, size), dtype=np.float32, chunks=(1, size, size))
    return xr.Dataset(
        {"image": (("record", "y", "x"), image),
         "icontour": (("record", "y", "x"), image % 2 == 0),
         "ocontour": (("record", "y", "x"), image % 3 == 0),
         "has_icontour": ("record", np.ones(n, bool)),
         "has_ocontour": ("record", np.ones(n, bool))},
        coords={"patient_id": ("record", np.array(["P"] * n)),
                "instance": ("record", np.arange(n))},
    )  # fmt: skip


#: Peak traced memory of an epoch over ``lazy_dataset(n)``, the least of two, measured in
#: a fresh interpreter: tracemalloc counts what every thread of its process allocates,
#: and in the test session other threads (the session's cluster client, the local pool's
#: manager) allocate meanwhile, which is noise here.
PEAK = """
import gc, sys, tracemalloc
from tests.test_batches import BatchIterator, lazy_dataset

def peak(n):
    # The dataset's own task graph (about 9 KB a chunk here) is the caller's, made
    # before the count starts: what is measured is what the iterator holds.
    ds = lazy_dataset(n)
    gc.collect()
    tracemalloc.start()
    try:
        for batch in BatchIterator(ds, batch_size=8, seed=0):
            # The pixels are right, so the lazy dataset really was computed.
            assert (batch["image"][:, 0, 0] == batch["instance"]).all()
            del batch
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

print(min(peak(int(sys.argv[1])), peak(int(sys.argv[1]))))
"""


def test_memory_is_bounded_by_the_chunks_in_play_not_the_dataset():
    # Both sizes at once, each in a process of its own: peaks are per process.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", PEAK, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for n in (2_000, 20_000)
    ]
    peaks = []
    try:
        for run in runs:
            out, err = run.communicate(timeout=240)
            assert run.returncode == 0, err[-2000:]
            peaks.append(int(out.split()[-1]))
    finally:
        for run in runs:
            run.kill()
            run.wait(timeout=10)
    small, large = peaks
    # The bounded part: (shuffle_chunks + prefetch) = 6 chunks of 64 x 64 x 64 x 6 bytes
    # in play, plus the temporaries of computing the lazy masks on the prefetch threads:
    # measured 13.9 MB (8.8 chunks); the whole dataset would be 32 chunks. What may grow
    # with the dataset is the plan (records, chunks, steps: 17 bytes a record), the
    # coordinates and the dask graph: measured 129 bytes a record, against a record's
    # 24,576 bytes of pixels. The bound is 1% of those.
    chunk = 64 * 64 * 64 * 6
    assert small < 10 * chunk, small
    assert (large - small) / 18_000 < 256, (small, large)


class Flaky:
    """Fails the first ``failures`` calls (counted in a file, so retries are visible)."""

    def __init__(self, path, failures: int, delay: float = 0.0) -> None:
        self.path, self.failures, self.delay = path, failures, delay

    def __call__(self, block):
        with open(self.path, "a") as fh:
            fh.write("x")
        time.sleep(self.delay)
        if len(self.path.read_text()) <= self.failures:
            raise OSError("stub read failure")
        return block


class TestFailures:
    def _ds(self, fn):
        ds = lazy_dataset(128, chunk=64, size=8)
        # A copy of the image graph that goes through fn, block by block.
        return ds.assign(image=ds.image.copy(data=ds.image.data.map_blocks(fn, dtype=np.float32)))

    def test_a_failed_fetch_is_retried(self, tmp_path):
        ds = self._ds(Flaky(tmp_path / "calls", failures=1))
        batches = list(BatchIterator(ds, batch_size=8, seed=0, prefetch=0))
        assert sum(len(b["instance"]) for b in batches) == 128

    def test_a_fetch_that_keeps_failing_is_raised_clearly(self, tmp_path):
        ds = self._ds(Flaky(tmp_path / "calls", failures=10**6))
        it = BatchIterator(ds, batch_size=8, seed=0, retries=2)
        with pytest.raises(DaskmriError, match="after 3 tries: OSError: stub read failure"):
            list(it)
        assert not prefetch_threads()

    def test_a_fetch_that_hangs_times_out(self, tmp_path):
        ds = self._ds(Flaky(tmp_path / "calls", failures=0, delay=1.5))
        it = BatchIterator(ds, batch_size=8, seed=0, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(DaskmriError, match=r"did not arrive within 0\.2 s"):
            list(it)
        assert time.monotonic() - started < 30


class TestWarmStart:
    """While an epoch ends, the next epoch's first chunks are fetched, so its first
    batch does not wait; what is fetched so is released on close, on a resume and
    when an epoch is left early."""

    def test_the_next_epochs_first_chunks_are_fetched_as_an_epoch_ends(self, zarr_ds, reference):
        it = BatchIterator(zarr_ds, batch_size=4, seed=3)
        first = list(it)
        plan = it.plan()  # epoch 1's plan
        chunks, starts, _ = plan.fetches(0)
        needed = int(np.searchsorted(starts, plan.batch(0).stop))
        assert it._warm is not None and it._warm.epoch == 1
        assert [c for c, _ in it._warm.pending] == chunks[:needed].tolist()
        assert prefetch_threads()  # held for the next epoch
        second = list(it)
        assert it.epoch_chunks == chunks.tolist()  # each chunk of the plan once, in order
        with BatchIterator(reference, batch_size=4, seed=3) as fresh:
            assert [keys(b) for b in first] == [keys(b) for b in fresh]
            assert [keys(b) for b in second] == [keys(b) for b in fresh]
        for batch in second:
            assert_batch_is_true(batch, reference)
        it.close()
        assert it._warm is None and not prefetch_threads()

    def test_a_resume_or_an_early_break_keeps_nothing(self, zarr_ds):
        it = BatchIterator(zarr_ds, batch_size=4, seed=3)
        list(it)
        state = it.state_dict()
        it.load_state_dict(state)
        assert it._warm is None
        for _ in it:
            break
        gc.collect()  # garbage only tells the threads to stop (never waits): they end soon
        assert it._warm is None and wait_for(lambda: not prefetch_threads())


class TestRelease:
    def test_break_exception_and_close_leave_no_threads(self, zarr_ds):
        it = BatchIterator(zarr_ds, batch_size=2, seed=0)
        for _ in it:
            assert prefetch_threads()
            break
        gc.collect()  # garbage only tells the threads to stop (never waits): they end soon
        assert wait_for(lambda: not prefetch_threads())

        def train():
            for _ in it:
                raise RuntimeError("training failed")

        with pytest.raises(RuntimeError):
            train()
        gc.collect()  # garbage only tells the threads to stop (never waits): they end soon
        assert wait_for(lambda: not prefetch_threads())

        with BatchIterator(zarr_ds, batch_size=2, seed=0) as it:
            epoch = iter(it)
            next(epoch)
            assert prefetch_threads()
        assert not prefetch_threads()
        with pytest.raises(DaskmriError, match="closed"):
            iter(it)


def scheduler_tasks(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class TestCluster:
    @pytest.fixture(params=["persisted", "zarr"])
    def cluster_ds(self, request, client, synth_root):
        if request.param == "persisted":
            return daskmri.load_dataset(synth_root, chunk_size=3, client=client)
        return request.getfixturevalue("zarr_ds")

    def test_epoch_resume_and_truth_through_a_local_cluster(self, cluster_ds, client, reference):
        it = BatchIterator(cluster_ds, batch_size=5, seed=4, client=client)
        assert it.client is client
        batches = list(it)
        assert sorted(k for b in batches for k in keys(b)) == sorted(keys(reference))
        for batch in batches:
            assert_batch_is_true(batch, reference)
        local = [keys(b) for b in BatchIterator(reference, batch_size=5, seed=4)]
        assert [keys(b) for b in batches] == local  # same plan, wherever it runs

        epoch = iter(it)
        next(epoch)
        state = it.state_dict()
        it.close()
        resumed = BatchIterator(cluster_ds, batch_size=5, seed=0, client=client)
        resumed.load_state_dict(state)
        full = BatchIterator(reference, batch_size=5, seed=4)
        list(full)  # epoch 0; the state above was taken one batch into epoch 1
        expected = [keys(b) for b in full]
        assert [keys(b) for b in resumed] == expected[1:]

    def test_chunks_compressed_on_the_workers_serve_the_same_batches(
        self, cluster_ds, client, reference
    ):
        # On one machine the default is not to compress (moving costs less).
        assert not BatchIterator(cluster_ds, batch_size=5, client=client).compress
        it = BatchIterator(cluster_ds, batch_size=5, seed=4, client=client, compress=True)
        batches = list(it)
        local = list(BatchIterator(reference, batch_size=5, seed=4))
        assert [keys(b) for b in batches] == [keys(b) for b in local]
        for batch, expected in zip(batches, local, strict=True):
            for name in ("image", "icontour", "ocontour"):
                np.testing.assert_array_equal(batch[name], expected[name])
                assert batch[name].dtype == expected[name].dtype
            assert_batch_is_true(batch, reference)

    def test_a_warm_start_on_the_cluster_is_released_on_close(self, cluster_ds, client):
        before = scheduler_tasks(client)
        it = BatchIterator(cluster_ds, batch_size=2, seed=0, client=client)
        list(it)
        assert it._warm is not None and it._warm.pending
        it.close()
        gc.collect()
        assert wait_for(lambda: scheduler_tasks(client) == before)

    def test_workers_on_another_host_are_remote(self):
        class Reported:  # what a scheduler reports: worker addresses
            def __init__(self, *addresses):
                self.addresses = addresses

            def scheduler_info(self, n_workers=-1):
                return {"workers": {address: {} for address in self.addresses}}

        assert not remote_workers(Reported("tcp://127.0.0.1:4000", "tcp://[::1]:4001"))
        assert not remote_workers(Reported(f"tcp://{socket.gethostname()}:4000"))
        assert remote_workers(Reported("tcp://127.0.0.1:4000", "tcp://203.0.113.7:4000"))
        assert remote_workers(Reported("tls://gpu-node-7.example.org:8786"))

        class Older(Reported):  # distributed before scheduler_info(n_workers=)
            def scheduler_info(self):
                return super().scheduler_info()

        assert remote_workers(Older("tcp://203.0.113.7:4000"))
        assert not remote_workers(Older("tcp://127.0.0.1:4000"))

    def test_early_break_releases_every_future(self, cluster_ds, client):
        before = scheduler_tasks(client)
        it = BatchIterator(cluster_ds, batch_size=2, seed=0, client=client, prefetch=3)
        for _ in it:
            break
        gc.collect()
        assert wait_for(lambda: scheduler_tasks(client) == before), (
            scheduler_tasks(client),
            before,
        )

        def train():
            for _ in BatchIterator(cluster_ds, batch_size=2, seed=0, client=client):
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            train()
        gc.collect()
        assert wait_for(lambda: scheduler_tasks(client) == before)

        with BatchIterator(cluster_ds, batch_size=2, seed=0, client=client) as it:
            next(iter(it))
        assert wait_for(lambda: scheduler_tasks(client) == before)
        assert not prefetch_threads()

    def test_a_client_that_is_not_the_default(self, synth_root, local_cluster, reference):
        from distributed import Client

        with Client(local_cluster, set_as_default=False, timeout="30s") as other:
            ds = daskmri.load_dataset(synth_root, chunk_size=3, client=other)
            it = BatchIterator(ds, batch_size=5, seed=1)
            assert it.client is other
            batches = list(it)
        assert sorted(k for b in batches for k in keys(b)) == sorted(keys(reference))

    def test_persisted_dataset_uses_its_cluster_by_default(self, synth_root, client):
        ds = daskmri.load_dataset(synth_root, chunk_size=3, client=client)
        assert BatchIterator(ds).client is client


def test_shape_of_batches(reference):
    (batch, *_) = BatchIterator(reference, batch_size=4, seed=0)
    assert batch["image"].shape == (4, *SHAPE)
    assert batch["patient_id"].dtype.kind == "U" and batch["instance"].dtype == np.int64
