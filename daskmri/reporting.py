"""Stage report: the QC report of issue 27, a folder of static HTML and ``verdicts.csv``.

Public as :func:`daskmri.report`; the module is not named ``report``, which would
hide the function once imported.

:func:`report` runs one task per record chunk (:func:`daskmri.qc.report_tasks`) where
the pixels are: it flags the chunk's records and draws each one's thumbnail, and
only the flags table and the compressed PNG files come back. The client keeps a
bounded window of chunks in flight (:func:`completed`), writes each PNG as it
arrives, and writes a patient's page, and its rows of ``verdicts.csv``, once all of
its chunks are in: only one small summary per patient stays for the index.

The folder is daskmri's only when daskmri made it: a report is written into a new
or empty folder, or over a report written before (its marker file
:data:`MARKER` lists the files it wrote, and only those are removed). The
verdicts a person filled in are carried over to the new ``verdicts.csv``, and a
report that would lose one is refused.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import json
import logging
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .errors import DaskmriError
from .plot import PALETTE, shrink_factor
from .qc import IDENTITY, MAD_SCALE, area_outliers, report_tasks
from .schema import dropped, kinds_of
from .verdicts import filled_verdicts, write_verdicts

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["MARKER", "ReportSummary", "check_out", "completed", "flag_words", "report"]

log = logging.getLogger(__name__)

#: The file that makes a folder a daskmri report: it lists every file the report wrote.
MARKER = ".daskmri-report.json"

VERDICTS = "verdicts.csv"
INDEX = "index.html"
#: The verdicts being written; renamed over ``verdicts.csv`` once complete, so that an
#: interrupted report never loses the verdicts of the one before.
PARTIAL = "verdicts.csv.partial"


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`report` wrote.

    Attributes
    ----------
    out, index, verdicts : pathlib.Path
        The folder, its ``index.html`` and its ``verdicts.csv``.
    patients, records, flagged, dropped : int
        Patients (with a kept or a dropped record), kept records, flagged records,
        dropped records.
    carried : int
        Verdicts carried over from the ``verdicts.csv`` of the report it replaced.
    seconds : float
        Wall time.
    """

    out: Path
    index: Path
    verdicts: Path
    patients: int
    records: int
    flagged: int
    dropped: int
    carried: int
    seconds: float


@dataclass(frozen=True)
class _Plan:
    """What the client knows before any pixel is read (coordinates and attributes)."""

    kinds: tuple[str, ...]
    contains: tuple[tuple[str, str], ...]
    chunk_patients: tuple[tuple[str, ...], ...]
    chunks_of: dict[str, int]
    names: dict[str, str]
    lost: dict[str, list[dict]]
    keys: tuple[np.ndarray, np.ndarray]
    thumb: tuple[int, int]

    def files(self) -> Iterator[str]:
        """Every file the report writes, relative to its folder."""
        yield from (INDEX, VERDICTS, PARTIAL)
        yield from (f"patients/{name}.html" for name in self.names.values())
        for patient, instance in zip(*self.keys, strict=True):
            yield f"img/{self.names[str(patient)]}/{int(instance)}.png"


def safe_name(patient: str) -> str:
    """A file name for ``patient``: its own when it is plain, else a cleaned one with a
    digest (so two patients never share one).

    Examples
    --------
    >>> safe_name("SC-HF-I-1"), safe_name("a/b")
    ('SC-HF-I-1', 'a_b-3ec69c85')
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", patient)[:64].lstrip(".")
    if name == patient and name:
        return name
    return f"{name or 'patient'}-{hashlib.sha1(patient.encode()).hexdigest()[:8]}"


def _dropped_rows(ds) -> dict[str, list[dict]]:
    """The dropped records by patient, as ``verdicts.csv`` rows."""
    lost: dict[str, list[dict]] = defaultdict(list)
    for row in dropped(ds).itertuples(index=False):
        instance = row.instance
        whole = instance is not None and not (isinstance(instance, float) and np.isnan(instance))
        patient = row.patient_id if isinstance(row.patient_id, str) else ""
        lost[patient].append(
            {
                "patient_id": patient,
                "instance": int(instance) if whole else "",
                "path": row.path if isinstance(row.path, str) else "",
                "dropped": row.reason,
                "flags": "",
            }
        )
    return dict(lost)


def _plan(ds, size: int) -> _Plan:
    """The report's plan from ``ds``'s coordinates: the patients of each chunk."""
    kinds = kinds_of(ds)
    layout = json.loads(ds.attrs.get("layout", "{}"))
    patients = np.asarray(ds.patient_id.values).astype(str)
    chunks = tuple(ds.chunks["record"]) if ds.chunks else (ds.sizes["record"],)
    ends = np.cumsum(chunks)
    chunk_patients = tuple(
        tuple(dict.fromkeys(patients[end - n : end].tolist()))
        for n, end in zip(chunks, ends, strict=True)
    )
    chunks_of: dict[str, int] = defaultdict(int)
    for names in chunk_patients:
        for patient in names:
            chunks_of[patient] += 1
    lost = _dropped_rows(ds)
    everyone = sorted({*chunks_of, *lost})
    factor = shrink_factor((ds.sizes["y"], ds.sizes["x"]), size)
    return _Plan(
        kinds=tuple(kinds),
        contains=tuple(tuple(pair) for pair in layout.get("contains", ())),
        chunk_patients=chunk_patients,
        chunks_of=dict(chunks_of),
        names={patient: safe_name(patient) for patient in everyone},
        lost=lost,
        keys=(patients, np.asarray(ds.instance.values)),
        thumb=(-(-ds.sizes["y"] // factor), -(-ds.sizes["x"] // factor)),
    )


# -- the folder -------------------------------------------------------------------


def _refuse(out: Path, why: str) -> DaskmriError:
    return DaskmriError(
        f"{out} {why}; daskmri writes a report only into a new or empty folder, or over "
        "a report it wrote itself: pass another out (--out)"
    )


def _earlier_files(out: Path) -> list[str]:
    """The files the report already in ``out`` wrote ([] for a new or empty folder);
    any other folder is refused."""
    if out.exists() and not out.is_dir():
        raise _refuse(out, "is a file, not a folder")
    if not out.exists():
        return []
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise _refuse(out, f"is not empty and is not a daskmri report (it has no {MARKER})")
        return []
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _refuse(out, f"has a {MARKER} that cannot be read ({exc})") from None
    outside = [f for f in files if not isinstance(f, str) or not _inside(f)]
    if outside:
        raise _refuse(out, f"has a {MARKER} that names files outside it ({outside[0]!r})")
    return files


def check_out(out: str | os.PathLike[str]) -> None:
    """Refuse ``out`` now, before any work, if :func:`report` would refuse it.

    Parameters
    ----------
    out : str or os.PathLike
        The report's folder.

    Raises
    ------
    DaskmriError
        If ``out`` is a file, or a folder that is neither empty nor a report daskmri
        wrote (its marker, :data:`MARKER`, missing or unreadable).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> mine = pathlib.Path(tempfile.mkdtemp())
    >>> check_out(mine / "qc")  # new: fine
    >>> _ = (mine / "notes.txt").write_text("mine")
    >>> check_out(mine)
    Traceback (most recent call last):
    ...
    daskmri.errors.DaskmriError: ... is not empty and is not a daskmri report ...
    """
    _earlier_files(Path(out))


def _inside(relative: str) -> bool:
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts


def _filled_verdicts(path: Path) -> dict[tuple[str, Any], str]:
    """The verdicts a person filled in ``path``, by ``(patient_id, instance)``."""
    if not path.is_file():
        return {}
    try:
        return filled_verdicts(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DaskmriError(
            f"cannot read the verdicts in {path} ({exc}); move it away to keep it, or "
            "pass another out (--out)"
        ) from None


def _carried(out: Path, earlier: list[str], plan: _Plan) -> dict[tuple[str, Any], str]:
    """The filled verdicts of the report being replaced; refuses if one would be lost."""
    if VERDICTS not in earlier:
        return {}
    path = out / VERDICTS
    filled = _filled_verdicts(path)
    if not filled:
        return filled
    known = set(zip(plan.keys[0].tolist(), plan.keys[1].tolist(), strict=True))
    known.update((r["patient_id"], r["instance"]) for rows in plan.lost.values() for r in rows)
    gone = [key for key in filled if key not in known]
    if gone:
        patient, instance = gone[0]
        raise DaskmriError(
            f"{len(gone)} verdict(s) filled in {path} are for records this report does not "
            f"have (the first: patient {patient!r}, instance {instance!r}); daskmri never "
            "drops a verdict you gave: move that file away to keep it, or pass another out "
            "(--out)"
        )
    return filled


def _linked(out: Path, relatives: Iterable[str]) -> str | None:
    """The first folder inside ``out`` on the way to one of ``relatives`` that is a
    symbolic link (to a folder of the user's), or None."""
    seen: set[PurePosixPath] = set()
    for relative in relatives:
        for folder in reversed(PurePosixPath(relative).parents):
            if str(folder) != "." and folder not in seen:
                seen.add(folder)
                if (out / folder).is_symlink():
                    return folder.as_posix()
    return None


def _clear(out: Path, earlier: list[str], planned: set[str]) -> None:
    """Remove the earlier report's files (not its verdicts, replaced last), refuse to
    write over a file it did not list, and write the new marker. Nothing is removed or
    written through a folder the user replaced with a link: its files are the user's."""
    link = _linked(out, [*earlier, *planned])
    if link is not None:
        raise _refuse(
            out,
            f"has {link} as a link to another folder, whose files daskmri did not write "
            f"(remove the link, or move the folder it points to into {out})",
        )
    folders = set()
    for relative in earlier:
        path = out / relative
        if relative != VERDICTS and (path.is_file() or path.is_symlink()):
            path.unlink()
        folders.update(p for p in PurePosixPath(relative).parents if str(p) != ".")
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: it holds something of the user's
            (out / folder).rmdir()
    out.mkdir(parents=True, exist_ok=True)
    for folder, _, names in os.walk(out):
        for name in names:
            relative = Path(folder, name).relative_to(out).as_posix()
            if relative in planned and not (relative == VERDICTS and VERDICTS in earlier):
                raise _refuse(out, f"holds {relative}, which its report did not write")
    partial = out / (MARKER + ".partial")
    text = json.dumps({"written_by": f"daskmri {__version__}", "files": sorted(planned)})
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, out / MARKER)


# -- running the chunks -------------------------------------------------------------


def completed(
    tasks: Iterable, *, window: int, client: Any = None, scheduler: str | None = None
) -> Iterator[tuple[int, Any]]:
    """Compute ``tasks``, at most ``window`` at once, yielding each result as it is done.

    ``tasks`` is read lazily: a task is taken from it only when one of the
    ``window`` places is free, so the client holds at most ``window`` results
    that it has not yet handed on.

    Parameters
    ----------
    tasks : iterable of dask.delayed.Delayed
        The tasks, in order.
    window : int
        The most tasks submitted and not yet yielded.
    client : distributed.Client, optional
        Run on this cluster, handing results on in the order they finish;
        else in batches of ``window`` with ``dask.compute``.
    scheduler : str, optional
        ``dask.compute``'s scheduler without a client (default: dask's own choice).

    Returns
    -------
    iterator of (int, object)
        Each task's position in ``tasks`` and its result.

    Raises
    ------
    ValueError
        If ``window`` is less than 1.

    Examples
    --------
    >>> import dask
    >>> tasks = [dask.delayed(pow)(2, k) for k in range(5)]
    >>> list(completed(tasks, window=2, scheduler="sync"))
    [(0, 1), (1, 2), (2, 4), (3, 8), (4, 16)]
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    numbered = enumerate(tasks)
    if client is not None:
        return _on_cluster(numbered, window, client)
    return _in_batches(numbered, window, scheduler)


def _in_batches(numbered: Iterator, window: int, scheduler: str | None) -> Iterator:
    import dask

    options = {"scheduler": scheduler} if scheduler else {}
    while batch := list(islice(numbered, window)):
        results = dask.compute(*(task for _, task in batch), **options)
        yield from zip((position for position, _ in batch), results, strict=True)


def _on_cluster(numbered: Iterator, window: int, client: Any) -> Iterator:
    from distributed import as_completed

    running = as_completed()
    positions = {}

    def submit() -> None:
        for position, task in islice(numbered, 1):
            future = client.compute(task)
            positions[future.key] = position
            running.add(future)

    for _ in range(window):
        submit()
    for future in running:
        result = future.result()
        position = positions.pop(future.key)
        future.release()  # its bytes are the client's now; the worker may drop them
        del future
        yield position, result
        # Only now: the result handed on was one of the window.
        submit()


@contextlib.contextmanager
def _cluster_of(ds, client: Any) -> Iterator[Any]:
    """The client of the cluster that holds ``ds``'s pixels (or ``client``), or None."""
    futures = []
    if "distributed" in sys.modules:
        from distributed import futures_of

        futures = futures_of(ds)
    if not futures and client is None:
        yield None
        return
    from .execute.cluster import client_for_futures

    reached = client_for_futures(futures, client)
    try:
        yield reached.client
    finally:
        if reached.made:
            reached.client.close()


# -- the pages ---------------------------------------------------------------------


def flag_words(row: dict, *, kinds: Iterable[str], contains: Iterable[tuple[str, str]]) -> list:
    """The flags of one record's row of :func:`daskmri.qc.area_outliers`, in words.

    Parameters
    ----------
    row : dict
        A row of the flags table (``empty_<kind>``, ``leak_<inner>``,
        ``border_<kind>``, ``outlier_<kind>`` and ``zscore_<kind>``).
    kinds : iterable of str
        The mask kinds, in the layout's order.
    contains : iterable of (str, str)
        The layout's ``(inner, outer)`` pairs.

    Returns
    -------
    list of str
        Empty masks, then leaks, then masks on the border, then area outliers.

    Examples
    --------
    >>> row = {"empty_lv": True, "leak_lv": 0, "border_myo": True, "outlier_myo": True,
    ...        "zscore_myo": 5.123}
    >>> flag_words(row, kinds=["lv", "myo"], contains=[("lv", "myo")])
    ['lv empty', 'myo touches the border', 'myo area outlier (z = 5.1)']
    """
    kinds, words = list(kinds), []
    words += [f"{kind} empty" for kind in kinds if row.get(f"empty_{kind}")]
    for inner, outer in contains:
        if row.get(f"leak_{inner}", 0) > 0:
            words.append(f"{inner} leaks out of {outer} ({int(row[f'leak_{inner}'])} px)")
    words += [f"{kind} touches the border" for kind in kinds if row.get(f"border_{kind}")]
    words += [
        f"{kind} area outlier (z = {row[f'zscore_{kind}']:.1f})"
        for kind in kinds
        if row.get(f"outlier_{kind}")
    ]
    return words


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
tr.flagged td:first-child{border-left:4px solid #c00}
.montage{display:flex;flex-wrap:wrap;gap:8px}
.record{margin:0;padding:4px;background:#fff;border:1px solid #ccc;width:min-content}
.record.flagged{border:2px solid #c00;background:#fff3f3}
.record img{display:block;image-rendering:pixelated}
figcaption{font-size:12px;min-width:128px}
.flags{color:#b00;display:block}
.only-flagged .record:not(.flagged){display:none}
.swatch{font-weight:bold}
"""

TOGGLE = (
    '<label><input type="checkbox" id="only-flagged"> show only flagged records</label>\n'
    "<script>document.getElementById('only-flagged').addEventListener('change',"
    "function(e){document.body.classList.toggle('only-flagged',e.target.checked);});</script>"
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _legend(kinds: Iterable[str]) -> str:
    parts = [
        f'<span class="swatch" style="color:rgb{PALETTE[k % len(PALETTE)]}">&#9632; '
        f"{html.escape(kind)}</span>"
        for k, kind in enumerate(kinds)
    ]
    return "Outlines: " + ", ".join(parts)


def _table(header: list[str], rows: Iterable[list[str]], classes: Iterable[str] = ()) -> str:
    """An HTML table; the cells are HTML already."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    classes = iter(classes)
    body = "".join(
        f'<tr class="{next(classes, "")}">' + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _dropped_table(rows: list[dict], *, patients: bool, names: dict[str, str]) -> str:
    def patient(row: dict) -> str:
        name = names.get(row["patient_id"])
        text = html.escape(row["patient_id"] or "(no patient)")
        return f'<a href="patients/{name}.html">{text}</a>' if name else text

    cells = [
        ([patient(row)] if patients else [])
        + [html.escape(str(row[key])) for key in ("instance", "path", "dropped")]
        for row in rows
    ]
    header = (["patient"] if patients else []) + ["instance", "path", "reason"]
    return _table(header, cells)


def _identity(row: dict) -> str:
    text = f"{row['patient_id']} / {row['instance']}"
    if "frame" in row:
        text += f" (frame {row['frame']}, slice {row['slice']}, {row.get('phase') or '-'})"
    return html.escape(text)


def _figure(row: dict, words: list[str], name: str, thumb: tuple[int, int]) -> str:
    flagged = " flagged" if words else ""
    flags = "; ".join(words)
    return (
        f'<figure class="record{flagged}" data-patient="{html.escape(row["patient_id"])}" '
        f'data-instance="{row["instance"]}">'
        f'<img src="../img/{name}/{row["instance"]}.png" width="{thumb[1]}" '
        f'height="{thumb[0]}" alt="{_identity(row)}">'
        f'<figcaption>{_identity(row)}<span class="flags">{html.escape(flags)}</span>'
        "</figcaption></figure>"
    )


def _patient_page(patient: str, rows: list[dict], words: list, lost: list, plan: _Plan) -> str:
    name = plan.names[patient]
    flagged = sum(1 for w in words if w)
    figures = "\n".join(
        _figure(row, w, name, plan.thumb) for row, w in zip(rows, words, strict=True)
    )
    body = (
        '<p><a href="../index.html">&larr; all patients</a></p>'
        f"<h1>Patient {html.escape(patient or '(no patient)')}</h1>"
        f"<p>{len(rows)} records, {flagged} flagged, {len(lost)} dropped. "
        f"{_legend(plan.kinds)}.</p>\n{TOGGLE}\n"
        f'<div class="montage">\n{figures}\n</div>'
    )
    if lost:
        body += "<h2>Dropped records</h2>" + _dropped_table(lost, patients=False, names={})
    return _page(f"QC: {patient}", body)


#: The flags counted on the index, by the prefix of their column.
FLAG_TYPES = {"empty": "empty_", "leak": "leak_", "border": "border_", "outlier": "outlier_"}


class _Writer:
    """Writes the thumbnails as chunks arrive, and a patient's page once it is whole;
    keeps only a summary per patient finished, and the tables of those unfinished."""

    def __init__(self, out: Path, plan: _Plan, threshold: float) -> None:
        self.out, self.plan, self.threshold = out, plan, threshold
        self.parts: dict[str, list] = defaultdict(list)
        self.left = dict(plan.chunks_of)
        self.summaries: list[dict] = []

    def rows(self, results: Iterable[tuple[int, Any]], bar: Any) -> Iterator[dict]:
        """``verdicts.csv`` rows, a patient at a time, as ``results`` complete them."""
        for position, (table, pngs) in results:
            self._thumbnails(table, pngs)
            table = table.assign(position=position)
            for patient, part in table.groupby("patient_id", sort=False):
                self.parts[str(patient)].append(part)
            for patient in self.plan.chunk_patients[position]:
                self.left[patient] -= 1
                if not self.left[patient]:
                    yield from self._finish(patient)
            bar.update(1)
        for patient in sorted(set(self.plan.lost) - set(self.plan.chunks_of)):
            yield from self._finish(patient)

    def _thumbnails(self, table, pngs: list[bytes]) -> None:
        for patient, instance, png in zip(
            table["patient_id"], table["instance"], pngs, strict=True
        ):
            folder = self.out / "img" / self.plan.names[str(patient)]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{int(instance)}.png").write_bytes(png)

    def _finish(self, patient: str) -> Iterator[dict]:
        import pandas as pd

        parts = self.parts.pop(patient, [])
        rows: list[dict] = []
        if parts:
            table = pd.concat(parts).sort_values("position", kind="stable")
            rows = area_outliers(table, threshold=self.threshold).to_dict("records")
        words = [flag_words(r, kinds=self.plan.kinds, contains=self.plan.contains) for r in rows]
        for row in rows:
            row["patient_id"], row["instance"] = str(row["patient_id"]), int(row["instance"])
        lost = self.plan.lost.get(patient, [])
        page = _patient_page(patient, rows, words, lost, self.plan)
        path = self.out / "patients" / f"{self.plan.names[patient]}.html"
        path.parent.mkdir(exist_ok=True)
        path.write_text(page, encoding="utf-8")
        self.summaries.append(self._summary(patient, rows, words, len(lost)))
        for row, w in zip(rows, words, strict=True):
            yield {**{k: row.get(k, "") for k in IDENTITY}, "flags": "; ".join(w)}
        yield from lost

    def _summary(self, patient: str, rows: list[dict], words: list, lost: int) -> dict:
        counts = {
            label: sum(
                any(v > 0 if isinstance(v, (int, np.integer)) else bool(v) for v in _of(r, prefix))
                for r in rows
            )
            for label, prefix in FLAG_TYPES.items()
        }
        return {
            "patient": patient,
            "records": len(rows),
            "labelled": {k: sum(bool(r[f"has_{k}"]) for r in rows) for k in self.plan.kinds},
            "flagged": sum(1 for w in words if w),
            "counts": counts,
            "dropped": lost,
        }


def _of(row: dict, prefix: str) -> list:
    """The values of ``row``'s flag columns that start with ``prefix``."""
    return [value for key, value in row.items() if key.startswith(prefix)]


RULE = (
    "Flags: <b>empty</b>, a kind labelled on the record has no pixel; <b>leak</b>, "
    "pixels of a kind outside the kind that should contain it (its holes filled); "
    "<b>border</b>, a mask touches the image's outer rows or columns; <b>outlier</b>, "
    "an area whose modified z-score (Iglewicz and Hoaglin: {scale} &times; (area &minus; "
    "median) / MAD, over the patient's records labelled with that kind) is above "
    "{threshold}."
)


def _index_page(summaries: list[dict], plan: _Plan, threshold: float) -> str:
    summaries = sorted(summaries, key=lambda s: s["patient"])
    kinds = list(plan.kinds)
    header = ["patient", "records", *kinds, "flagged", *FLAG_TYPES, "dropped"]
    cells = [
        [
            f'<a href="patients/{plan.names[s["patient"]]}.html">'
            f"{html.escape(s['patient'] or '(no patient)')}</a>",
            str(s["records"]),
            *(str(s["labelled"][k]) for k in kinds),
            str(s["flagged"]),
            *(str(s["counts"][label]) for label in FLAG_TYPES),
            str(s["dropped"]),
        ]
        for s in summaries
    ]
    classes = ["flagged" if s["flagged"] else "" for s in summaries]
    lost = [row for patient in sorted(plan.lost) for row in plan.lost[patient]]
    records = sum(s["records"] for s in summaries)
    flagged = sum(s["flagged"] for s in summaries)
    body = (
        f"<h1>QC report</h1><p>{len(summaries)} patients, {records} records, "
        f"{flagged} flagged, {len(lost)} dropped. "
        f'Verdicts: <a href="{VERDICTS}">{VERDICTS}</a>. {_legend(kinds)}.</p>'
        f"<p>{RULE.format(scale=MAD_SCALE, threshold=threshold)}</p>"
        "<h2>Patients</h2>"
        "<p>Columns per kind: records labelled with it; per flag: records with it.</p>"
        + _table(header, cells, classes)
        + "<h2>Dropped records</h2>"
        + (_dropped_table(lost, patients=True, names=plan.names) if lost else "<p>None.</p>")
    )
    return _page("QC report", body)


def report(
    ds: xr.Dataset,
    out: str | os.PathLike[str],
    *,
    size: int = 160,
    threshold: float = 3.5,
    window: int | None = None,
    client: Any = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> ReportSummary:
    """Write the QC report of ``ds``: static HTML pages, thumbnails and ``verdicts.csv``.

    One task per record chunk runs where the pixels are (on the cluster that holds
    a persisted dataset, else on dask's scheduler): it flags each record
    (:func:`daskmri.qc.record_flags`) and draws its thumbnail, each kind's outline
    in its own colour (:func:`daskmri.plot.thumbnail`), as a PNG file. Only the
    flags and the PNG bytes come back, at most ``window`` chunks at a time; each
    PNG is written as it arrives, and each patient's page once its records are
    all in, with the area outliers of that patient
    (:func:`daskmri.qc.area_outliers`). The pages open from disk, with no network.

    ``out`` gets ``index.html`` (one row per patient: records per kind, flags,
    dropped records; then every dropped record with its reason),
    ``patients/<patient>.html`` (a montage of the patient's records, the flags in
    words under each, then its dropped records), ``img/<patient>/<instance>.png``,
    ``verdicts.csv`` (:mod:`daskmri.verdicts`: one row per record, kept or dropped,
    with an empty ``verdict`` column) and :data:`MARKER`, the list of those files.

    Parameters
    ----------
    ds : xarray.Dataset
        A daskmri dataset (:func:`daskmri.load_dataset`, :func:`daskmri.open_dataset`,
        or a selection of one).
    out : str or os.PathLike
        A new or empty folder, or one that holds a report daskmri wrote: then only
        the files that report listed are replaced, and the verdicts filled in its
        ``verdicts.csv`` are carried over by ``(patient_id, instance)``.
    size : int
        The longest side of a thumbnail, in pixels (shrunk by a whole factor).
    threshold : float
        The modified z-score above which an area is an outlier.
    window : int, optional
        The most chunks computed and not yet written at once (default: twice the
        cluster's threads, or twice this machine's cores); the client holds at most
        this many chunks' PNG files.
    client : distributed.Client or str, optional
        A client, or address, of the scheduler to run on (default: the dataset's
        own when it is persisted on a cluster, else dask's scheduler).
    scheduler : str, optional
        Dask's local scheduler without a cluster (``"sync"``, ``"threads"``).
    progress : bool
        Show a progress bar over the chunks on stderr.

    Returns
    -------
    ReportSummary
        The paths written and the counts.

    Raises
    ------
    DaskmriError
        Before anything is written: if ``out`` is a file, or a folder that is not
        empty and holds no daskmri report; or if a verdict filled in its
        ``verdicts.csv`` is for a record this report does not have.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=2, slices=4, shape=(32, 32))
    >>> ds = daskmri.load_dataset(root, chunk_size=2, scheduler="sync")
    >>> summary = daskmri.report(ds, tempfile.mkdtemp() + "/qc", scheduler="sync")
    >>> summary.patients, summary.records, summary.index.name
    (2, 6, 'index.html')
    """
    started = time.perf_counter()
    out = Path(out)
    plan = _plan(ds, size)
    earlier = _earlier_files(out)
    carried = _carried(out, earlier, plan)
    _clear(out, earlier, set(plan.files()))
    tasks = report_tasks(ds, size=size)
    writer = _Writer(out, plan, threshold)
    with _cluster_of(ds, client) as cluster, _bar(len(tasks), progress) as bar:
        if window is None:
            threads = sum(cluster.nthreads().values()) if cluster else os.cpu_count() or 1
            window = 2 * max(1, threads)
        results = completed(tasks, window=window, client=cluster, scheduler=scheduler)
        written = write_verdicts(writer.rows(results, bar), out / PARTIAL, verdicts=carried)
    os.replace(out / PARTIAL, out / VERDICTS)
    (out / INDEX).write_text(_index_page(writer.summaries, plan, threshold), encoding="utf-8")
    lost = sum(len(rows) for rows in plan.lost.values())
    log.info(
        "report of %d records in %s (%d rows in %s)", ds.sizes["record"], out, written, VERDICTS
    )
    return ReportSummary(
        out=out,
        index=out / INDEX,
        verdicts=out / VERDICTS,
        patients=len(writer.summaries),
        records=int(ds.sizes["record"]),
        flagged=sum(s["flagged"] for s in writer.summaries),
        dropped=lost,
        carried=len(carried),
        seconds=time.perf_counter() - started,
    )


def _bar(total: int, enabled: bool):
    from .execute.progress import progress_bar

    return progress_bar(total, enabled)
