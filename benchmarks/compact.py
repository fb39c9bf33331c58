"""Compact records (issue 26), old code against new, side by side in one run.

The old side is a checkout of the commit before issue 26 (``--old PATH``; without it,
the script makes a detached ``git worktree`` of ``--old-commit`` in a temporary folder
and removes it at the end), the new side this checkout (``--new PATH``)::

    python benchmarks/compact.py [--old PATH] [--new PATH] [--sizes 2016,20000:1]
                                 [--repeats 5] [--data ROOT] [--out DIR] [--plot PNG]
    python benchmarks/compact.py --sizes 2016,20000 --repeats 5   # issue 26's full run
    python benchmarks/compact.py --quick   # tiny sizes, 1 repeat: a smoke run
    python benchmarks/compact.py --kinds build,store --compressor blosc-zstd
                                  # some rows only; the new side's store compressed otherwise

``--sizes`` takes ``RECORDS[:REPEATS]`` (``--repeats`` where no count is given). The
default, 2,016 records 5 times and 20,048 once, takes about 25 minutes on a 2-core
machine; 5 repeats of both about an hour (one repeat of both, old and new, took 14
minutes there, 12 of them for the 20,048 records).

The real sample is replicated (hard links, ``common.replicate``) to each size. Every
measurement runs in a fresh interpreter whose ``PYTHONPATH`` is the side under test
(the two versions never share a process; the child checks where ``daskmri`` came
from), and old and new runs alternate (old-new, then new-old, ...). Each repeat:

* ``build``: a warm-up build of the sample replicated to 300 records (it starts the
  worker pool, which a job of one chunk does not use), then
  the timed build of the replicated one. Wall time; CPU of the whole process tree:
  ``psutil`` CPU times of the process and every live descendant before and after,
  plus ``getrusage(RUSAGE_CHILDREN)`` for the children reaped in between (so local
  worker processes count, warm or not). Store bytes: ``du`` (allocated blocks).
* ``store``: ``open_dataset`` + ``BatchIterator(batch_size=32)``, default and (when
  the side has it) ``compact=True``: a warm-up epoch, then timed epochs (up to 3,
  while under 2 s in all; their median), wall and process CPU (the iterator's threads
  are in the process).
* ``memory``: ``load_dataset`` then the same epochs; the bytes the dataset holds (sum
  of ``nbytes`` of every variable and coordinate except, in the compact format, the
  lazily derived ``image`` and per-kind masks).
* ``cluster``: ``load_dataset`` persisted on a ``LocalCluster`` of 2 worker processes
  x 1 thread, then the same epochs; CPU = this process's (client and scheduler) plus
  each worker's (``psutil`` in the worker, through ``client.run``).

On the first repeat each side also hashes every record's float32 image and masks
(sha256 per record, then over the records in (patient_id, instance) order): the
dataset from ``load_dataset``, from ``open_dataset``, and what each epoch kind served
(compact batches widened with the contract's formula). The table says whether each
equals the old side's ``load_dataset``. Medians over the repeats. Writes
``compact.json`` in ``--out`` and a plot of new/old ratios against the goals.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REAL_DATA, pyplot, replicate, require_data  # noqa: E402

RESULTS = HERE / "results"
PLOT = HERE.parent / "docs" / "images" / "compact.png"
OLD_COMMIT = "1b9cfcb"  # main before issue 26
BATCH = 32
KINDS = ("build", "store", "memory", "cluster")
#: Bytes a 256x256 record with two kinds takes today (float32 image, two bool masks):
#: the memory guard's estimate for the in-memory and cluster rows.
OLD_RECORD_BYTES = 256 * 256 * (4 + 2)
#: Timed epochs in one child: up to EPOCHS while under EPOCH_BUDGET seconds in all;
#: the child's figure is their median.
EPOCHS, EPOCH_BUDGET = 3, 2.0
#: Records of the warm-up build (several chunks, so that the worker pool starts).
WARM_RECORDS = 300


# -- measured in a child process (PYTHONPATH = the side under test) ------------------


def has_compact() -> bool:
    import inspect

    import daskmri

    return "compact" in inspect.signature(daskmri.BatchIterator).parameters


def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each live descendant, by pid."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return out


def reaped_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timed:
    """Wall and process-tree CPU seconds of a block (see the module docstring)."""

    def __enter__(self) -> Timed:
        self.before, self.reaped = tree_cpu(), reaped_cpu()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.started
        after, reaped = tree_cpu(), reaped_cpu()
        live = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items())
        # A child that ended in between: its whole life is in RUSAGE_CHILDREN, less
        # what it had used before the block.
        gone = sum(cpu for pid, cpu in self.before.items() if pid not in after)
        self.cpu = live + (reaped - self.reaped) - gone


def du(path: Path) -> tuple[int, int]:
    """Allocated bytes (as ``du``) and apparent bytes of every file under ``path``."""
    blocks = apparent = 0
    for p in Path(path).rglob("*"):
        if p.is_file():
            st = p.stat()
            blocks, apparent = blocks + st.st_blocks * 512, apparent + st.st_size
    return blocks, apparent


def kinds_of(ds) -> list[str]:
    return json.loads(ds.attrs["kinds"])


def record_digest(image, masks) -> bytes:
    """sha256 of one record: its float32 image bytes, then each mask's bool bytes."""
    import numpy as np

    h = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    for mask in masks:
        h.update(np.ascontiguousarray(mask, dtype=bool).tobytes())
    return h.digest()


def final_digest(digests: dict) -> dict:
    """One sha256 over the records' digests in (patient_id, instance) order."""
    h = hashlib.sha256()
    for key in sorted(digests):
        h.update(f"{key[0]}\0{key[1]}\0".encode())
        h.update(digests[key])
    return {"records": len(digests), "sha256": h.hexdigest()}


def dataset_checksum(ds) -> dict:
    """The checksum of every record of a dataset, chunk by chunk."""
    kinds = kinds_of(ds)
    n, step = ds.sizes["record"], int(ds.attrs.get("chunk_size") or 64)
    digests = {}
    for start in range(0, n, step):
        part = ds[["image", *kinds]].isel(record=slice(start, start + step)).compute()
        ids, insts = part.patient_id.values.tolist(), part.instance.values.tolist()
        image, masks = part.image.values, [part[k].values for k in kinds]
        for i, key in enumerate(zip(ids, insts, strict=True)):
            digests[key] = record_digest(image[i], [m[i] for m in masks])
    return final_digest(digests)


def widen_batch(batch: dict, kinds: list[str], order: tuple) -> tuple:
    """float32 images and per-kind masks of a compact batch (the contract's formulas)."""
    import numpy as np

    slope, intercept = batch["slope"][:, None, None], batch["intercept"][:, None, None]
    image = (batch["pixels"].astype(np.float64) * slope + intercept).astype(np.float32)
    labels = batch["labels"]
    masks = [((labels >> order.index(k)) & 1).astype(bool) for k in kinds]
    return image, masks


def served_checksum(it, kinds: list[str], compact: bool) -> dict:
    """One epoch of ``it``, hashed: every real (not padding) record it served."""
    digests = {}
    for batch in it:
        if compact:
            image, masks = widen_batch(batch, kinds, tuple(it.kinds))
        else:
            image, masks = batch["image"], [batch[k] for k in kinds]
        real = ~batch["padding"] if "padding" in batch else [True] * len(image)
        keys = zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True)
        for i, key in enumerate(keys):
            if real[i]:
                digests[key] = record_digest(image[i], [m[i] for m in masks])
    return final_digest(digests)


def timed_epochs(it, workers_cpu=None) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of timed epochs of ``it``: up to ``EPOCHS``, while they
    take under ``EPOCH_BUDGET`` seconds in all (a short epoch is noisy; a long one is
    not worth repeating in one process)."""
    walls, cpus = [], []
    while len(walls) < EPOCHS and sum(walls) < EPOCH_BUDGET:
        started, cpu = time.perf_counter(), time.process_time()
        before = workers_cpu() if workers_cpu else 0.0
        for batch in it:
            del batch
        walls.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
        cpus.append(cpu + ((workers_cpu() - before) if workers_cpu else 0.0))
    return walls, cpus


def epochs(ds, checksum: bool, client=None, workers_cpu=None) -> dict:
    """A warm-up epoch (hashed when ``checksum``), then timed ones, per batch kind."""
    import daskmri

    out, modes = {}, [False, True] if has_compact() else [False]
    for compact in modes:
        extra = {"compact": True} if compact else {}
        if client is not None:
            extra["client"] = client
        it = daskmri.BatchIterator(ds, batch_size=BATCH, seed=0, **extra)
        try:
            if checksum:
                out[f"served_{'compact' if compact else 'default'}"] = served_checksum(
                    it, kinds_of(ds), compact
                )
            else:
                for batch in it:
                    del batch
            walls, cpus = timed_epochs(it, workers_cpu)
        finally:
            it.close()
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        out["compact" if compact else "default"] = {"wall": wall, "cpu": cpu, "epochs": len(walls)}
    return out


def held_bytes(ds) -> int:
    """Bytes of the arrays a dataset holds: in the compact format (it has ``pixels``),
    not the lazily derived ``image`` and per-kind masks."""
    derived = {"image", *kinds_of(ds)} if "pixels" in ds else set()
    return int(sum(v.nbytes for name, v in ds.variables.items() if name not in derived))


def child_build(root: str, warm_root: str, store: str, compressor: str = "") -> dict:
    import daskmri

    options = {"compressor": compressor} if compressor else {}
    warm = Path(store + ".warm")
    daskmri.build(warm_root, warm, **options)  # starts the worker pool (imports): not timed
    shutil.rmtree(warm)  # made just above
    with Timed() as t:
        daskmri.build(root, store, **options)
    blocks, apparent = du(Path(store))
    records = daskmri.open_dataset(store).sizes["record"]
    return {
        "wall": t.wall,
        "cpu": t.cpu,
        "bytes": blocks,
        "apparent_bytes": apparent,
        "records": records,
    }


def child_store(store: str, checksum: bool) -> dict:
    import daskmri

    ds = daskmri.open_dataset(store)
    out = {"records": ds.sizes["record"]} | epochs(ds, checksum)
    if checksum:
        out["dataset"] = dataset_checksum(ds)
    return out


def child_memory(root: str, checksum: bool) -> dict:
    import daskmri

    with Timed() as t:
        ds = daskmri.load_dataset(root)
    out = {
        "records": ds.sizes["record"],
        "held_bytes": held_bytes(ds),
        "load": {"wall": t.wall, "cpu": t.cpu},
    } | epochs(ds, checksum)
    if checksum:
        out["dataset"] = dataset_checksum(ds)
    return out


def worker_cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def child_cluster(root: str) -> dict:
    from distributed import Client, LocalCluster

    import daskmri

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        ds = daskmri.load_dataset(root, client=client)

        def workers_cpu() -> float:
            return sum(client.run(worker_cpu_seconds).values())

        return {"records": ds.sizes["record"]} | epochs(ds, False, client, workers_cpu)


def child(argv: list[str]) -> None:
    """``--one KIND ARGS...``: one measurement in this process; prints ``ROW {json}``."""
    import daskmri

    kind, args = argv[0], argv[1:]
    started = time.perf_counter()
    if kind == "build":
        row = child_build(*args)
    elif kind == "store":
        row = child_store(args[0], args[1] == "1")
    elif kind == "memory":
        row = child_memory(args[0], args[1] == "1")
    else:
        row = child_cluster(args[0])
    row |= {
        "daskmri": daskmri.__file__,
        "compact_iterator": has_compact(),
        "process_s": time.perf_counter() - started,
    }
    print("ROW " + json.dumps(row), flush=True)


# -- the parent: sides, interleaving, the table ---------------------------------------


def make_old(new: Path, commit: str) -> tuple[Path, object]:
    """A detached worktree of ``commit`` in a temporary folder made here, and the
    function that removes both (only what this made)."""
    folder = Path(tempfile.mkdtemp(prefix="daskmri-old-"))
    path = folder / "old"
    git = ["git", "-C", str(new)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", str(path), commit],
        check=True,
        capture_output=True,
        text=True,
    )

    def remove() -> None:
        subprocess.run(
            [*git, "worktree", "remove", "--force", str(path)], check=False, capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)

    return path, remove


def commit_of(side: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(side), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def run_child(side: Path, argv: list[str], timeout: float) -> dict:
    """One measurement in a fresh interpreter on ``side``; a failure becomes the row."""
    env = dict(os.environ, PYTHONPATH=str(side))
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--one", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rows = [x for x in done.stdout.splitlines() if x.startswith("ROW ")]
        if not rows:
            return {"error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}
        row = json.loads(rows[-1][4:])
    except subprocess.TimeoutExpired:
        return {"error": f"no result in {timeout:.0f} s"}
    if not Path(row["daskmri"]).resolve().is_relative_to(side.resolve()):
        return {"error": f"imported daskmri from {row['daskmri']}, not from {side}"}
    return row


def memory_guard(records: int) -> str | None:
    """Why the in-memory rows cannot run here now, or None: the old format needs
    about ``OLD_RECORD_BYTES`` a record, and half as much again for the batches."""
    import psutil

    need, free = 1.5 * records * OLD_RECORD_BYTES, psutil.virtual_memory().available
    if need > free:
        return f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
    return None


def measure_size(args, sides: dict, data: Path, size: int, repeats: int, work: Path) -> dict:
    """Every kind for one size: repeats x sides, interleaved; raw rows by side."""
    root = replicate(data, size, work / "real")
    warm = replicate(data, WARM_RECORDS, work / "warm")
    raw = {name: {k: [] for k in KINDS} for name in sides}
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        check = "1" if r == 0 else "0"
        stores = {name: work / f"{name}-{size}-{r}.zarr" for name in sides}
        for kind in args.kinds:
            for name in order:
                argv = {
                    "build": ["build", str(root), str(warm), str(stores[name])]
                    + ([args.compressor] if name == "new" and args.compressor else []),
                    "store": ["store", str(stores[name]), check],
                    "memory": ["memory", str(root), check],
                    "cluster": ["cluster", str(root)],
                }[kind]
                skip = memory_guard(size) if kind in ("memory", "cluster") else None
                row = {"error": skip} if skip else run_child(sides[name], argv, args.timeout)
                raw[name][kind].append(row)
                print(f"  {size} {name} {kind} #{r + 1}: {brief(row)}", flush=True)
        for store in stores.values():
            shutil.rmtree(store, ignore_errors=True)  # made by this run's builds
    return raw


def brief(row: dict) -> str:
    if "error" in row:
        return f"FAILED {row['error'][:300]}"
    keys = ("wall", "cpu", "bytes", "held_bytes")
    parts = [f"{k} {row[k]:.3g}" for k in keys if k in row]
    parts += [f"{m} {row[m]['wall']:.3g} s" for m in ("default", "compact") if m in row]
    return ", ".join(parts) or "ok"


#: The table's rows: label, kind, old side's figure, new side's figure (``None``: the
#: measurement itself; else ``default``, ``compact`` or ``load``), what is compared
#: (a figure per record, lower is better; or ``speed``: records/s from the wall time,
#: higher is better), and the goal for new against old.
ROWS = [
    ("store bytes per record (du)", "build", None, None, "bytes", ("<=", 0.65)),
    ("build CPU per record", "build", None, None, "cpu", ("<=", 0.75)),
    ("epoch from the store, default", "store", "default", "default", "speed", (">=", 1.5)),
    ("epoch from the store, compact=True", "store", "default", "compact", "speed", (">=", 2.5)),
    ("epoch from memory, default", "memory", "default", "default", "speed", (">=", 1.3)),
    ("epoch from memory, compact=True", "memory", "default", "compact", "speed", (">=", 2.0)),
    ("in-memory dataset bytes per record", "memory", "load", "load", "held_bytes", ("<=", 0.55)),
    (
        "epoch persisted on a LocalCluster 2x1, default",
        "cluster",
        "default",
        "default",
        "speed",
        (">=", 2.0),
    ),
    (
        "epoch persisted on a LocalCluster 2x1, compact=True",
        "cluster",
        "default",
        "compact",
        "speed",
        None,
    ),
]


def figures(rows: list[dict], mode: str | None, metric: str) -> dict | None:
    """Medians over the repeats that ran: wall, CPU and the compared figure per record."""
    ok = [r for r in rows if "error" not in r and (mode is None or mode in r)]
    if not ok:
        return None
    part = [r if mode is None else r[mode] for r in ok]
    n = ok[0]["records"]
    if metric in ("bytes", "held_bytes"):
        per = [r[metric] / n for r in ok]
    elif metric == "cpu":
        per = [p["cpu"] / n for p in part]
    else:
        per = [n / p["wall"] for p in part]
    return {
        "records": n,
        "repeats": len(ok),
        "wall": statistics.median(p["wall"] for p in part),
        "cpu": statistics.median(p["cpu"] for p in part),
        "per_record": statistics.median(per),
    }


def summarise(raw: dict, size: int) -> list[dict]:
    """The table's rows for one size, from the raw rows of both sides."""
    out = []
    for label, kind, old_mode, new_mode, metric, goal in ROWS:
        old = figures(raw["old"][kind], old_mode, metric)
        new = figures(raw["new"][kind], new_mode, metric)
        row = {
            "size": size,
            "row": label,
            "metric": metric,
            "old": old,
            "new": new,
            "goal": goal,
            "ratio": None,
            "met": None,
        }
        if old and new:
            ratio = new["per_record"] / old["per_record"]
            row["ratio"] = ratio
            if goal:
                row["met"] = ratio <= goal[1] if goal[0] == "<=" else ratio >= goal[1]
        errors = [r["error"] for side in raw.values() for r in side[kind] if "error" in r]
        if new is None and new_mode == "compact" and not errors:
            row["note"] = "no compact= on the new side yet"
        elif errors:
            row["note"] = f"{len(errors)} failed: {errors[0][:200]}"
        out.append(row)
    return out


UNITS = {
    "bytes": ("KB", 1e-3),
    "held_bytes": ("KB", 1e-3),
    "cpu": ("ms CPU", 1e3),
    "speed": ("records/s", 1.0),
}


def table(rows: list[dict]) -> None:
    print(
        "| records | row | runs | old wall s | new wall s | old CPU s | new CPU s "
        "| old per record | new per record | new/old | goal | met |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        unit, scale = UNITS[r["metric"]]
        old, new = r["old"] or {}, r["new"] or {}

        def fig(side: dict, key: str, spec: str, k: float = 1.0, unit: str = "") -> str:
            return f"{format(side[key] * k, spec)}{unit}" if key in side else "-"

        goal = f"{r['goal'][0]} {r['goal'][1]}x" if r["goal"] else "-"
        met = {True: "yes", False: "**no**", None: r.get("note", "-")}[r["met"]]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        records = (r["old"] or r["new"] or {}).get("records", r["size"])
        runs = min([side["repeats"] for side in (old, new) if side] or [0])
        print(
            f"| {records:,} | {r['row']} | {runs} | {fig(old, 'wall', '.2f')} "
            f"| {fig(new, 'wall', '.2f')} "
            f"| {fig(old, 'cpu', '.2f')} | {fig(new, 'cpu', '.2f')} "
            f"| {fig(old, 'per_record', ',.1f', scale, ' ' + unit)} "
            f"| {fig(new, 'per_record', ',.1f', scale, ' ' + unit)} | {ratio} | {goal} | {met} |"
        )


CHECKS = [
    ("load_dataset", "memory", "dataset"),
    ("open_dataset", "store", "dataset"),
    ("epoch from memory, default", "memory", "served_default"),
    ("epoch from memory, compact", "memory", "served_compact"),
    ("epoch from the store, default", "store", "served_default"),
    ("epoch from the store, compact", "store", "served_compact"),
]


def checksums(raw: dict, size: int) -> list[dict]:
    """Each side's checksums (first repeat), against the old side's load_dataset."""

    def first(side: str, kind: str, key: str) -> dict | None:
        rows = raw[side][kind]
        return rows[0].get(key) if rows and "error" not in rows[0] else None

    reference = first("old", "memory", "dataset")
    out = []
    for label, kind, key in CHECKS:
        for side in ("old", "new"):
            got = first(side, kind, key)
            if got is None:
                verdict = "-"
            elif reference is None:
                verdict = "no reference"
            else:
                verdict = "equal" if got == reference else "NOT EQUAL"
            out.append(
                {"size": size, "what": label, "side": side, "checksum": got, "verdict": verdict}
            )
    return out


def print_checksums(rows: list[dict]) -> None:
    print("\n| size asked | what | side | records hashed | sha256 | vs old load_dataset |")
    print("|---:|---|---|---:|---|---|")
    for r in rows:
        c = r["checksum"] or {}
        print(
            f"| {r['size']:,} | {r['what']} | {r['side']} | {c.get('records', '-')} "
            f"| {c.get('sha256', '-')[:16]} | {r['verdict']} |"
        )


def plot(rows: list[dict], path: Path, cores: int) -> None:
    """new/old per row and size, with each goal marked."""
    plt = pyplot()
    if plt is None:
        print("no plot: pip install 'daskmri[plot]'")
        return
    import numpy as np

    labels = [label for label, *_ in ROWS]
    sizes = sorted({r["size"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(labels) + 1.5))
    y = np.arange(len(labels))
    height = 0.8 / len(sizes)
    for k, size in enumerate(sizes):
        mine = {r["row"]: r for r in rows if r["size"] == size}
        values = [mine[label]["ratio"] or 0.0 for label in labels]
        ax.barh(y + k * height, values, height, label=f"{size:,} records")
    for i, (*_, goal) in enumerate(ROWS):
        if goal:
            ax.plot([goal[1]] * 2, [i - 0.1, i + 0.9], color="tab:red", lw=2)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(y + 0.4 - height / 2, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("new / old (per record; speed rows: records/s). Red: the goal")
    ax.set_title(f"Compact records, new against old, median of the repeats, {cores} cores")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--old",
        type=Path,
        help="a checkout of the old code (default: a temporary git worktree of --old-commit)",
    )
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--new", type=Path, default=HERE.parent)
    parser.add_argument(
        "--sizes", default="2016,20000:1", help="RECORDS[:REPEATS], comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=5, help="where --sizes gives none")
    parser.add_argument("--quick", action="store_true", help="60 records, 1 repeat")
    parser.add_argument(
        "--compressor",
        default="",
        help="the new side's build(compressor=...) (default: its default); the old side "
        "keeps its default, the baseline",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"what to measure, comma-separated (default: all of {','.join(KINDS)}; "
        "store needs build)",
    )
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = "60", 1
    args.kinds = [k for k in KINDS if k in args.kinds.split(",")]
    if "store" in args.kinds and "build" not in args.kinds:
        parser.error("--kinds store needs build (it reads the stores the builds make)")
    args.plan = {}
    for item in args.sizes.split(","):
        size, _, repeats = item.partition(":")
        args.plan[int(size)] = int(repeats or args.repeats)
    return args


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        return child(sys.argv[2:])
    args = parse_args()
    from daskmri.versions import versions

    data = require_data(args.data)
    work = Path(tempfile.mkdtemp(prefix="daskmri-compact-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # made here: removed here
    remove_old = None
    if args.old is None:
        args.old, remove_old = make_old(args.new, args.old_commit)
    sides = {"old": args.old.resolve(), "new": args.new.resolve()}
    started = time.perf_counter()
    try:
        raw = {}
        for size, repeats in args.plan.items():
            began = time.perf_counter()
            raw[size] = measure_size(args, sides, data, size, repeats, work)
            print(f"  {size}: {time.perf_counter() - began:.0f} s", flush=True)
    finally:
        if remove_old is not None:
            remove_old()
    rows = [r for size, by in raw.items() for r in summarise(by, size)]
    sums = [c for size, by in raw.items() for c in checksums(by, size)]
    info, took = versions(), time.perf_counter() - started
    print(
        f"\n{datetime.date.today()}, {info['cpu_count']} cores, "
        f"{info['memory_bytes'] / 2**30:.0f} GiB, Python {info['python']}, dask {info['dask']}; "
        f"old {sides['old']} ({commit_of(sides['old'])}), new {sides['new']} "
        f"({commit_of(sides['new'])}); repeats by size {args.plan} (medians); {took:.0f} s in all\n"
    )
    table(rows)
    print_checksums(sums)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": str(datetime.date.today()),
        "machine": info,
        "repeats": {str(size): n for size, n in args.plan.items()},
        "sides": {k: {"path": str(v), "commit": commit_of(v)} for k, v in sides.items()},
        "seconds": took,
        "rows": rows,
        "checksums": sums,
        "raw": {str(k): v for k, v in raw.items()},
    }
    (args.out / "compact.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.plot, info["cpu_count"])
    print(f"wrote {args.out / 'compact.json'} and {args.plot}")


if __name__ == "__main__":
    main()
