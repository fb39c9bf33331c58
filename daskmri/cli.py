"""The ``daskmri`` command line: ``scan``, ``demo``, ``build``, ``check``, ``report`` and
``synth``.

Run ``daskmri --help`` or ``daskmri COMMAND --help``. :func:`main` takes
``argv`` so that it can be tested in-process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import DaskmriError, LayoutError, ReaderError
from .layout import layout_from_dict
from .settings import SCHEDULERS
from .sources.dicom_contours import SERIES, SUNNYBROOK, Layout
from .sources.volumes import PRESETS, VolumeLayout

# Commands import what they use when they run: the "processes" scheduler starts
# fresh interpreters that re-import this module, and they need none of it.

__all__ = ["main"]


def _where(value: str | None) -> dict:
    """``--scheduler`` is a local scheduler name or a cluster address."""
    if value is None:
        return {}
    if "://" in value or (value.count(":") == 1 and value.split(":")[1].isdigit()):
        return {"client": value}
    return {"scheduler": value}


def _scheduler_choice(value: str) -> str:
    if value in SCHEDULERS or "://" in value:
        return value
    host, _, port = value.rpartition(":")
    if host and port.isdigit():
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is neither a local scheduler {SCHEDULERS} nor an address like tcp://host:8786"
    )


def _shape(value: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 256x256, got {value!r}") from None
    if min(rows, cols) < 16 or max(rows, cols) > 4096:
        raise argparse.ArgumentTypeError(f"shape must be from 16x16 to 4096x4096, got {value!r}")
    return rows, cols


def _int_from(least: int):
    """An argparse type: a whole number of at least ``least``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < least:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {least}, got {value!r}"
            )
        return number

    parse.__name__ = "whole number"  # argparse names the type in some messages
    return parse


_positive, _count = _int_from(1), _int_from(0)


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cmd_scan(args: argparse.Namespace) -> int:
    from .layout import scan
    from .plan import exclude_from
    from .record import Problem

    layout = args.layout
    table, problems = exclude_from(scan(args.root, layout=layout, labels=args.labels), args.exclude)
    columns = [f"{kind}_path" for kind in layout.kinds]
    problems = [
        *problems,
        *(
            Problem(row[0] or next((p for p in row[1:-1] if p), None), row.problem)
            for row in table[["image_path", *columns, "problem"]].itertuples(index=False)
            if row.problem is not None
        ),
    ]
    print(f"root:        {table.attrs['root']}")
    print(f"patients:    {table.patient_id.nunique()}")
    print(f"records:     {len(table)} (labels={args.labels!r})")
    for kind, column in zip(layout.kinds, columns, strict=True):
        print(f"{kind + ':':<12} {table[column].notna().sum()}")
    print(f"problems:    {len(problems)}")
    for problem in problems[: args.max_problems]:
        print(f"  {problem.path}: {problem.reason}")
    if len(problems) > args.max_problems:
        print(f"  ... and {len(problems) - args.max_problems} more")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from . import synth

    if args.layout == "sunnybrook":
        root = synth.make_dataset(
            args.out, patients=args.patients, slices=args.slices, shape=args.shape, seed=args.seed
        )
        print(f"wrote {args.patients} patients x {args.slices} slices to {root}")
        return 0
    root = synth.make_volume_dataset(
        args.out,
        layout=args.layout,
        patients=args.patients,
        frames=args.frames,
        slices=args.slices,
        shape=args.shape,
        seed=args.seed,
    )
    print(
        f"wrote {args.patients} patients x {args.frames} frames x {args.slices} slices "
        f"({args.layout} layout) to {root}"
    )
    return 0


#: The layouts ``--layout`` names.
LAYOUTS = {"sunnybrook": SUNNYBROOK, "series": SERIES, **PRESETS}

#: The mixed demo: four sites' sizes and pixel spacings, fitted into one 256x256 frame.
MIXED_SHAPES = [(256, 256), (192, 224), (320, 288), (232, 272)]
MIXED_SPACINGS = [1.25, (1.4, 1.4), 1.0, (1.1, 1.3)]


def _demo_root(args: argparse.Namespace, tmp: str):
    """The demo's dataset folder: ``ROOT``, or a synthetic one in ``tmp``."""
    from . import synth

    if args.root is not None:
        return args.root
    if isinstance(args.layout, VolumeLayout):
        root = synth.make_volume_dataset(
            Path(tmp) / "synthetic", layout=args.layout.name, patients=4, frames=12, slices=10,
            shape=(128, 128), seed=0,
        )  # fmt: skip
        print(
            f"no ROOT given: made a synthetic {args.layout.name} dataset of 4 patients x 12 "
            "frames x 10 slices, deleted when the demo ends (`daskmri synth DIR --layout "
            f"{args.layout.name}` writes one to keep)"
        )
        return root
    mixed = {"shape": MIXED_SHAPES, "spacing": MIXED_SPACINGS} if args.mixed else {}
    # Its path is not printed: it is deleted when the demo ends.
    root = synth.make_dataset(Path(tmp) / "synthetic", patients=4, slices=30, seed=0, **mixed)
    sizes = " of mixed sizes (fitted into 256x256)" if args.mixed else ""
    print(
        f"no ROOT given: made a synthetic dataset of 4 patients x 30 slices{sizes}, deleted "
        "when the demo ends (`daskmri synth DIR` writes one to keep)"
    )
    return root


def _fitting(args: argparse.Namespace) -> dict:
    """load_dataset/build's fit, spacing and shape from the command line."""
    fit = args.fit or ("pad_or_crop" if getattr(args, "mixed", False) else "drop")
    options = {"fit": fit, "spacing": args.spacing}
    if getattr(args, "mixed", False) and args.root is None:
        options["shape"] = (256, 256)
    return options


def _demo_picks(ds) -> list[int]:
    """Eight records for the overlay: with every contour kind first, every patient's first."""
    import numpy as np

    from .schema import kinds_of

    n = ds.sizes["record"]
    every = np.ones(n, dtype=bool)
    for kind in kinds_of(ds):
        every &= ds[f"has_{kind}"].values
    both = set(every.nonzero()[0].tolist())
    patients = ds.patient_id.values
    firsts = [k for k in sorted(both) if k == min(j for j in both if patients[j] == patients[k])]
    rest = [k for k in sorted(both) if k not in firsts] + [k for k in range(n) if k not in both]
    return (firsts + rest)[:8]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .dataset import load_dataset
    from .plot import COLOUR_NAMES, overlay_grid, write_png, written_by_daskmri
    from .schema import dropped, kinds_of

    _refuse_to_overwrite(args.out, written_by_daskmri, "a PNG picture that daskmri wrote")
    with tempfile.TemporaryDirectory(prefix="daskmri-demo-") as tmp:
        root = _demo_root(args, tmp)
        started = time.perf_counter()
        ds = load_dataset(
            root,
            layout=args.layout,
            chunk_size=args.chunk_size,
            labels=args.labels,
            progress=True,
            exclude=args.exclude,
            **_fitting(args),
            **_where(args.scheduler),
        )
        elapsed = time.perf_counter() - started
        lost = dropped(ds)
        n = ds.sizes["record"]
        print(f"records:     {n} ({ds.patient_id.to_series().nunique()} patients)")
        print(f"dropped:     {len(lost)}")
        for row in lost.head(args.max_problems).itertuples():
            print(f"  {row.path}: {row.reason}")
        print(f"time:        {elapsed:.2f} s ({n / elapsed:.0f} records/s)")
        if n:
            write_png(args.out, overlay_grid(ds, _demo_picks(ds)))
            colours = zip(kinds_of(ds), itertools.cycle(COLOUR_NAMES), strict=False)
            named = ", ".join(f"{colour}: {kind}" for kind, colour in colours)
            print(f"overlay:     {Path(args.out).resolve()} ({named})")
            _demo_epoch(ds)
    return 0


def _demo_epoch(ds) -> None:
    """What a training loop sees: one epoch of random batches of 8."""
    from .batches import BatchIterator

    with BatchIterator(ds, batch_size=8, seed=0) as it:
        started = time.perf_counter()
        served = sum(len(batch["instance"]) for batch in it)
        seconds = time.perf_counter() - started
    print(
        f"epoch:       {len(it)} random batches of 8, {served} records in "
        f"{seconds:.3f} s ({served / seconds:,.0f} records/s)"
    )


def _dropped_csv(store: str, given: str | None) -> Path:
    if given is not None:
        return Path(given)
    if "://" in store and not store.startswith("file://"):
        return Path("dropped.csv")
    # Beside the store, named after it: out.zarr -> out.dropped.csv
    local = Path(store.removeprefix("file://")).resolve()
    return local.with_name(local.name.removesuffix(".zarr") + ".dropped.csv")


def _refuse_to_overwrite(path: str | Path, ours, what: str) -> None:
    """Refuse, before any work, to write ``path`` when something is there that
    daskmri did not write (``ours(path)`` says whether it did)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DaskmriError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir() or (path.exists() and not ours(path)):
        raise DaskmriError(
            f"{path} already exists and is not {what}; daskmri overwrites only files it "
            "wrote itself, so choose another path (or move that one away)"
        )


def _is_dropped_csv(path: Path) -> bool:
    from .record import DROPPED_COLUMNS

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\r\n") == ",".join(DROPPED_COLUMNS)
    except OSError:
        return False


def _cmd_build(args: argparse.Namespace) -> int:
    from .store import build, read_dropped, refuse_inside_dataset

    csv = _dropped_csv(args.out, args.dropped)
    refuse_inside_dataset(csv, args.root, what="the list of dropped records")
    _refuse_to_overwrite(csv, _is_dropped_csv, "a list of dropped records that daskmri wrote")
    report = build(
        args.root,
        args.out,
        layout=args.layout,
        chunk_size=args.chunk_size,
        labels=args.labels,
        mode=args.mode,
        progress=True,
        exclude=args.exclude,
        **_fitting(args),
        **_where(args.scheduler),
    )
    lost = read_dropped(args.out)
    lost.to_csv(csv, index=False)
    print(f"store:       {report.store}")
    print(f"records:     {report.records}")
    print(f"dropped:     {report.dropped} (listed in {csv.resolve()})")
    print(
        f"parsed:      {report.parsed_records} records in {report.parsed_chunks} chunks "
        f"({report.reused_chunks} chunks already complete, reused)"
    )
    print(f"time:        {report.seconds:.2f} s")
    return 0


def _report_dataset(args: argparse.Namespace):
    """The dataset of ``daskmri report``: the store ``args.source`` opens, else the
    dataset folder it names, loaded."""
    from .dataset import load_dataset
    from .errors import StoreError
    from .store import open_dataset

    try:
        return open_dataset(args.source)
    except StoreError:
        if (Path(args.source) / "zarr.json").is_file():
            raise  # a store, but not one to open (unfinished, too old): its message says why
    return load_dataset(
        args.source,
        layout=args.layout,
        chunk_size=args.chunk_size,
        labels=args.labels,
        progress=True,
        **_fitting(args),
        **_where(args.scheduler),
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from .reporting import check_out, report

    check_out(args.out)  # a folder it may not write is refused before the data is loaded
    ds = _report_dataset(args)
    summary = report(ds, args.out, size=args.size, progress=True)
    print(f"records:     {summary.records} ({summary.patients} patients)")
    print(f"flagged:     {summary.flagged}")
    print(f"dropped:     {summary.dropped}")
    if summary.carried:
        print(f"verdicts:    {summary.carried} carried over from the report it replaced")
    print(f"time:        {summary.seconds:.2f} s")
    print(f"verdicts:    {summary.verdicts.resolve()}")
    print(f"report:      {summary.index.resolve()}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .store import check

    options = {} if args.exclude is None else {"exclude": args.exclude}
    freshness = check(args.store, args.root, **options)
    print(freshness)
    return 0 if freshness.fresh else 1


def _add_fitting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fit",
        choices=("drop", "pad_or_crop"),
        default=None,
        help="slices of another size: drop them (the default; pad_or_crop with --mixed) "
        "or centre them in the frame",
    )
    parser.add_argument(
        "--spacing",
        type=_millimetres,
        default=None,
        help="resample every slice to this pixel spacing in mm first",
    )


def _millimetres(value: str) -> float:
    try:
        mm = float(value)
    except ValueError:
        mm = float("nan")
    if not mm > 0 or mm == float("inf"):
        raise argparse.ArgumentTypeError(f"spacing must be a positive number of mm, got {value!r}")
    return mm


def _layout_file(value: str) -> Layout | VolumeLayout:
    """A preset's name (:data:`LAYOUTS`), or a JSON file holding ``layout.to_dict()``."""
    if value in LAYOUTS:
        return LAYOUTS[value]
    try:
        with open(value, encoding="utf-8") as fh:
            return layout_from_dict(json.load(fh))
    except (OSError, ValueError, TypeError, KeyError, LayoutError) as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read a layout from {value!r} ({exc}); name a preset "
            f"({', '.join(LAYOUTS)}) or write one with json.dump(layout.to_dict(), file)"
        ) from None


def _verdicts_file(value: str):
    """A verdicts file (``--exclude``), read when the arguments are: a bad one fails
    in one line before any work."""
    from .verdicts import as_exclusion

    try:
        return as_exclusion(value)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(" ".join(str(exc).split())) from None


def _add_exclude(parser: argparse.ArgumentParser, what: str | None = None) -> None:
    """``--exclude``: ``what`` the command does with the excluded records; None for
    ``check``, which checks against the file."""
    described = (
        "check against this verdicts.csv (default: the one the store was built with, read again)"
        if what is None
        else f"a verdicts.csv from `daskmri report`: {what} the records whose verdict is "
        "'exclude' (listed as dropped, 'excluded by VERDICTS_CSV')"
    )
    parser.add_argument(
        "--exclude", type=_verdicts_file, default=None, metavar="VERDICTS_CSV", help=described
    )


def _add_layout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        type=_layout_file,
        default=SUNNYBROOK,
        help=f"a preset ({', '.join(LAYOUTS)}; default sunnybrook) or a JSON file of "
        "layout.to_dict()",
    )
    parser.add_argument(
        "--labels",
        default="any",
        help="any (default: labelled slices or frames), all, or a contour kind's name "
        "(i, o: Sunnybrook's aliases)",
    )


def _add_scheduler(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        type=_scheduler_choice,
        help=f"one of {', '.join(SCHEDULERS)} or a scheduler address tcp://host:port",
    )


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="write the QC report: HTML pages of every record's outlines and flags"
    )
    p.add_argument(
        "source", metavar="ROOT_OR_STORE", help="a store of `daskmri build`, or a dataset folder"
    )
    p.add_argument("--out", required=True, help="folder: new, empty, or an earlier report")
    p.add_argument("--size", type=_int_from(16), default=160, help="thumbnail size in pixels")
    _add_scheduler(p)
    p.add_argument("--chunk-size", type=_positive, default=64, help="records per chunk (a folder)")
    _add_layout(p)
    _add_fitting(p)
    p.set_defaults(func=_cmd_report)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="daskmri",
        description="MRI slices and contours as a chunked xarray Dataset, built with Dask.",
    )
    parser.add_argument("--version", action="version", version=f"daskmri {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="list the records of a dataset folder (reads no pixels)")
    p.add_argument("root", help="dataset folder (in the --layout layout)")
    _add_layout(p)
    p.add_argument("--max-problems", type=_count, default=20, help="problems to print")
    _add_exclude(p, "leave out")
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser(
        "demo", help="load a dataset (synthetic if no ROOT) and write an overlay PNG"
    )
    p.add_argument("root", nargs="?", help="dataset folder; a synthetic one when omitted")
    p.add_argument("--out", default="daskmri-demo.png", help="overlay PNG to write")
    _add_scheduler(p)
    p.add_argument("--chunk-size", type=_positive, default=64, help="records per chunk")
    _add_layout(p)
    p.add_argument("--max-problems", type=_count, default=10, help="dropped records to print")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="a synthetic dataset of mixed sizes and spacings, fitted with pad_or_crop",
    )
    _add_fitting(p)
    _add_exclude(p, "leave out")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "build", help="parse a dataset folder into a Zarr store (resumes an unfinished build)"
    )
    p.add_argument("root", help="dataset folder (in the --layout layout)")
    p.add_argument("--out", required=True, help="Zarr store: a path or an fsspec URL")
    _add_scheduler(p)
    p.add_argument("--chunk-size", type=_positive, default=64, help="records per chunk")
    _add_layout(p)
    p.add_argument(
        "--mode",
        choices=("resume", "update", "overwrite"),
        default="resume",
        help="resume (default): create or finish; update: re-parse what changed; "
        "overwrite: rebuild",
    )
    p.add_argument("--dropped", help="CSV of dropped records (default: beside the store)")
    _add_fitting(p)
    _add_exclude(p, "leave out of the store")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "check", help="say whether a store is complete and up to date (exit 1 if stale)"
    )
    p.add_argument("store", help="Zarr store made by `daskmri build`")
    p.add_argument("root", nargs="?", help="dataset folder (default: the one it was built from)")
    _add_exclude(p)
    p.set_defaults(func=_cmd_check)

    _add_report(sub)

    p = sub.add_parser("synth", help="write a synthetic dataset (Sunnybrook layout, or volumes)")
    p.add_argument("out", help="folder to write")
    p.add_argument(
        "--layout",
        choices=("sunnybrook", *PRESETS),
        default="sunnybrook",
        help="sunnybrook (default: DICOM slices and contour files) or a volume preset",
    )
    p.add_argument("--patients", type=_positive, default=3)
    p.add_argument("--frames", type=_positive, default=10, help="frames per cine (volumes)")
    p.add_argument("--slices", type=_positive, default=20, help="slices per patient")
    p.add_argument("--shape", type=_shape, default=(256, 256), help="ROWSxCOLUMNS")
    p.add_argument("--seed", type=_count, default=0)
    p.set_defaults(func=_cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daskmri`` command line; return the exit status.

    Examples
    --------
    >>> import tempfile
    >>> main(["synth", tempfile.mkdtemp(), "--patients", "1", "--slices", "2", "--shape", "32x32"])
    ... # doctest: +ELLIPSIS
    wrote 1 patients x 2 slices to ...
    0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if hasattr(args, "labels"):
        choices = args.layout.label_choices()
        if args.labels not in choices:
            shown = ", ".join(map(repr, choices))
            parser.error(
                f"argument --labels: invalid choice: {args.labels!r} (choose from {shown})"
            )
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ReaderError:
        raise  # a bug in daskmri's reader: its traceback is what a report needs
    except (DaskmriError, OSError) as exc:
        # What a user can cause (a bad folder, a refused path, a cluster that is not
        # there) is one line; a bug still shows its traceback.
        print(f"daskmri: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daskmri: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
