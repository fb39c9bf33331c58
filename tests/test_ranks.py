"""BatchIterator on several ranks: shares exactly once and even, padding marked,
resume on another world size, locality of fetches, transform, and split by patient."""

from __future__ import annotations

import numpy as np
import pytest

import daskmri
from daskmri import BatchIterator, DaskmriError
from daskmri.testing import raise_if_dask_computes

from .test_batches import assert_batch_is_true, keys, lazy_dataset

N_RECORDS = 16  # the session's synthetic dataset, in chunks of 3: 3, 3, 3, 3, 3, 1


@pytest.fixture(params=["memory", "persisted", "zarr"])
def ds(request, reference, synth_root):
    if request.param == "memory":
        return reference
    if request.param == "persisted":
        client = request.getfixturevalue("client")
        return daskmri.load_dataset(synth_root, chunk_size=3, client=client)
    return request.getfixturevalue("zarr_ds")


def epoch_on_ranks(ds, world_size: int, **kwargs) -> list[list[dict]]:
    """One epoch on each of ``world_size`` ranks: each rank's batches."""
    out = []
    for rank in range(world_size):
        with BatchIterator(ds, rank=rank, world_size=world_size, **kwargs) as it:
            batches = list(it)
            assert len(batches) == len(it)
        out.append(batches)
    return out


def served(batches: list[dict], padding: bool = False) -> list[tuple[str, int]]:
    """The records of the batches, without (or only) the padding."""
    return [
        k
        for b in batches
        for k, pad in zip(keys(b), b["padding"].tolist(), strict=True)
        if pad == padding
    ]


class TestShares:
    @pytest.mark.parametrize("world_size", [1, 2, 3, 4])
    def test_exactly_once_even_counts_and_padding_marked(self, ds, reference, world_size):
        ranks = epoch_on_ranks(ds, world_size, batch_size=3, seed=5)
        assert len({len(batches) for batches in ranks}) == 1  # no rank waits on another
        # DistributedSampler's rule: every rank serves ceil(N / world_size) records.
        share = -(-N_RECORDS // world_size)
        assert all(sum(len(b["instance"]) for b in batches) == share for batches in ranks)
        everything = [k for batches in ranks for k in served(batches)]
        assert sorted(everything) == sorted(keys(reference))  # each record exactly once
        repeats = [k for batches in ranks for k in served(batches, padding=True)]
        assert len(repeats) == share * world_size - N_RECORDS
        assert set(repeats) <= set(everything)
        for batches in ranks:
            for batch in batches:
                assert batch["padding"].dtype == bool
                assert_batch_is_true(batch, reference)

    @pytest.mark.parametrize("world_size", [1, 2, 3, 4])
    def test_drop_last_serves_full_batches_and_leaves_out_less_than_one_round(self, ds, world_size):
        ranks = epoch_on_ranks(ds, world_size, batch_size=3, seed=5, drop_last=True)
        counts = {len(batches) for batches in ranks}
        assert counts == {N_RECORDS // (3 * world_size)}
        everything = [k for batches in ranks for b in batches for k in keys(b)]
        assert len(everything) == len(set(everything))  # nothing repeats
        assert 0 <= N_RECORDS - len(everything) < 3 * world_size
        assert all(len(b["instance"]) == 3 and not b["padding"].any() for r in ranks for b in r)

    def test_every_rank_orders_the_same_epoch_and_epochs_differ(self, reference):
        first = epoch_on_ranks(reference, 2, batch_size=3, seed=1)
        again = epoch_on_ranks(reference, 2, batch_size=3, seed=1)
        assert [[keys(b) for b in r] for r in first] == [[keys(b) for b in r] for r in again]
        it = BatchIterator(reference, batch_size=3, seed=1, rank=1, world_size=2)
        assert [keys(b) for b in it] == [keys(b) for b in first[1]]
        assert [keys(b) for b in it] != [keys(b) for b in first[1]]  # epoch 1

    def test_more_ranks_than_records(self, reference):
        tiny = reference.isel(record=slice(0, 3))
        ranks = epoch_on_ranks(tiny, 5, batch_size=2, seed=0)
        assert [len(r) for r in ranks] == [1] * 5
        assert sorted(k for r in ranks for k in served(r)) == sorted(keys(tiny))
        assert epoch_on_ranks(tiny, 5, batch_size=2, seed=0, drop_last=True) == [[]] * 5

    def test_bad_ranks_are_refused(self, reference):
        with pytest.raises(ValueError, match=r"rank must be an int in \[0, world_size=2\)"):
            BatchIterator(reference, rank=2, world_size=2, seed=0)
        with pytest.raises(ValueError, match="world_size must be a positive int"):
            BatchIterator(reference, rank=0, world_size=0, seed=0)

    def test_without_torch_distributed_the_defaults_are_one_process(self, reference):
        it = BatchIterator(reference)
        assert (it.rank, it.world_size) == (0, 1)
        with pytest.raises(ValueError, match="rank was given without world_size"):
            BatchIterator(reference, rank=1)
        with pytest.raises(ValueError, match="world_size was given without rank"):
            BatchIterator(reference, world_size=4)

    def test_several_ranks_outside_a_process_group_need_one_seed(self, reference):
        """A random seed per rank would give each its own epoch order: records lost and
        repeated. Under torch.distributed rank 0's seed is sent to all (test_ddp.py)."""
        with pytest.raises(ValueError, match="world_size=2 needs seed="):
            BatchIterator(reference, rank=0, world_size=2)
        with pytest.raises(ValueError, match="seed must be an int >= 0"):
            BatchIterator(reference, seed=-1)


def resume_union(ds, before: tuple[int, int], after: tuple[int, int], stop_after: int):
    """Every rank of ``before = (world_size, batch_size)`` serves ``stop_after`` batches
    of epoch 1; its state resumes on ``after``: what each part served."""
    (w1, b1), (w2, b2) = before, after
    first, states = [], []
    for rank in range(w1):
        it = BatchIterator(ds, batch_size=b1, seed=3, rank=rank, world_size=w1)
        list(it)  # epoch 0
        epoch = iter(it)
        first += [k for _ in range(stop_after) for k in served([next(epoch)])]
        states.append(it.state_dict())
        it.close()
    assert all(s == states[0] for s in states)  # any rank's state is the global one
    rest, lengths = [], set()
    for rank in range(w2):
        it = BatchIterator(ds, batch_size=b2, seed=99, rank=rank, world_size=w2)
        it.load_state_dict(states[0])
        batches = list(it)
        lengths.add((len(it), len(batches)))
        assert it.epoch == 2
        rest += served(batches)
    assert len(lengths) == 1 and len(next(iter(lengths))) == 2
    return first, rest


class TestElasticResume:
    @pytest.mark.parametrize(
        ("before", "after", "stop_after"),
        [((2, 3), (3, 3), 1), ((3, 2), (2, 2), 2), ((2, 2), (3, 4), 1), ((1, 3), (4, 1), 3)],
    )
    def test_the_rest_of_the_epoch_once_on_another_world_size(
        self, ds, reference, before, after, stop_after
    ):
        first, rest = resume_union(ds, before, after, stop_after)
        assert len(first) == len(set(first)) and len(rest) == len(set(rest))
        assert not set(first) & set(rest)
        assert sorted(first + rest) == sorted(keys(reference))

    def test_twice_resumed(self, reference):
        states = []
        for rank in range(2):
            it = BatchIterator(reference, batch_size=2, seed=0, rank=rank, world_size=2)
            epoch = iter(it)
            seen = served([next(epoch)])
            states.append((it.state_dict(), seen))
            it.close()
        state, first = states[0][0], states[0][1] + states[1][1]
        second, states = [], []
        for rank in range(3):
            it = BatchIterator(reference, batch_size=1, seed=0, rank=rank, world_size=3)
            it.load_state_dict(state)
            epoch = iter(it)
            second += served([next(epoch), next(epoch)])
            states.append(it.state_dict())
            it.close()
        assert states[0]["history"] == [[2, 2, 1]]
        rest = []
        for rank in range(2):
            it = BatchIterator(reference, batch_size=4, seed=0, rank=rank, world_size=2)
            it.load_state_dict(states[0])
            assert it.state_dict()["history"] == [[2, 2, 1], [3, 1, 2]]
            rest += served(list(it))
        assert sorted(first + second + rest) == sorted(keys(reference))

    def test_a_state_after_the_last_batch_is_the_next_epoch(self, reference):
        it = BatchIterator(reference, batch_size=4, seed=0, rank=0, world_size=2)
        epoch = iter(it)
        for _ in range(len(it)):
            next(epoch)
        state = it.state_dict()  # before StopIteration: the epoch is all served
        assert (state["epoch"], state["batch"], state["history"]) == (1, 0, [])
        resumed = BatchIterator(reference, batch_size=2, seed=0, rank=0, world_size=3)
        resumed.load_state_dict(state)
        assert len(list(resumed)) == len(resumed) > 0 and resumed.epoch == 2

    def test_states_from_elsewhere_are_refused(self, reference):
        state = BatchIterator(reference, batch_size=4, seed=0).state_dict()
        with pytest.raises(ValueError, match="format 99, newer"):
            BatchIterator(reference, batch_size=4).load_state_dict({**state, "format": 99})
        with pytest.raises(ValueError, match="batch 999 of an epoch of 4 batches"):
            BatchIterator(reference, batch_size=4).load_state_dict({**state, "batch": 999})

    def test_same_world_size_resumes_batch_for_batch(self, reference):
        full = BatchIterator(reference, batch_size=2, seed=4, rank=1, world_size=2)
        expected = [keys(b) for b in full]
        it = BatchIterator(reference, batch_size=2, seed=4, rank=1, world_size=2)
        epoch = iter(it)
        next(epoch)
        state = it.state_dict()
        it.close()
        again = BatchIterator(reference, batch_size=2, seed=0, rank=1, world_size=2)
        again.load_state_dict(state)
        assert [keys(b) for b in again] == expected[1:]
        assert len(again) == len(expected)


class TestLocality:
    """Each rank fetches only the chunks that hold its records: about 1/world_size of
    them, and a chunk is fetched by at most two ranks (when a share holds a chunk)."""

    @pytest.mark.parametrize("world_size", [2, 3, 4])
    def test_each_rank_fetches_its_share_of_the_chunks(self, world_size):
        ds = lazy_dataset(2_000, chunk=64, size=4)  # 32 chunks
        fetched, nbytes = [], []
        for rank in range(world_size):
            it = BatchIterator(ds, batch_size=8, seed=0, rank=rank, world_size=world_size)
            for batch in it:  # the pixels are the record's own
                assert (batch["image"][:, 0, 0] == batch["instance"]).all()
            plan_chunks = set(np.unique(it.schema.plan(0).chunks).tolist())
            assert set(it.epoch_chunks) == plan_chunks  # only the chunks it needs
            assert len(it.epoch_chunks) == len(plan_chunks) == it.chunks_fetched
            fetched.append(it.epoch_chunks)
            nbytes.append(it.bytes_fetched)
        counts = np.bincount(np.concatenate(fetched), minlength=32)
        assert counts.min() >= 1 and counts.max() <= 2
        assert counts.sum() <= 32 + world_size - 1  # only the chunks at share boundaries twice
        for chunks in fetched:
            assert len(chunks) <= 32 / world_size + 2
        # image float32 + two bool masks: 4 x 4 x 6 bytes a record
        assert sum(nbytes) == counts @ np.bincount(np.arange(2_000) // 64) * 4 * 4 * 6

    def test_memory_stays_within_the_window(self):
        """At most shuffle_chunks + prefetch (+1 at a batch edge) chunks held at once."""
        ds = lazy_dataset(1_000, chunk=16, size=2)
        it = BatchIterator(ds, batch_size=4, seed=0, rank=1, world_size=2, prefetch=2)
        plan = it.schema.plan(0)
        _, first, last = plan.fetches()
        for stop in range(4, len(plan.records) + 1, 4):
            in_use = ((first < stop) & (last >= stop - 4)).sum()
            assert in_use <= it.schema.span + 1


def flip(batch, rng):
    """Flip each image left-right with probability 1/2, masks alike."""
    out = dict(batch)
    flips = rng.random(len(batch["image"])) < 0.5
    for name in ("image", "icontour", "ocontour"):
        out[name] = np.where(flips[:, None, None], batch[name][..., ::-1], batch[name])
    out["flipped"] = flips
    return out


class TestTransform:
    def test_applied_in_the_background_and_reproducible(self, reference):
        plain = list(BatchIterator(reference, batch_size=4, seed=2, rank=0, world_size=2))
        first = list(BatchIterator(reference, batch_size=4, seed=2, rank=0, world_size=2,
                                   transform=flip))  # fmt: skip
        again = list(BatchIterator(reference, batch_size=4, seed=2, rank=0, world_size=2,
                                   transform=flip))  # fmt: skip
        flipped = np.concatenate([b["flipped"] for b in first])
        assert 0 < flipped.sum() < len(flipped)
        for p, f, a in zip(plain, first, again, strict=True):
            assert keys(p) == keys(f)
            np.testing.assert_array_equal(f["flipped"], a["flipped"])
            np.testing.assert_array_equal(f["image"], a["image"])
            want = np.where(f["flipped"][:, None, None], p["image"][..., ::-1], p["image"])
            np.testing.assert_array_equal(f["image"], want)

    def test_ranks_and_batches_draw_their_own_numbers(self, reference):
        draws = []
        for rank in range(2):
            it = BatchIterator(reference, batch_size=4, seed=2, rank=rank, world_size=2,
                               transform=lambda b, rng: {**b, "draw": rng.random(1)})  # fmt: skip
            draws += [float(b["draw"][0]) for b in it]
        assert len(set(draws)) == len(draws)

    def test_a_resume_transforms_as_the_uninterrupted_run(self, reference):
        def make():
            return BatchIterator(reference, batch_size=3, seed=6, transform=flip)

        expected = list(make())
        it = make()
        epoch = iter(it)
        next(epoch)
        next(epoch)
        state = it.state_dict()
        it.close()
        resumed = make()
        resumed.load_state_dict(state)
        for got, want in zip(list(resumed), expected[2:], strict=True):
            np.testing.assert_array_equal(got["flipped"], want["flipped"])
            np.testing.assert_array_equal(got["image"], want["image"])

    def test_an_error_names_the_batch_and_its_records(self, reference):
        def broken(batch, rng):
            raise KeyError("no such augmentation")

        it = BatchIterator(reference, batch_size=4, seed=0, transform=broken)
        with pytest.raises(DaskmriError, match=r"transform failed on batch 0 of epoch 0") as err:
            list(it)
        first = keys(next(iter(BatchIterator(reference, batch_size=4, seed=0))))
        assert str(first) in str(err.value) and "KeyError" in str(err.value)
        assert isinstance(err.value.__cause__, KeyError)

    def test_an_error_is_named_even_when_the_transform_dropped_the_records(self, reference):
        def careless(batch, rng):
            batch.pop("patient_id")
            raise RuntimeError("boom")

        it = BatchIterator(reference, batch_size=4, seed=0, transform=careless)
        with pytest.raises(DaskmriError, match=r"records \(patient_id, instance\) \[\("):
            list(it)

    def test_padding_stays_whatever_the_transform_returns(self, reference):
        it = BatchIterator(reference, batch_size=3, seed=0, rank=1, world_size=3,
                           transform=lambda b, rng: {"image": b["image"]})  # fmt: skip
        batches = list(it)
        assert all(set(b) == {"image", "padding"} for b in batches)
        assert sum(int(b["padding"].sum()) for b in batches) == 1  # 16 records on 3 ranks

    def test_it_must_return_the_batch(self, reference):
        it = BatchIterator(reference, batch_size=4, seed=0, transform=lambda b, rng: None)
        with pytest.raises(DaskmriError, match="transform returned NoneType"):
            list(it)
        with pytest.raises(ValueError, match="transform must be callable"):
            BatchIterator(reference, transform="flip")


class TestSplit:
    def test_disjoint_by_patient_union_exact_and_deterministic(self, zarr_ds, reference):
        ds = zarr_ds
        with raise_if_dask_computes():
            train, val = daskmri.split(ds, (0.5, 0.5), seed=0)
        pt, pv = set(train.patient_id.values), set(val.patient_id.values)
        assert pt and pv and not pt & pv
        assert sorted(keys(train) + keys(val)) == sorted(keys(reference))
        again = daskmri.split(ds, (0.5, 0.5), seed=0)
        assert keys(again[0]) == keys(train) and keys(again[1]) == keys(val)
        np.testing.assert_array_equal(train.image.values, reference.image.values[
            [keys(reference).index(k) for k in keys(train)]])  # fmt: skip

    def test_counts_are_as_close_as_whole_patients_allow(self):
        import xarray as xr

        def dataset(sizes):
            ids = np.repeat([f"P{i}" for i in range(len(sizes))], sizes)
            return xr.Dataset(coords={"patient_id": ("record", ids)})

        parts = daskmri.split(dataset([30, 20, 20, 10, 10, 5, 5]), (0.6, 0.2, 0.2), seed=1)
        assert [p.sizes["record"] for p in parts] == [60, 20, 20]
        # Largest first alone would give 7 and 5; a swap of a 3 and a 2 evens it.
        parts = daskmri.split(dataset([3, 3, 2, 2, 2]), (0.5, 0.5))
        assert [p.sizes["record"] for p in parts] == [6, 6]
        equal = dataset([10] * 6)
        chosen = set()
        for seed in range(6):
            train, val = daskmri.split(equal, (0.5, 0.5), seed=seed)
            assert (train.sizes["record"], val.sizes["record"]) == (30, 30)
            chosen.add(tuple(sorted(set(train.patient_id.values.tolist()))))
        assert len(chosen) > 1  # the seed chooses among equally good splits

    def test_batches_of_a_part(self, reference):
        train, _ = daskmri.split(reference, (0.5, 0.5))
        batches = list(BatchIterator(train, batch_size=3, seed=0))
        assert sorted(k for b in batches for k in keys(b)) == sorted(keys(train))

    def test_bad_arguments(self, reference):
        with pytest.raises(ValueError, match="must sum to 1"):
            daskmri.split(reference, (0.8, 0.3))
        with pytest.raises(ValueError, match="positive numbers"):
            daskmri.split(reference, (1.2, -0.2))
        with pytest.raises(ValueError, match="sequence of numbers"):
            daskmri.split(reference, ("a", "b"))
        with pytest.raises(ValueError, match="split\\(by='site'\\) needs a variable"):
            daskmri.split(reference, (0.5, 0.5), by="site")
