"""Shared fixtures: synthetic datasets written once per session, the real sample
(skipped when absent), and a LocalCluster."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import daskmri
from daskmri import synth

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook"

#: The fuzz budget: builds over mutated real files in test_reliability.py, and 50
#: hypothesis examples per case for the contour parser. Small in CI; set
#: DASKMRI_FUZZ_CASES=200 for a longer run.
FUZZ_CASES = int(os.environ.get("DASKMRI_FUZZ_CASES", "3"))

# Non-square, so that any x/y or row/column swap shows up.
SHAPE = (48, 64)
PATIENTS = 2
SLICES = 12


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not (REAL_DATA / "link.csv").is_file():
        pytest.skip(
            f"the real Sunnybrook sample is not at {REAL_DATA} "
            "(it lives beside the checkout in ../shared/data/sunnybrook)"
        )
    return REAL_DATA


@pytest.fixture(scope="session")
def sunnybrook_cines(real_root):
    """Every patient of the real sample as a 4D cine with its labels (tests/volumes.py;
    about 1.5 s: 700 DICOMs and 56 contours)."""
    from . import volumes

    return volumes.read_cines(real_root)


@pytest.fixture(scope="session")
def sunnybrook_volumes(sunnybrook_cines, tmp_path_factory) -> dict[str, Path]:
    """The real sample converted into each volume layout, read-only: ``{"acdc": root,
    "mnms": root, "msd": root}`` (about 5 s, gzip of 3 x 20 frames of 256 x 256)."""
    from . import volumes

    base = tmp_path_factory.mktemp("sunnybrook-volumes")
    return {
        layout: volumes.write_layout(sunnybrook_cines, base / layout, layout)
        for layout in volumes.WRITERS
    }


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A read-only synthetic dataset shared by the session; copy it before damaging it."""
    root = tmp_path_factory.mktemp("synth") / "data"
    return synth.make_dataset(root, patients=PATIENTS, slices=SLICES, shape=SHAPE, seed=7)


@pytest.fixture(scope="session")
def reference(synth_root):
    """The synthetic dataset in chunks of 3, in memory (numpy): the truth that batches
    are compared with."""
    return daskmri.load_dataset(synth_root, chunk_size=3, scheduler="sync").compute()


@pytest.fixture(scope="session")
def zarr_ds(synth_root, tmp_path_factory):
    """The synthetic dataset in chunks of 3, built into a store and opened lazily."""
    store = tmp_path_factory.mktemp("batches") / "ds.zarr"
    daskmri.build(synth_root, store, chunk_size=3, scheduler="sync")
    return daskmri.open_dataset(store)


@pytest.fixture
def damaged_root(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may break."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    return root


@pytest.fixture(scope="session")
def local_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


@pytest.fixture
def client(local_cluster):
    from distributed import Client

    with Client(local_cluster, timeout="30s") as c:
        yield c


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (moto, its own process on 127.0.0.1) with a key and a bucket;
    see tests/s3.py."""
    for module in ("moto", "s3fs", "boto3"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[test]'")
    from .s3 import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_cluster(s3, tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes that get the S3 endpoint
    and key only through their environment (as a user's cloud workers do); yields
    the address."""
    from .test_remote_cluster import REPO, cluster

    env = os.environ | s3.env() | {"PYTHONPATH": str(REPO)}
    with cluster(tmp_path_factory.mktemp("s3-cluster"), {"w0": {}, "w1": {}}, env=env) as found:
        yield found[0]


@pytest.fixture(autouse=True, scope="module")
def no_default_client_outlives_its_module():
    """A module's own failure stays its own: a distributed client still the default
    when the module's fixtures are gone (a test that failed before closing it) is
    closed, and dask's scheduler setting with it, so that later modules do not all
    fail with "no Client active". The test that left it has already failed."""
    yield
    import sys

    if "distributed" not in sys.modules:
        return
    import dask
    import distributed

    try:
        left = distributed.default_client()
    except ValueError:
        left = None
    if left is not None:
        left.close()
    if dask.config.get("scheduler", None) == "dask.distributed":
        dask.config.set(scheduler=None)
