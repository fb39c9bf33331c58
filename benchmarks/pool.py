"""What the reusable pool of local worker processes saves: the same ``load_dataset``
called several times in one fresh process (as a notebook or a script does), against
``scheduler="sync"``. The first call pays for starting the worker processes and their
imports; the later ones find them running.

    python benchmarks/pool.py [--data ROOT] [--records 2000] [--calls 4] [--out DIR]

Each dataset and scheduler runs in a fresh process, after every file was read once
(so that the first call does not also pay for the disk). Prints a table and saves
``pool.json`` and ``pool.png`` (with matplotlib) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import REAL_DATA, pyplot, replicate, require_data

RESULTS = Path(__file__).resolve().parent / "results"

#: One measurement, in a fresh interpreter: the time of each call.
CHILD = """
import json, sys, time
import daskmri
root, chunk, calls, scheduler = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
times = []
for _ in range(calls):
    started = time.perf_counter()
    ds = daskmri.load_dataset(root, chunk_size=chunk, scheduler=scheduler)
    times.append(time.perf_counter() - started)
print("RESULT " + json.dumps({"times": times, "records": ds.sizes["record"]}))
"""


def measure(root: Path, chunk: int, calls: int, scheduler: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(chunk), str(calls), scheduler],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def warm_page_cache(root: Path) -> None:
    """Read every file once, so that the first call does not also pay for the disk."""
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = replicate(require_data(args.data), args.records)
    import daskmri

    tiny = root.parent / "tiny"
    if not tiny.exists():
        daskmri.synth.make_dataset(tiny, patients=1, slices=12, shape=(256, 256))
    rows = []
    for label, folder, chunk in (("real, replicated", root, 64), ("synthetic, 2 chunks", tiny, 4)):
        warm_page_cache(folder)
        for scheduler in ("processes", "sync"):
            row = measure(folder, chunk, args.calls, scheduler)
            rows.append({"dataset": label, "scheduler": scheduler, **row})
    calls = " | ".join(f"call {k + 1}" for k in range(args.calls))
    print(f"\nload_dataset, {args.calls} calls in one fresh process each (seconds)\n")
    print(f"| dataset | records | scheduler | {calls} |")
    print("|---|---:|---|" + "---:|" * args.calls)
    for row in rows:
        times = " | ".join(f"{t:.2f}" for t in row["times"])
        print(f"| {row['dataset']} | {row['records']} | {row['scheduler']} | {times} |")
    for row in rows:
        if row["scheduler"] == "processes" and len(row["times"]) > 1:
            first, later = row["times"][0], min(row["times"][1:])
            print(f"{row['dataset']}: the first call takes {first - later:.2f} s longer")
    (args.out / "pool.json").write_text(json.dumps(rows, indent=1))
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for row in rows:
            label = f"{row['dataset']}, {row['scheduler']}"
            ax.plot(range(1, args.calls + 1), row["times"], marker="o", label=label)
        ax.set_xlabel("call in the same process")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.set_title("load_dataset: the pool outlives a call")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / "pool.png", dpi=110)


if __name__ == "__main__":
    main()
