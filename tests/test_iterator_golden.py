"""BatchIterator's batches, byte for byte, as they were before the iterator was split
into modules (issue 26): a checksum of every array and coordinate of every batch, for
each configuration below, recorded with the code of main at 1b9cfcb (GOLDEN).

A changed value here means that the same seed no longer gives the same batches (or a
resume, a rank, a transform, ``exclude=`` or a cluster serves other ones): a break of
every saved training run's reproducibility, never an update to make lightly. A
failure prints the checksums the code at hand gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import daskmri
from daskmri import BatchIterator


def digest(batch: dict) -> str:
    """The checksum of one batch: every array's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(batch):
        value = np.ascontiguousarray(batch[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def digests(batches) -> list[str]:
    return [digest(b) for b in batches]


def mixed_dataset(n: int = 23, chunk: int = 5) -> xr.Dataset:
    """A dask-backed dataset of other dtypes than daskmri's (int16 pixels, uint8 bits,
    float64 per record) and a short last chunk: nothing may assume float32 or bool."""
    rng = np.random.default_rng(12)
    pixels = rng.integers(-500, 3000, size=(n, 6, 7)).astype(np.int16)
    labels = rng.integers(0, 4, size=(n, 6, 7)).astype(np.uint8)
    slope = rng.random(n)
    return xr.Dataset(
        {
            "pixels": (("record", "y", "x"), da.from_array(pixels, chunks=(chunk, 6, 7))),
            "labels": (("record", "y", "x"), da.from_array(labels, chunks=(chunk, 6, 7))),
            "slope": ("record", da.from_array(slope, chunks=chunk)),
        },
        coords={
            "patient_id": ("record", np.array([f"P{k // 4:02d}" for k in range(n)])),
            "instance": ("record", np.arange(n, dtype=np.int64)),
        },
    )


MIXED = ("pixels", "labels", "slope")


def jitter(batch: dict, rng: np.random.Generator) -> dict:
    """A transform that draws from its generator: noise, a flip, a new array."""
    noise = rng.normal(size=batch["image"].shape).astype(np.float32)
    batch["image"] = batch["image"] + noise
    if rng.random() < 0.5:
        batch["icontour"] = batch["icontour"][:, ::-1].copy()
    batch["scale"] = rng.random(len(batch["image"]))
    return batch


def epochs(it: BatchIterator, n: int = 2) -> list[str]:
    out = []
    for _ in range(n):
        out.extend(digests(it))
    return out


def resumed(make: Callable[..., BatchIterator], stop_after: int, **again) -> list[str]:
    """Epoch 1 served ``stop_after`` batches, saved, and resumed by a new iterator
    (``again`` changes its arguments: another world size, batch size)."""
    it = make()
    list(it)
    epoch = iter(it)
    for _ in range(stop_after):
        next(epoch)
    state = it.state_dict()
    it.close()
    out = make(seed=999, **again)
    out.load_state_dict(state)
    return digests(out)


def local_cases(reference, zarr_ds) -> dict[str, Callable[[], list[str]]]:
    """Each configuration, as a function that returns its checksums."""

    def it(ds=reference, **kw):
        return BatchIterator(ds, **kw)

    def make(**kw):
        return it(**{"batch_size": 3, "seed": 11, "shuffle_chunks": 2, **kw})

    return {
        "memory-shuffle-seed1-b5": lambda: epochs(it(batch_size=5, seed=1)),
        "memory-noshuffle-b6": lambda: epochs(it(batch_size=6, shuffle=False)),
        "zarr-seed7-b4": lambda: epochs(it(zarr_ds, batch_size=4, seed=7), 3),
        "memory-seed3-b2-span1": lambda: epochs(it(batch_size=2, seed=3, shuffle_chunks=1)),
        **{
            f"rank{r}of3-seed5-b2": (
                lambda r=r: epochs(it(batch_size=2, seed=5, rank=r, world_size=3))
            )
            for r in range(3)
        },
        **{
            f"rank{r}of3-droplast-seed5-b3": (
                lambda r=r: epochs(
                    it(zarr_ds, batch_size=3, seed=5, rank=r, world_size=3, drop_last=True)
                )
            )
            for r in range(3)
        },
        "droplast-seed2-b5": lambda: epochs(it(batch_size=5, seed=2, drop_last=True)),
        "transform-seed6-b4": lambda: epochs(it(batch_size=4, seed=6, transform=jitter)),
        "transform-rank1of2-seed6-b3": lambda: epochs(
            it(zarr_ds, batch_size=3, seed=6, rank=1, world_size=2, transform=jitter)
        ),
        "resume-after-2": lambda: resumed(make, 2),
        "resume-zarr-after-1": lambda: resumed(lambda **kw: make(ds=zarr_ds, **kw), 1),
        "resume-transform-after-2": lambda: resumed(lambda **kw: make(transform=jitter, **kw), 2),
        "resume-b3-as-b4": lambda: resumed(make, 2, batch_size=4),
        **{
            f"resume-1of1-as-rank{r}of2": (lambda r=r: resumed(make, 1, rank=r, world_size=2))
            for r in range(2)
        },
        "mixed-dtypes-seed4-b4": lambda: epochs(
            it(mixed_dataset(), batch_size=4, seed=4, variables=MIXED)
        ),
        "mixed-dtypes-rank2of3-b3": lambda: epochs(
            it(mixed_dataset(), batch_size=3, seed=4, variables=MIXED, rank=2, world_size=3)
        ),
    }


#: Checksums of every batch, per configuration, from main at 1b9cfcb (before the split).
GOLDEN: dict[str, list[str]] = {
    "memory-shuffle-seed1-b5": [
        "a29e12881c7d50fa",
        "b33223267c2d99b9",
        "3670d39ebdc6573a",
        "ac7c84b90412dbe9",
        "ba56acc5c2d2e2b1",
        "ca9fa708b5252fd7",
        "4ab3dfed28136a8e",
        "1e5903e8589f5a86",
    ],
    "memory-noshuffle-b6": [
        "daf2924fd0f6fb3d",
        "db2bae01d3fa22bc",
        "5d74cbd090b75327",
        "daf2924fd0f6fb3d",
        "db2bae01d3fa22bc",
        "5d74cbd090b75327",
    ],
    "zarr-seed7-b4": [
        "26e10b457abdbc45",
        "107860281ae8874a",
        "28d8352ec61d83fb",
        "77fdf85762942598",
        "fbfb163e4705333d",
        "4f53bc1fcc93e5bd",
        "3cc1640b45eaaf81",
        "f8ed4c3f171c0184",
        "8d3d96af76f6f860",
        "38dae964bd9a8e66",
        "1d4c65b0b05b1419",
        "7ae8dc3e5bf2e263",
    ],
    "memory-seed3-b2-span1": [
        "7e47eed1cebb3346",
        "9be312e36eecbbc3",
        "bb23e1df3373bb6a",
        "2bb088f91cff2de1",
        "7706212d842e1750",
        "b0388f154ca20aef",
        "48cc1446e00515a2",
        "06e191a81e0218a1",
        "46b01f9d8736a55b",
        "306b39cb4718e44e",
        "a52523cd88799ad1",
        "4850babfa3e14356",
        "09a425439f832c2e",
        "33f58aeee516538e",
        "bb46f5bd0c273e93",
        "3ae2eb33651d702f",
    ],
    "rank0of3-seed5-b2": [
        "ac42f967a431fa46",
        "f9c78f14adaf9362",
        "78af51f4322e8f1f",
        "6cbb845a2df0eaa4",
        "12218447d4ce535f",
        "79bc70d5d9166aef",
    ],
    "rank1of3-seed5-b2": [
        "a78cbf55d6a2c730",
        "7e47eed1cebb3346",
        "eb3abed55b535c7c",
        "ec5db255b441490b",
        "51f86d5e507dcb93",
        "6abad4d47d64d462",
    ],
    "rank2of3-seed5-b2": [
        "b2e70e125cab08ef",
        "fb41495f295e8913",
        "8073b6f43ef13a7f",
        "b8c7e41e3fd7ae97",
        "164ed1563394e92d",
        "690356bd68a97d43",
    ],
    "rank0of3-droplast-seed5-b3": ["7345509da953c64c", "f7a6ea7ac4280f0c"],
    "rank1of3-droplast-seed5-b3": ["45a7040b7867fbaf", "521319e5cf3ceb06"],
    "rank2of3-droplast-seed5-b3": ["fb655c751ae826bf", "bca0408de06c5cd1"],
    "droplast-seed2-b5": [
        "1fd1dd4ba547fe11",
        "240821ecf170ef6e",
        "655184a331dc2b66",
        "b0b71e77a92102a4",
        "5594e9ff26d62f6d",
        "a9eba639f4f463ba",
    ],
    "transform-seed6-b4": [
        "124691f7cc418ff0",
        "0391637eb29d0541",
        "9937510bec55fc1a",
        "45ef0fd9794bb27c",
        "80f9d896fa8124eb",
        "bbfb9de4ce5d5f8d",
        "2874454000e77605",
        "f415f52b97f100e7",
    ],
    "transform-rank1of2-seed6-b3": [
        "2ada6e82e097f6c1",
        "5f5d64f4527efbd4",
        "26191ec5426993d9",
        "edb902c7c9375396",
        "4436735783e6d92b",
        "089fb25157bafc9d",
    ],
    "resume-after-2": [
        "7d1fa990686e156d",
        "e54d15376674b174",
        "2f87cf460b051a4e",
        "03ab21ed26ffa686",
    ],
    "resume-zarr-after-1": [
        "ca08e254ca1028ff",
        "7d1fa990686e156d",
        "e54d15376674b174",
        "2f87cf460b051a4e",
        "03ab21ed26ffa686",
    ],
    "resume-transform-after-2": [
        "e338933e34545afd",
        "01b17d038dd87e6c",
        "a1e3f4a745dbc84c",
        "dcfaf893567d585d",
    ],
    "resume-b3-as-b4": ["d0fd8dd3c15e5ef3", "9d03ffd4b6db7310", "1d05dcb345c3b464"],
    "resume-1of1-as-rank0of2": ["ca08e254ca1028ff", "7d1fa990686e156d", "ac7c84b90412dbe9"],
    "resume-1of1-as-rank1of2": ["d3d3426a56b8c53e", "d824b6e480916303", "e77e006d17980080"],
    "mixed-dtypes-seed4-b4": [
        "d60aedb9372a5125",
        "ea095271ad7cd057",
        "f40b795d08d87996",
        "ba5581d20c815ad2",
        "783c88e9fb1fde54",
        "b0685370580436a9",
        "90c2f93edc0effb4",
        "92f6e129c5f8c50b",
        "d9b030095a9f750b",
        "bfb3c138f49b5c4d",
        "5188faa0077a8fc1",
        "e2f163bd8ab1d1ee",
    ],
    "mixed-dtypes-rank2of3-b3": [
        "493227ed85bc2246",
        "70d4044251d3638e",
        "e008f56ede8d180f",
        "f321fff2cdb14c33",
        "4884f50cc6693fee",
        "ffc33a5270ec8171",
    ],
    "exclude-seed8-b4": [
        "2a39318fe81ecf0f",
        "0c6ae184ed53324a",
        "6266089a146cbd21",
        "680fa0f1bc974d41",
        "3d68d664eccc180f",
        "5f057f1b285e7454",
        "85f9cb73d2b51df4",
        "d8411e88f7048497",
    ],
    "cluster-persisted-seed4-b5": [
        "92d568565c789f4a",
        "5d74fc529f33db1c",
        "feb8ab27b2775c3f",
        "3982c15c5c8c442d",
        "5dd853fc38a9d439",
        "78174b93526d717c",
        "96829937fffece1c",
        "3f3a6400b11aaf5c",
    ],
    "cluster-resume-after-1": ["78174b93526d717c", "96829937fffece1c", "3f3a6400b11aaf5c"],
    "cluster-zarr-rank1of2-seed4-b5": [
        "1e083b277cee176c",
        "78e2d188cc340ae0",
        "abad67a605c17e68",
        "6ee8e7a10124cd91",
    ],
}


def check(name: str, got: list[str]) -> None:
    assert name in GOLDEN, f"no golden value for {name!r}: {got!r}"
    assert got == GOLDEN[name], f"{name}: {got!r}"


@pytest.fixture(scope="module")
def cases(reference, zarr_ds):
    return local_cases(reference, zarr_ds)


NAMES = [
    "memory-shuffle-seed1-b5",
    "memory-noshuffle-b6",
    "zarr-seed7-b4",
    "memory-seed3-b2-span1",
    *[f"rank{r}of3-seed5-b2" for r in range(3)],
    *[f"rank{r}of3-droplast-seed5-b3" for r in range(3)],
    "droplast-seed2-b5",
    "transform-seed6-b4",
    "transform-rank1of2-seed6-b3",
    "resume-after-2",
    "resume-zarr-after-1",
    "resume-transform-after-2",
    "resume-b3-as-b4",
    *[f"resume-1of1-as-rank{r}of2" for r in range(2)],
    "mixed-dtypes-seed4-b4",
    "mixed-dtypes-rank2of3-b3",
]


def test_every_case_is_checked(cases):
    assert sorted(cases) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_same_batches_as_before_the_split(cases, name):
    check(name, cases[name]())


def test_exclude_serves_the_same_batches(reference, tmp_path):
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text("patient_id,instance,verdict\nSYN0001,2,exclude\nSYN0002,5,exclude\n")
    it = BatchIterator(reference, batch_size=4, seed=8, exclude=verdicts)
    check("exclude-seed8-b4", epochs(it))


@pytest.fixture(scope="module")
def persisted(synth_root, local_cluster):
    """The synthetic dataset persisted on the session's LocalCluster, and its client."""
    from distributed import Client

    with Client(local_cluster, timeout="30s", set_as_default=False) as client:
        yield daskmri.load_dataset(synth_root, chunk_size=3, client=client), client


class TestCluster:
    """The dataset persisted on a LocalCluster, fetched as it is and compressed on the
    workers, and a store read through the cluster: the batches of the local case."""

    @pytest.mark.parametrize("compress", [False, True])
    def test_a_persisted_dataset(self, persisted, compress):
        ds, client = persisted
        it = BatchIterator(ds, batch_size=5, seed=4, compress=compress)
        assert it.client is client
        check("cluster-persisted-seed4-b5", epochs(it))

    def test_a_resume_on_the_cluster(self, persisted):
        ds, _ = persisted

        def make(**kw):
            return BatchIterator(ds, **{"batch_size": 5, "seed": 4, **kw})

        check("cluster-resume-after-1", resumed(make, 1))

    def test_a_store_through_the_cluster(self, persisted, zarr_ds):
        _, client = persisted
        it = BatchIterator(zarr_ds, batch_size=5, seed=4, client=client, rank=1, world_size=2)
        check("cluster-zarr-rank1of2-seed4-b5", epochs(it))

    def test_the_local_case_is_the_same(self, reference):
        check("cluster-persisted-seed4-b5", epochs(BatchIterator(reference, batch_size=5, seed=4)))
