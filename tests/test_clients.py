"""Every form of ``client=`` (an address string, a ``Client`` passed, the default client
made earlier and not passed) with every call that takes one, alone and mixed in one
script, on one cluster of ``dask scheduler`` and ``dask worker`` processes: each gives
the eager in-process dataset, and every client daskmri makes from an address is closed
by what made it while a client the user made is never closed."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

import daskmri
from daskmri.testing import assert_records_equal

from .test_remote_cluster import REPO, WAIT, cluster

FORMS = ("address", "client", "default")
CHUNK = 5
PIXELS = ("image", "icontour", "ocontour")


@pytest.fixture(scope="module")
def address(tmp_path_factory) -> Iterator[str]:
    """One ``dask scheduler`` and two ``dask worker`` processes for the module."""
    env = os.environ | {"PYTHONPATH": str(REPO)}  # the workers import this checkout
    with cluster(tmp_path_factory.mktemp("clients"), {"w0": {}, "w1": {}}, env=env) as found:
        yield found[0]


@pytest.fixture(scope="module")
def observer(address):
    """A client that daskmri never sees: it asks the scheduler which clients it has."""
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def eager(synth_root):
    """The reference: the same dataset parsed in this process, in numpy."""
    return daskmri.load_dataset(synth_root, chunk_size=CHUNK, scheduler="sync").compute()


def connected(observer) -> set[str]:
    """The ids of the clients connected to the scheduler, but the observer's."""
    ids = observer.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))
    return set(ids) - {observer.id, "fire-and-forget"}


def settles(observer, expected: set[str]) -> None:
    """Wait (bounded) until exactly ``expected`` clients are connected: a closed
    client's goodbye reaches the scheduler a moment after ``close()`` returns."""
    deadline = time.monotonic() + WAIT
    while (now := connected(observer)) != expected:
        assert time.monotonic() < deadline, f"clients left connected: {now - expected}"
        time.sleep(0.05)


@contextlib.contextmanager
def given(form: str, address: str):
    """``(argument, client)``: what to pass as ``client=`` for ``form``, and the
    ``Client`` the user made for it (None for an address). On the way out, that
    client must still be running: daskmri never closes a client it did not make."""
    if form == "address":
        yield address, None
        return
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=form == "default") as user:
        yield (user if form == "client" else None), user
        assert user.status == "running", "daskmri closed a client it did not make"


def assert_epoch_equal(batches: Iterable[dict], eager) -> None:
    """One epoch serves every record of ``eager`` once, each with its exact pixels."""
    keys = zip(eager.patient_id.values.tolist(), eager.instance.values.tolist(), strict=True)
    row = {key: k for k, key in enumerate(keys)}
    served = []
    for batch in batches:
        keys = zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True)
        for j, key in enumerate(keys):
            served.append(row[key])
            for name in PIXELS:
                np.testing.assert_array_equal(
                    np.asarray(batch[name][j]), eager[name].values[row[key]]
                )
    assert sorted(served) == list(range(len(row)))


def iterate(ds, client, eager, **options) -> None:
    """An epoch of a BatchIterator with ``client=client``, checked; a client it made
    from an address is closed when it is."""
    with daskmri.BatchIterator(ds, batch_size=4, seed=0, client=client, **options) as it:
        assert_epoch_equal(it, eager)
        made = it.client if isinstance(client, str) and it.client is not _owner(ds) else None
    assert made is None or made.status == "closed"


def iterate_torch(ds, client, eager) -> None:
    """An epoch of ``daskmri.torch.TorchBatches`` through a DataLoader, checked."""
    torch = pytest.importorskip("torch", reason="daskmri.torch needs the torch extra")
    from daskmri.torch import TorchBatches

    with daskmri.BatchIterator(ds, batch_size=4, seed=1, client=client) as it:
        batches = list(torch.utils.data.DataLoader(TorchBatches(it), batch_size=None))
        assert all(isinstance(b["image"], torch.Tensor) for b in batches)
        assert_epoch_equal(batches, eager)


def _owner(ds):
    from distributed import futures_of

    futures = futures_of(ds)
    return futures[0].client if futures else None


@pytest.mark.parametrize("form", FORMS)
def test_every_call_with_one_client_form(form, address, observer, synth_root, eager, tmp_path):
    """load_dataset, BatchIterator (the regression: the same address twice failed with
    "Cannot gather Futures created by another client"), TorchBatches, build and
    open_dataset, all with one form of ``client=``."""
    before = connected(observer)
    with given(form, address) as (arg, _):
        ds = daskmri.load_dataset(synth_root, chunk_size=CHUNK, client=arg)
        assert _owner(ds) is not None, "the dataset is not persisted on the cluster"
        assert_records_equal(ds, eager)
        iterate(ds, arg, eager)
        iterate_torch(ds, arg, eager)
        store = tmp_path / "ds.zarr"
        assert daskmri.build(synth_root, store, chunk_size=CHUNK, client=arg).records == 16
        opened = daskmri.open_dataset(store)
        assert_records_equal(opened, eager)
        iterate(opened, arg, eager)
        iterate_torch(opened, arg, eager)
        if form != "client":  # the default client computes it, as a user's .compute() would
            np.testing.assert_array_equal(opened.image.values, eager.image.values)
            np.testing.assert_array_equal(ds.image.values, eager.image.values)
        made = _owner(ds)
        ds.close()  # closes the client load_dataset made from the address, and no other
        assert made.status == ("closed" if form == "address" else "running")
        del ds
    settles(observer, before)


def test_client_forms_mixed_in_one_script(address, observer, synth_root, eager, tmp_path):
    """A default client made first; load by address, iterate with another Client
    object, build with the default, iterate the store by address; load with a Client
    object and iterate by address. The clients daskmri made are gone once the
    datasets, and an iterator left mid-epoch, are garbage."""
    from distributed import Client

    before = connected(observer)
    with (
        given("default", address) as (_, default),
        Client(address, timeout="30s", set_as_default=False) as other,
    ):
        ds = daskmri.load_dataset(synth_root, chunk_size=CHUNK, client=address)
        made = _owner(ds)
        assert made not in (default, other)
        iterate(ds, other, eager)
        iterate(ds, other, eager, compress=True)  # a task on a worker packs what it gathers
        iterate(ds, address, eager)  # the dataset's own client, reused
        store = tmp_path / "ds.zarr"
        daskmri.build(synth_root, store, chunk_size=CHUNK)  # on the default client
        iterate_torch(daskmri.open_dataset(store), address, eager)
        # Left mid-epoch, never closed: its client goes with it once it is garbage.
        dropped = daskmri.BatchIterator(daskmri.open_dataset(store), batch_size=4, client=address)
        assert len(next(iter(dropped))["image"]) == 4
        del dropped
        by_object = daskmri.load_dataset(synth_root, chunk_size=CHUNK, client=other)
        assert _owner(by_object) is other
        iterate(by_object, address, eager)
        iterate_torch(by_object.isel(record=slice(None)), default, eager)
        made_id = made.id
        assert made_id in connected(observer)
        split = daskmri.split(ds, (0.5, 0.5), by="patient_id", seed=0)[0]
        del ds, made, by_object
        gc.collect()
        assert made_id in connected(observer), "closed while a split still holds its pixels"
        assert_records_equal(
            split, eager.isel(record=np.isin(eager.patient_id.values, split.patient_id.values))
        )
        del split
        gc.collect()
        settles(observer, before | {default.id, other.id})
    settles(observer, before)


def test_a_persisted_selection_outlives_its_dataset(address, synth_root, eager):
    """The client made from an address stays open while a persisted selection of the
    dataset holds futures of its own (closing would lose them)."""
    ds = daskmri.load_dataset(synth_root, chunk_size=CHUNK, client=address)
    made = _owner(ds)
    sub = ds.isel(record=slice(0, 5)).persist()
    del ds
    gc.collect()
    time.sleep(0.5)  # the close, had it been decided, runs in a thread of its own
    assert made.status == "running"
    assert_records_equal(sub.compute(), eager.isel(record=slice(0, 5)))
    made.close()


def test_a_client_of_another_scheduler_fails_in_one_line(
    address, observer, synth_root, eager, tmp_path
):
    """A dataset persisted on one scheduler, iterated with the address or a client of
    another: one line naming both schedulers and the fix, and the client made for it
    is closed. A dataset whose own client was closed says so in one line too."""
    from distributed import Client

    before = connected(observer)
    with (
        cluster(tmp_path, {}) as (elsewhere, _),
        Client(address, timeout="30s", set_as_default=False) as user,
        Client(elsewhere, timeout="30s", set_as_default=False) as stranger,
    ):
        ds = daskmri.load_dataset(synth_root, chunk_size=CHUNK, client=user)
        for wrong in (elsewhere, stranger):
            with pytest.raises(daskmri.DaskmriError) as info:
                daskmri.BatchIterator(ds, batch_size=4, seed=0, client=wrong)
            message = str(info.value)
            assert "\n" not in message
            assert f"held by the scheduler at {address}" in message
            assert f"client= is for the scheduler at {elsewhere}" in message
            assert "pass client=None" in message
        assert stranger.status == "running"
        # The client made for `elsewhere` was closed: only the stranger is left there.
        assert set(
            stranger.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))
        ) <= {
            stranger.id,
            "fire-and-forget",
        }
        user.close()  # the user lets the cluster drop the dataset's pixels
        with pytest.raises(daskmri.DaskmriError, match="load the dataset again") as info:
            daskmri.BatchIterator(ds, batch_size=4, seed=0)
        assert "\n" not in str(info.value)
    settles(observer, before)


def _count_scheduler_gathers(dask_scheduler) -> int:
    """Count the scheduler's ``gather`` calls from now (a wrapper around its own
    handler, installed once; observes the real scheduler, mocks nothing)."""
    if not hasattr(dask_scheduler, "daskmri_gathers"):
        original = dask_scheduler.handlers["gather"]

        async def counted(*args, **kwargs):
            dask_scheduler.daskmri_gathers += 1
            return await original(*args, **kwargs)

        dask_scheduler.handlers["gather"] = counted
    dask_scheduler.daskmri_gathers = 0
    return 0


def test_persisted_chunks_come_straight_from_workers_on_this_host(
    address, observer, synth_root, eager
):
    """Workers on this host: a persisted epoch gathers each chunk from its worker, not
    by way of the scheduler (whose gather handler is never called); a client set with
    direct_to_workers=False keeps its route. The same records either way."""
    from distributed import Client

    for direct, relayed in ((None, False), (False, True)):
        with Client(address, timeout="30s", direct_to_workers=direct) as user:
            ds = daskmri.load_dataset(synth_root, chunk_size=CHUNK, client=user)
            observer.run_on_scheduler(_count_scheduler_gathers)
            iterate(ds, user, eager)
            gathers = observer.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.daskmri_gathers
            )
            assert (gathers > 0) == relayed, (direct, gathers)
            del ds


@pytest.mark.parametrize(
    ("setting", "worker", "expected"),
    [
        (None, "tcp://127.0.0.1:4000", True),
        (None, "tcp://192.0.2.7:4000", None),  # another host (TEST-NET-1): the scheduler
        (False, "tcp://127.0.0.1:4000", None),  # the user's choice stands
        (True, "tcp://192.0.2.7:4000", None),
    ],
)
def test_the_direct_route_is_chosen_only_for_workers_on_this_host(setting, worker, expected):
    from daskmri.batches.fetching import direct_gather

    class Reported:
        direct_to_workers = setting

        def scheduler_info(self, n_workers=-1):
            return {"workers": {worker: {}}}

    assert direct_gather(Reported()) is expected
