"""Feed a small U-Net's training step from a Zarr store: images/s and the stall, with
``compact=False`` and ``compact=True`` (issue 26).

Runs on a CUDA device (it exits 0, saying so, when there is none), or on the CPU when
asked (a tiny run, for the smoke test)::

    python benchmarks/gpu.py [--data ROOT | --synthetic N] [--records 2016]
                             [--batch-size 32] [--steps 300] [--out DIR]
    python benchmarks/gpu.py --device cpu --synthetic 40 --shape 64 --steps 4 --batch-size 4

The dataset is the real sample replicated to ``--records`` (hard links) when ``--data``
(default: the real sample) is a dataset, else a synthetic one (``daskmri.synth``); it
is built once into a store. Each mode then trains a fresh U-Net (same seed) from
``BatchIterator(open_dataset(store), batch_size=..., compact=...)``:

* where ``daskmri.torch.TorchBatches`` takes ``device=``, it does the transfer (pinned
  memory, a side stream, a batch ahead) and the widening on the device;
* otherwise ``TorchBatches(it)`` on the host, then ``pin_memory()`` and
  ``.to(device, non_blocking=True)`` here; compact batches are widened here, on the
  device, with the contract's formula (float64 product, cast to float32).

``compact=True`` runs only when ``BatchIterator`` has that parameter. Per step it
measures the wait for the next batch (the stall: the loop has nothing to do) and the
step itself (forward, BCE-with-logits on the masks, backward, Adam), with
``torch.cuda.synchronize()`` around the step on CUDA (so the wait includes the copy
and the widening still in flight when the batch is taken). After ``--warmup`` steps,
``--steps`` steps are timed (epochs restart as needed). Prints a table and writes
``gpu.json`` in ``--out``. A whole run takes well under 5 minutes on one H200.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import inspect
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REAL_DATA, bench_root  # noqa: E402

import daskmri  # noqa: E402

RESULTS = HERE / "results"


def features() -> dict:
    """Which parts of issue 26 the daskmri on the path has."""
    from daskmri.torch import TorchBatches

    return {
        "compact": "compact" in inspect.signature(daskmri.BatchIterator).parameters,
        "device": "device" in inspect.signature(TorchBatches).parameters,
    }


def unet(kinds: int, width: int):
    """A small 2D U-Net: three levels, one input channel, one output channel per kind."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.down = nn.ModuleList([block(1, w), block(w, 2 * w), block(2 * w, 4 * w)])
            self.middle = block(4 * w, 8 * w)
            self.up = nn.ModuleList(
                [nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in (8 * w, 4 * w, 2 * w)]
            )
            self.merge = nn.ModuleList([block(8 * w, 4 * w), block(4 * w, 2 * w), block(2 * w, w)])
            self.head = nn.Conv2d(w, kinds, 1)

        def forward(self, x):
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.middle(x)
            for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
                x = merge(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


def widen_on_device(batch: dict, kinds: list[str], order: tuple):
    """float32 images (B, 1, Y, X) and float targets (B, K, Y, X) from a batch on the
    device: today's (``image`` and masks) or a compact one (widened here)."""
    import torch

    if "image" in batch:
        image = batch["image"]
        masks = [batch[k] for k in kinds]
    else:
        slope = batch["slope"].to(torch.float64)[:, None, None]
        intercept = batch["intercept"].to(torch.float64)[:, None, None]
        image = (batch["pixels"].to(torch.float64) * slope + intercept).to(torch.float32)
        labels = batch["labels"]
        labels = labels if labels.dtype == torch.uint8 else labels.to(torch.int64)
        masks = [(labels >> order.index(k)) & 1 for k in kinds]
    target = torch.stack([m.to(torch.float32) for m in masks], dim=1)
    return image[:, None].to(torch.float32), target


def to_device(batch: dict, device) -> dict:
    """A host batch of tensors on ``device``: pinned, then copied without blocking."""
    import torch

    out = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            if device.type == "cuda":
                value = value.pin_memory().to(device, non_blocking=True)
            out[name] = value
    return out


def batches(store: Path, compact: bool, args, device, have: dict):
    """An endless stream of batches on ``device`` (epochs restart), and the kinds."""
    from daskmri.torch import TorchBatches

    ds = daskmri.open_dataset(store)
    extra = {"compact": True} if compact else {}
    it = daskmri.BatchIterator(ds, batch_size=args.batch_size, seed=0, **extra)
    wrapped = TorchBatches(it, device=device) if have["device"] else TorchBatches(it)
    order = tuple(getattr(it, "kinds", json.loads(ds.attrs["kinds"])))

    def stream():
        while True:
            for batch in wrapped:
                yield batch if have["device"] else to_device(batch, device)

    return it, stream(), json.loads(ds.attrs["kinds"]), order


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(store: Path, compact: bool, args, device, have: dict) -> dict:
    """Warm-up, then ``args.steps`` timed steps; waits and step times per step."""
    import torch

    torch.manual_seed(0)
    it, stream, kinds, order = batches(store, compact, args, device, have)
    model = unet(len(kinds), args.width).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    waits, steps, images, losses = [], [], 0, []
    try:
        for k in range(args.warmup + args.steps):
            t = time.perf_counter()
            batch = next(stream)
            x, y = widen_on_device(batch, kinds, order)
            sync(device)  # the batch is ready on the device: the step times only itself
            wait = time.perf_counter() - t
            if k == args.warmup:
                sync(device)
                started = time.perf_counter()
            t = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            sync(device)
            if k >= args.warmup:
                waits.append(wait)
                steps.append(time.perf_counter() - t)
                images += x.shape[0]
                losses.append(float(loss.detach()))
        elapsed = time.perf_counter() - started
    finally:
        it.close()
    return {
        "mode": "compact=True" if compact else "compact=False",
        "transfer": "TorchBatches(device=)" if have["device"] else "pin_memory + .to()",
        "steps": len(steps),
        "images": images,
        "seconds": elapsed,
        "images_per_s": images / elapsed,
        "stall": sum(waits) / elapsed,
        "wait_ms_mean": 1e3 * statistics.mean(waits),
        "wait_ms_p95": 1e3 * sorted(waits)[int(0.95 * (len(waits) - 1))],
        "step_ms_mean": 1e3 * statistics.mean(steps),
        "loss_first_last": [losses[0], losses[-1]],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--synthetic", type=int, metavar="N", help="~N synthetic records")
    parser.add_argument("--shape", type=int, default=256, help="synthetic slices' side")
    parser.add_argument("--records", type=int, default=2016)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per mode")
    parser.add_argument("--width", type=int, default=16, help="the U-Net's first channels")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def dataset(args, work: Path) -> tuple[Path, str]:
    """The dataset to build: the real sample replicated, or a synthetic one."""
    synthetic = args.synthetic
    if synthetic is None and not (args.data / "link.csv").is_file():
        print(f"no dataset at {args.data}: a synthetic one of ~{args.records} records")
        synthetic = args.records
    if synthetic is not None:
        patients = max(1, round(synthetic / 20))  # 30 slices give about 20 records
        shape = (args.shape, args.shape)
        root = daskmri.synth.make_dataset(
            work / "synthetic", patients=patients, slices=30, shape=shape
        )
        return root, "synthetic"
    return bench_root(args.data, None, args.records, work)


def main() -> None:
    args = parse_args()
    try:
        import torch
    except ImportError:
        print("benchmarks/gpu.py needs torch: pip install 'daskmri[torch]'; nothing measured")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (pass --device cpu for a CPU run)")
        return
    device, have = torch.device(args.device), features()
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: tune once
    work = Path(tempfile.mkdtemp(prefix="daskmri-gpu-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    root, label = dataset(args, work)
    store = work / "ds.zarr"
    started = time.perf_counter()
    daskmri.build(root, store)
    built = time.perf_counter() - started
    records = daskmri.open_dataset(store).sizes["record"]
    print(f"{records} records ({label}) built in {built:.1f} s; {device}; features {have}")
    rows = [train(store, False, args, device, have)]
    if have["compact"]:
        rows.append(train(store, True, args, device, have))
    else:
        print("compact=True: not measured (BatchIterator has no compact= on this checkout)")
    report(rows, records, label, device, args)


def report(rows: list[dict], records: int, label: str, device, args) -> None:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\n{records:,} records ({label}), batch {args.batch_size}, {name}, "
        f"U-Net width {args.width}, {rows[0]['steps']} timed steps per mode\n"
    )
    print("| mode | transfer | images/s | stall | wait ms (mean / p95) | step ms | loss |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['transfer']} | {r['images_per_s']:,.0f} | {r['stall']:.1%} "
            f"| {r['wait_ms_mean']:.2f} / {r['wait_ms_p95']:.2f} | {r['step_ms_mean']:.2f} "
            f"| {r['loss_first_last'][0]:.3f} -> {r['loss_first_last'][1]:.3f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": name,
        "torch": torch.__version__,
        "daskmri": daskmri.__version__,
        "records": records,
        "data": label,
        "batch_size": args.batch_size,
        "width": args.width,
        "rows": rows,
    }
    (args.out / "gpu.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
