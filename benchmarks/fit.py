"""What fitting slices into one frame costs per record: ``load_dataset`` on the real
sample (256x256 slices, PixelSpacing about 1.3 mm) with the default ``fit="drop"``,
with ``fit="pad_or_crop"`` into a frame that crops the rows and pads the columns,
and with ``spacing=1.0`` (every slice resampled) into a 256x256 frame::

    python benchmarks/fit.py [--data ROOT] [--records 2000] [--repeat 5] [--out DIR]

In process (``scheduler="sync"``), so that the figures are the parsing itself; the
median of ``--repeat`` runs after a warm-up, all in one run. Every configuration
must keep every record. Prints a table and saves ``fit.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import REAL_DATA, replicate, require_data

import daskmri
from daskmri.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"

CONFIGS = {
    'fit="drop" (the default)': {},
    'fit="pad_or_crop", frame 224x288': {"fit": "pad_or_crop", "shape": (224, 288)},
    'spacing=1.0, fit="pad_or_crop", frame 256x256': {
        "fit": "pad_or_crop",
        "shape": (256, 256),
        "spacing": 1.0,
    },
}


def measure(root: Path, options: dict, repeat: int) -> tuple[list[float], int]:
    ds = daskmri.load_dataset(root, scheduler="sync", **options)  # the warm-up
    if len(daskmri.dropped(ds)):
        raise SystemExit(f"{options}: dropped {len(daskmri.dropped(ds))} records")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        daskmri.load_dataset(root, scheduler="sync", **options)
        samples.append(time.perf_counter() - started)
    return samples, ds.sizes["record"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = replicate(require_data(args.data), args.records)
    rows, base = [], None
    print("| configuration | median s | ms/record | extra ms/record |\n|---|---:|---:|---:|")
    for name, options in CONFIGS.items():
        samples, n = measure(root, options, args.repeat)
        per = statistics.median(samples) / n * 1e3
        base = per if base is None else base
        rows.append({"configuration": name, "records": n, "seconds": samples})
        print(f"| {name} | {statistics.median(samples):.2f} | {per:.3f} | {per - base:+.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": versions(), "records": n, "repeat": args.repeat, "rows": rows}
    (args.out / "fit.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
