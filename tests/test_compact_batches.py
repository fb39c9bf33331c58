"""Compact batches (issue 26): BatchIterator(compact=True) hands out what a compact
dataset holds, compact=False widens it in the batch thread, and TorchBatches(device=)
widens on the device; every way gives today's batches, bit for bit, for the same seed.

The loaders make compact datasets; "today's form" is such a dataset less its compact
variables (its ``image`` and masks only, as a dataset made by other means would be),
served today's way, and numpy's :func:`daskmri.compact.widen` is the reference. More
compact forms (other rescales, dtypes, label widths) come from tests/compact_data.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import daskmri
from daskmri import BatchIterator
from daskmri.batches.serving import COMPACT
from daskmri.compact import unpack_labels, widen

from .compact_data import compact_form, no_rescale, stored, synth_rescale, with_extra_kinds
from .test_iterator_golden import GOLDEN, digest, local_cases


def todays_form(ds):
    """``ds`` without its compact variables: only ``image`` and the masks, served as a
    dataset that never had the compact form."""
    return ds.drop_vars([name for name in COMPACT if name in ds.variables])


@pytest.fixture(scope="module")
def loaded(synth_root):
    """The synthetic dataset as load_dataset makes it (compact), in chunks of 3."""
    return daskmri.load_dataset(synth_root, chunk_size=3, scheduler="sync")


@pytest.fixture(scope="module")
def today(loaded):
    """The synthetic dataset in today's form, lazy, in chunks of 3."""
    return todays_form(loaded)


@pytest.fixture(scope="module")
def compact(today):
    """The same records in the compact form: int16 pixels, patient 2 with slope 0.5 and
    intercept -1024 (the float64 route), uint8 labels."""
    return compact_form(today, synth_rescale)


@pytest.fixture(scope="module")
def compact_store(compact, tmp_path_factory):
    """The compact form read lazily from a Zarr store."""
    return stored(compact, tmp_path_factory.mktemp("compact") / "ds.zarr")


@pytest.fixture(scope="module")
def real(real_root):
    """The real Sunnybrook sample, today's form and compact (int16, no rescale), in
    chunks of 8."""
    ds = todays_form(daskmri.load_dataset(real_root, chunk_size=8, scheduler="sync"))
    return ds, compact_form(ds, no_rescale)


def widened(batch: dict, kinds: tuple[str, ...]) -> dict:
    """Today's batch from a compact one, with numpy (the reference)."""
    out = {"image": widen(batch["pixels"], batch["slope"], batch["intercept"])}
    out.update(unpack_labels(batch["labels"], kinds))
    out.update((name, value) for name, value in batch.items() if name not in COMPACT)
    return out


def served(it: BatchIterator, epochs: int = 2) -> list[dict]:
    """Every batch of ``epochs`` epochs, widened with numpy when compact."""
    out = []
    for _ in range(epochs):
        out.extend(widened(b, it.kinds) if it.compact else b for b in it)
    return out


def assert_same(got: list[dict], expected: list[dict]) -> None:
    """Batch for batch, the same names in the same order and the same bytes."""
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)
        assert digest(g) == digest(e)


CONFIGS = {
    "shuffle-b5": {"batch_size": 5, "seed": 1},
    "noshuffle-b6": {"batch_size": 6, "shuffle": False},
    "span1-b2": {"batch_size": 2, "seed": 3, "shuffle_chunks": 1},
    "droplast-b5": {"batch_size": 5, "seed": 2, "drop_last": True},
    **{
        f"rank{r}of3-b2": {"batch_size": 2, "seed": 5, "rank": r, "world_size": 3} for r in range(3)
    },
    **{
        f"rank{r}of2-droplast-b3": {
            "batch_size": 3,
            "seed": 5,
            "rank": r,
            "world_size": 2,
            "drop_last": True,
        }
        for r in range(2)
    },
}


class TestIterator:
    @pytest.mark.parametrize("name", list(CONFIGS))
    def test_compact_or_not_the_batches_are_todays(self, today, compact, name):
        expected = served(BatchIterator(today, **CONFIGS[name]))
        default = BatchIterator(compact, **CONFIGS[name])
        assert default.serving.fetched == COMPACT  # fetched compact, widened here
        assert_same(served(default), expected)
        assert_same(served(BatchIterator(compact, compact=True, **CONFIGS[name])), expected)

    @pytest.mark.parametrize("name", ["memory-shuffle-seed1-b5", "resume-b3-as-b4"])
    def test_the_golden_batches_from_a_compact_dataset(self, compact, compact_store, name):
        """compact=False over compact datasets: the checksums recorded before the split."""
        assert local_cases(compact, compact_store)[name]() == GOLDEN[name]

    @pytest.mark.parametrize("compact_arg", [False, True])
    def test_from_a_store(self, today, compact_store, compact_arg):
        kw = {"batch_size": 4, "seed": 7, "rank": 1, "world_size": 2}
        it = BatchIterator(compact_store, compact=compact_arg, **kw)
        assert_same(served(it, 3), served(BatchIterator(today, **kw), 3))

    @pytest.mark.parametrize("compact_arg", [False, True])
    def test_the_loaders_datasets_are_fetched_compact(
        self, synth_root, loaded, today, tmp_path, compact_arg
    ):
        """load_dataset and open_dataset of a built store hold the compact arrays: the
        iterator fetches them, and serves today's batches."""
        daskmri.build(synth_root, tmp_path / "ds.zarr", chunk_size=3, scheduler="sync")
        kw = {"batch_size": 4, "seed": 11, "compact": compact_arg}
        expected = served(BatchIterator(today, batch_size=4, seed=11))
        for ds in (loaded, daskmri.open_dataset(tmp_path / "ds.zarr")):
            it = BatchIterator(ds, **kw)
            assert it.serving.fetched == COMPACT
            assert_same(served(it), expected)

    def test_compact_batches_hold_the_compact_arrays(self, compact):
        it = BatchIterator(compact, batch_size=4, seed=0, compact=True)
        batch = next(iter(it))
        assert list(batch) == [*COMPACT, "patient_id", "instance", "padding"]
        assert it.kinds == ("icontour", "ocontour") and it.compact
        assert batch["pixels"].dtype == np.int16 and batch["labels"].dtype == np.uint8
        assert batch["slope"].dtype == np.float64 and batch["slope"].shape == (4,)
        assert it.variables == COMPACT
        it.close()

    def test_compact_needs_the_compact_variables(self, today):
        with pytest.raises(ValueError, match=r"daskmri >= 0.3.*or use compact=False"):
            BatchIterator(today, compact=True)

    def test_today_s_dataset_is_served_as_today(self, today):
        it = BatchIterator(today, batch_size=4, seed=0)
        assert it.serving.fetched == ("image", "icontour", "ocontour") and not it.compact

    def test_compact_fetches_fewer_bytes(self, today, compact):
        counts = {}
        for name, ds, flag in [("today", today, False), ("widened", compact, False)]:
            it = BatchIterator(ds, batch_size=4, seed=0, compact=flag)
            list(it)
            counts[name] = it.bytes_fetched
        it = BatchIterator(compact, batch_size=4, seed=0, compact=True)
        list(it)
        n, y, x = today["image"].shape
        assert counts["today"] == n * y * x * (4 + 2)  # float32 and two bool masks
        assert counts["widened"] == it.bytes_fetched == n * (y * x * (2 + 1) + 16)

    def test_variables_asked_for_are_widened_alone(self, today, compact):
        it = BatchIterator(compact, batch_size=4, seed=0, variables=("image", "has_icontour"))
        assert it.serving.fetched == ("pixels", "slope", "intercept", "has_icontour")
        expected = BatchIterator(today, batch_size=4, seed=0, variables=("image", "has_icontour"))
        assert_same(served(it, 1), served(expected, 1))

    def test_a_transform_gets_the_compact_batch(self, compact):
        seen = []

        def look(batch, rng):
            seen.append(sorted(batch))
            batch["pixels"] = batch["pixels"] + 1
            return batch

        it = BatchIterator(compact, batch_size=4, seed=0, compact=True, transform=look)
        plain = BatchIterator(compact, batch_size=4, seed=0, compact=True)
        for got, before in zip(it, plain, strict=True):
            np.testing.assert_array_equal(got["pixels"], before["pixels"] + 1)
        assert seen[0] == sorted([*COMPACT, "patient_id", "instance", "padding"])

    @pytest.mark.parametrize("saved_compact", [False, True])
    def test_a_state_resumes_under_the_other_setting(self, today, compact, saved_compact):
        kw = {"batch_size": 3, "seed": 11, "shuffle_chunks": 2}
        whole = BatchIterator(today, **kw)
        list(whole)
        expected = list(whole)[2:]  # epoch 1 after two batches
        it = BatchIterator(compact, compact=saved_compact, **kw)
        list(it)
        epoch = iter(it)
        next(epoch), next(epoch)
        state = it.state_dict()
        it.close()
        again = BatchIterator(compact, compact=not saved_compact, **{**kw, "seed": 999})
        again.load_state_dict(state)
        assert_same(served(again, 1), expected)

    @pytest.mark.parametrize("compact_arg", [False, True])
    def test_exclude(self, today, compact, tmp_path, compact_arg):
        verdicts = tmp_path / "verdicts.csv"
        verdicts.write_text("patient_id,instance,verdict\nSYN0001,2,exclude\nSYN0002,5,exclude\n")
        it = BatchIterator(compact, batch_size=4, seed=8, exclude=verdicts, compact=compact_arg)
        reference = BatchIterator(today, batch_size=4, seed=8, exclude=verdicts)
        assert_same(served(it), served(reference))
        assert it.dropped.equals(reference.dropped) and len(it.dropped) == 1

    def test_the_real_sample(self, real):
        ds, compact_ds = real
        expected = served(BatchIterator(ds, batch_size=5, seed=3), 1)
        assert_same(served(BatchIterator(compact_ds, batch_size=5, seed=3), 1), expected)
        compact_it = BatchIterator(compact_ds, batch_size=5, seed=3, compact=True)
        assert_same(served(compact_it, 1), expected)


@pytest.fixture(scope="module")
def persisted(today, local_cluster):
    """The compact form persisted on the session's LocalCluster (what it holds; the
    image and masks derived over the futures), and its client."""
    from distributed import Client

    with Client(local_cluster, timeout="30s", set_as_default=False) as client:
        yield compact_form(today, synth_rescale, client=client), client


class TestCluster:
    @pytest.mark.parametrize(
        ("compact_arg", "compress"), [(False, False), (True, True), (False, True)]
    )
    def test_a_persisted_compact_dataset(self, today, persisted, compact_arg, compress):
        ds, client = persisted
        kw = {"batch_size": 5, "seed": 4}
        it = BatchIterator(ds, compact=compact_arg, compress=compress, **kw)
        assert it.client is client and it.serving.fetched == COMPACT
        assert_same(served(it), served(BatchIterator(today, **kw)))

    def test_ranks_on_the_cluster(self, today, persisted):
        ds, _ = persisted
        for rank in range(2):
            kw = {"batch_size": 3, "seed": 6, "rank": rank, "world_size": 2}
            got = served(BatchIterator(ds, compact=True, **kw))
            assert_same(got, served(BatchIterator(today, **kw)))


torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from daskmri.torch import TorchBatches, on_device, plain_widening, widen_on_device  # noqa: E402


def assert_same_tensors(got: list[dict], expected: list[dict]) -> None:
    """The same names in the same order, dtypes, devices and bits."""
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)
        for name, value in e.items():
            if isinstance(value, np.ndarray):
                assert g[name].tolist() == value.tolist()
                continue
            assert g[name].dtype == value.dtype and g[name].device == value.device, name
            assert torch.equal(g[name].cpu(), value.cpu()), name
            if value.dtype == torch.float32:  # -0.0 and +0.0 too
                assert torch.equal(g[name].cpu().view(torch.int32), value.cpu().view(torch.int32))


class TestTorch:
    @pytest.mark.parametrize("name", ["shuffle-b5", "rank0of3-b2", "rank2of3-b2"])
    def test_on_the_cpu_device_the_batches_are_todays(self, today, compact, name):
        expected = list(TorchBatches(BatchIterator(today, **CONFIGS[name])))
        for ds, flag in [(compact, True), (compact, False), (today, False)]:
            batches = TorchBatches(BatchIterator(ds, compact=flag, **CONFIGS[name]), device="cpu")
            assert len(batches) == len(expected)
            assert_same_tensors(list(batches), expected)

    def test_the_real_sample_through_a_dataloader(self, real):
        ds, compact_ds = real
        expected = list(TorchBatches(BatchIterator(ds, batch_size=6, seed=2)))
        on_cpu = TorchBatches(
            BatchIterator(compact_ds, batch_size=6, seed=2, compact=True), device="cpu"
        )
        loader = torch.utils.data.DataLoader(on_cpu, batch_size=None)
        assert len(loader) == len(expected)
        assert_same_tensors(list(loader), expected)

    @pytest.mark.parametrize("dtype", [np.int16, np.uint16])
    def test_uint16_labels_and_pixels(self, real, dtype):
        """Ten kinds: uint16 labels, whose top bits torch cannot shift unsigned."""
        ds, _ = real
        wide = with_extra_kinds(ds.compute(), 8)
        compact_ds = compact_form(wide, no_rescale, dtype=dtype)
        assert compact_ds["labels"].dtype == np.uint16 and compact_ds["pixels"].dtype == dtype
        kw = {"batch_size": 8, "seed": 1}
        expected = list(TorchBatches(BatchIterator(wide, **kw)))
        got = TorchBatches(BatchIterator(compact_ds, compact=True, **kw), device="cpu")
        assert_same_tensors(list(got), expected)

    def test_ddp_ranks_by_argument(self, persisted, today):
        ds, _ = persisted
        for rank in range(2):
            kw = {"batch_size": 4, "seed": 9, "rank": rank, "world_size": 2}
            expected = list(TorchBatches(BatchIterator(today, **kw)))
            got = TorchBatches(BatchIterator(ds, compact=True, **kw), device="cpu")
            assert len(got) == len(expected)
            assert_same_tensors(list(torch.utils.data.DataLoader(got, batch_size=None)), expected)

    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
    def test_every_bit_of_every_label_width(self, dtype):
        bits = np.dtype(dtype).itemsize * 8
        kinds = tuple(f"k{k}" for k in range(bits))
        rng = np.random.default_rng(bits)
        labels = rng.integers(0, np.iinfo(dtype).max, size=(3, 4, 5), dtype=dtype, endpoint=True)
        labels[0, 0, 0] = np.iinfo(dtype).max  # the top bit: the sign of the signed view
        batch = {"pixels": np.zeros((3, 4, 5), np.int16), "slope": np.ones(3)}
        batch |= {"intercept": np.zeros(3), "labels": labels}
        out = next(on_device([batch], "cpu", kinds=kinds))
        for kind, mask in unpack_labels(labels, kinds).items():
            assert out[kind].dtype == torch.bool
            np.testing.assert_array_equal(out[kind].numpy(), mask)

    @pytest.mark.parametrize(
        ("dtype", "rescaled", "plain"),
        [
            (np.int16, False, True),
            (np.uint16, False, True),
            (np.int16, True, False),
            (np.int32, False, False),
        ],
    )
    def test_widening_is_numpy_s_bit_for_bit(self, dtype, rescaled, plain):
        """Float32 arithmetic, or float64 rounded twice, would differ on such values."""
        rng = np.random.default_rng(0)
        info = np.iinfo(dtype)
        pixels = rng.integers(info.min, info.max, size=(64, 16, 16), dtype=dtype, endpoint=True)
        slope, intercept = np.ones(64), np.zeros(64)
        if rescaled:
            slope, intercept = rng.random(64) * 3, rng.normal(size=64) * 1000
        batch = {"pixels": pixels, "slope": slope, "intercept": intercept}
        assert plain_widening(batch) is plain
        tensors = {name: torch.from_numpy(value) for name, value in batch.items()}
        image = widen_on_device(tensors, (), plain=plain)["image"]
        expected = widen(pixels, slope, intercept)
        assert image.dtype == torch.float32
        np.testing.assert_array_equal(image.numpy().view(np.uint32), expected.view(np.uint32))

    def test_a_float32_fallback_keeps_its_bits(self):
        pixels = np.array([[[-0.0, np.nan, 1.5]]], np.float32)
        batch = {"pixels": pixels, "slope": np.ones(1), "intercept": np.zeros(1)}
        assert plain_widening(batch)
        image = next(on_device([batch], "cpu", kinds=()))["image"]
        np.testing.assert_array_equal(image.numpy().view(np.uint32), pixels.view(np.uint32))

    @pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the CUDA test runs")
    def test_cuda_without_cuda_names_the_fix(self, compact):
        with pytest.raises(daskmri.DaskmriError, match="device='cpu'"):
            TorchBatches(BatchIterator(compact, compact=True), device="cuda")

    @pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA here: the side-stream copy is not run"
    )
    def test_on_cuda_the_batches_are_todays(self, today, compact):
        kw = {"batch_size": 5, "seed": 1}
        expected = list(TorchBatches(BatchIterator(today, **kw), device="cuda"))
        assert expected[0]["image"].is_cuda
        got = []
        for batch in TorchBatches(BatchIterator(compact, compact=True, **kw), device="cuda"):
            # A step on the consumer's stream while the next batch is copied.
            torch.cuda._sleep(1_000_000)
            got.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        torch.cuda.synchronize()
        assert_same_tensors(got, expected)
        on_host = [{k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()} for b in got]
        assert_same_tensors(on_host, list(TorchBatches(BatchIterator(today, **kw))))
