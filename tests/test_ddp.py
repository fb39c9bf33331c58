"""A real two-process torch.distributed run (gloo, CPU, 127.0.0.1): DDP trains a tiny
model on batches from a Zarr store that a Dask cluster built. Every rank takes its
rank and world size from the process group, serves as many batches as the other,
and together they see every record once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import daskmri

from .test_batches import keys

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

#: The training script each rank runs. It has no `if __name__ == "__main__":` guard,
#: on purpose: daskmri must never run a user's script a second time.
SCRIPT = """
import datetime, json, os, sys
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import daskmri
from daskmri.torch import TorchBatches

store, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Conv2d(1, 1, 3, padding=1))
optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
# No seed: rank 0's random seed is sent to every rank, so they plan the same epochs.
it = daskmri.BatchIterator(daskmri.open_dataset(store), batch_size=3)
loader = torch.utils.data.DataLoader(TorchBatches(it), batch_size=None)
served = []
for batch in loader:
    logits = model(batch["image"][:, None] / 1000.0)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch["icontour"][:, None].float(), reduction="none"
    )
    weight = (~batch["padding"]).float()[:, None, None, None]  # repeats do not count
    ((loss * weight).sum() / weight.sum().clamp(min=1)).backward()
    optimiser.step()
    optimiser.zero_grad()
    served.append({
        "patient_id": batch["patient_id"].tolist(),
        "instance": batch["instance"].tolist(),
        "padding": batch["padding"].tolist(),
    })
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, weights)
same = all(torch.equal(g, gathered[0]) for g in gathered)
dist.barrier()
dist.destroy_process_group()
with open(out, "w") as fh:
    json.dump({"rank": rank, "world": it.world_size, "len": len(loader), "batches": served,
               "same_weights": same, "chunks": it.epoch_chunks, "seed": it.seed}, fh)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster_store(synth_root, local_cluster, tmp_path_factory) -> Path:
    from distributed import Client

    store = tmp_path_factory.mktemp("ddp") / "ds.zarr"
    with Client(local_cluster, timeout="30s") as client:
        daskmri.build(synth_root, store, chunk_size=3, client=client)
    return store


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no torch.distributed gloo backend",
)
def test_ddp_two_ranks_train_from_a_cluster_built_store(cluster_store, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    port, world = free_port(), 2
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": str(world), "GLOO_SOCKET_IFNAME": "lo",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
        out = tmp_path / f"rank{rank}.json"
        cmd = [sys.executable, str(script), str(cluster_store), str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    try:
        errors = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:  # a hang or a failure on one rank must not leave the other running
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert [p.returncode for p in procs] == [0, 0], errors
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["rank"] for r in results] == [0, 1] and {r["world"] for r in results} == {2}
    assert all(r["same_weights"] for r in results)  # DDP kept the replicas in step
    assert results[0]["seed"] == results[1]["seed"]  # rank 0's random seed, sent to both
    lengths = {(r["len"], len(r["batches"])) for r in results}
    assert len(lengths) == 1  # equal batch counts: no rank waits for ever in all-reduce
    per_rank = [
        [(p, i) for b in r["batches"]
         for p, i, pad in zip(b["patient_id"], b["instance"], b["padding"], strict=True)
         if not pad]
        for r in results
    ]  # fmt: skip
    assert not set(per_rank[0]) & set(per_rank[1])  # each rank its own records
    ds = daskmri.open_dataset(cluster_store)
    assert sorted(per_rank[0] + per_rank[1]) == sorted(keys(ds))  # the union is exact
    # Locality: the ranks together fetch each chunk at most twice.
    fetched = results[0]["chunks"] + results[1]["chunks"]
    assert max(fetched.count(c) for c in set(fetched)) <= 2
