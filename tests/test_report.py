"""daskmri.report: the QC report's pages, thumbnails and verdicts.csv against per-record
numpy references, planted faults caught on exactly their records, the folder's
safety rules on real files, the same report on a cluster, the CLI, and the bounded
window of chunks in flight."""

from __future__ import annotations

import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import daskmri
from daskmri import qc, reporting
from daskmri.cli import main
from daskmri.errors import DaskmriError
from daskmri.plot import PALETTE, png_bytes
from daskmri.verdicts import read_verdicts

PIL = pytest.importorskip("PIL.Image", reason="Pillow (installed with matplotlib) decodes PNGs")

LEAK = ("SYN0001", 6)
BORDER = ("SYN0002", 3)
BROKEN = ("SYN0001", 2)


# -- references ----------------------------------------------------------------------


def decode(path_or_bytes) -> np.ndarray:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with PIL.open(source) as picture:
        assert picture.mode == "RGB"
        return np.asarray(picture)


def reference_thumbnail(image: np.ndarray, masks: list, size: int) -> np.ndarray:
    """One record's thumbnail, pixel by pixel: block means, block 'any', percentile
    window, then each outline (a pixel with a 4-neighbour outside) in its colour."""
    rows, cols = image.shape
    f = max(1, -(-max(rows, cols) // size))
    out_r, out_c = -(-rows // f), -(-cols // f)
    small = np.zeros((out_r, out_c))
    shrunk = [None if m is None else np.zeros((out_r, out_c), bool) for m in masks]
    for r in range(out_r):
        for c in range(out_c):
            rr = [min(r * f + k, rows - 1) for k in range(f)]  # padded with the edge
            cc = [min(c * f + k, cols - 1) for k in range(f)]
            small[r, c] = image[np.ix_(rr, cc)].astype(np.float64).mean()
            for m, s in zip(masks, shrunk, strict=True):
                if m is not None:
                    s[r, c] = m[r * f : r * f + f, c * f : c * f + f].any()
    lo, hi = np.percentile(small, [1, 99])
    grey = (np.clip((small - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for k in reversed(range(len(shrunk))):
        m = shrunk[k]
        if m is None:
            continue
        for r, c in zip(*np.nonzero(m), strict=True):
            around = [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
            if any(not (0 <= a < out_r and 0 <= b < out_c) or not m[a, b] for a, b in around):
                rgb[r, c] = PALETTE[k]
    return rgb


def verdict_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def flagged_rows(rows: list[dict]) -> dict[tuple[str, int], str]:
    return {(r["patient_id"], int(r["instance"])): r["flags"] for r in rows if r["flags"]}


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("href", "src")]


def broken_links(out: Path) -> list[str]:
    broken = []
    for page in out.rglob("*.html"):
        parser = Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.found:
            if not link.startswith("data:") and not (page.parent / link).is_file():
                broken.append(f"{page.name}: {link}")
    return broken


def listing(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    return daskmri.synth.make_dataset(
        tmp_path_factory.mktemp("report") / "sb", patients=2, slices=12, shape=(64, 64)
    )


@pytest.fixture(scope="module")
def planted_root(clean_root, tmp_path_factory):
    """An i-contour pushed out of its o-contour, an o-contour on the border, and a
    DICOM file that is not one."""
    root = shutil.copytree(clean_root, tmp_path_factory.mktemp("report") / "planted")
    path = root / "contourfiles/SYN-C-1/i-contours/IM-0001-0006-icontour-manual.txt"
    np.savetxt(path, np.loadtxt(path) + np.array([12.0, 0.0]), fmt="%.6f")
    path = root / "contourfiles/SYN-C-2/o-contours/IM-0001-0003-ocontour-manual.txt"
    np.savetxt(path, [[0.0, 0.0], [20.0, 0.0], [20.0, 20.0], [0.0, 20.0]], fmt="%.6f")
    (root / "dicoms/SYN0001/2.dcm").write_bytes(b"not a dicom")
    return root


@pytest.fixture(scope="module")
def planted(planted_root):
    return daskmri.load_dataset(planted_root, chunk_size=5, scheduler="sync")


@pytest.fixture(scope="module")
def planted_report(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "qc"
    return daskmri.report(planted, out, scheduler="sync", window=2)


# -- the PNG encoder and the thumbnails ----------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_png_bytes_decode_to_exactly_the_pixels_encoded(seed):
    rng = np.random.default_rng(seed)
    shape = (*rng.integers(1, 70, size=2), 3)
    rgb = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if seed % 2:
        rgb[: shape[0] // 2] = 0  # runs that compress
    np.testing.assert_array_equal(decode(png_bytes(rgb, level=seed % 10)), rgb)
    with pytest.raises(ValueError, match="rows, columns, 3"):
        png_bytes(rgb[..., 0])


def test_thumbnails_equal_a_per_record_reference(planted, planted_report):
    data = planted.compute()
    kinds = ["icontour", "ocontour"]
    for k in range(data.sizes["record"]):
        record = data.isel(record=k)
        masks = [record[kind].values if record[f"has_{kind}"] else None for kind in kinds]
        path = planted_report.out / f"img/{record.patient_id.item()}/{record.instance.item()}.png"
        expected = reference_thumbnail(record.image.values, masks, size=160)
        np.testing.assert_array_equal(decode(path), expected, err_msg=str(path))


def test_a_large_image_is_shrunk_below_size(tmp_path):
    root = daskmri.synth.make_dataset(tmp_path / "d", patients=1, slices=3, shape=(200, 90))
    ds = daskmri.load_dataset(root, scheduler="sync").compute()
    out = daskmri.report(ds, tmp_path / "qc", size=64, scheduler="sync").out
    record = ds.isel(record=0)
    masks = [record[kind].values for kind in ("icontour", "ocontour")]
    picture = decode(out / f"img/SYN0001/{record.instance.item()}.png")
    assert picture.shape == (50, 23, 3)  # a factor of 4, the last block padded
    np.testing.assert_array_equal(picture, reference_thumbnail(record.image.values, masks, 64))


# -- flags, pages and verdicts ---------------------------------------------------------


def test_each_planted_fault_is_flagged_on_exactly_its_record(planted_report):
    rows = verdict_rows(planted_report.verdicts)
    flags = flagged_rows(rows)
    assert set(flags) == {LEAK, BORDER}
    assert flags[BORDER] == "ocontour touches the border"
    leak = int(flags[LEAK].split("(")[1].split()[0])
    assert flags[LEAK] == f"icontour leaks out of ocontour ({leak} px)" and leak > 0
    assert planted_report.flagged == 2
    page = (planted_report.out / "patients/SYN0001.html").read_text()
    assert f'class="record flagged" data-patient="SYN0001" data-instance="{LEAK[1]}"' in page
    assert page.count('class="record flagged"') == 1


def test_flags_equal_the_qc_tables_in_words(planted, planted_report):
    table = qc.area_outliers(qc.flags(planted))
    expected = {
        (r["patient_id"], int(r["instance"])): "; ".join(
            reporting.flag_words(
                r, kinds=["icontour", "ocontour"], contains=[("icontour", "ocontour")]
            )
        )
        for r in table.to_dict("records")
    }
    kept = [r for r in verdict_rows(planted_report.verdicts) if not r["dropped"]]
    assert {(r["patient_id"], int(r["instance"])): r["flags"] for r in kept} == expected


def test_verdicts_have_a_row_per_record_and_the_dropped_one(planted, planted_report):
    rows = verdict_rows(planted_report.verdicts)
    keys = [(r["patient_id"], int(r["instance"])) for r in rows]
    kept = list(zip(planted.patient_id.values, planted.instance.values.tolist(), strict=True))
    assert sorted(keys) == sorted([*kept, BROKEN]) and len(set(keys)) == len(keys)
    assert all(r["verdict"] == "" for r in rows)
    (lost,) = [r for r in rows if r["dropped"]]
    assert (lost["patient_id"], int(lost["instance"])) == BROKEN
    assert "not a DICOM file" in lost["dropped"] and lost["path"].endswith("2.dcm")
    assert read_verdicts(planted_report.verdicts) == []
    index = (planted_report.out / "index.html").read_text()
    assert "not a DICOM file" in index and "SYN0001/2.dcm" in index
    assert "not a DICOM file" in (planted_report.out / "patients/SYN0001.html").read_text()
    assert planted_report.dropped == 1


def test_every_link_of_every_page_resolves_to_a_file(planted_report):
    assert broken_links(planted_report.out) == []
    pages = {p.name for p in (planted_report.out / "patients").iterdir()}
    assert pages == {"SYN0001.html", "SYN0002.html"}
    marker = json.loads((planted_report.out / reporting.MARKER).read_text())
    written = set(listing(planted_report.out)) - {reporting.MARKER}
    assert written <= set(marker["files"])


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    root = daskmri.synth.make_volume_dataset(tmp_path_factory.mktemp("report") / "acdc")
    return daskmri.load_dataset(root, layout=daskmri.ACDC, chunk_size=7, scheduler="sync")


def test_a_volume_dataset_reports_an_empty_mask_and_an_area_outlier(acdc, tmp_path):
    ds = acdc.copy()
    ds["lv"] = ds.lv.where((ds.patient_id != "patient001") | (ds.instance != 3), False)
    index = int(np.flatnonzero(ds.has_myo.values & (ds.patient_id.values == "patient002"))[2])
    big = np.zeros((ds.sizes["y"], ds.sizes["x"]), bool)
    big[8:-8, 8:-8] = True
    myo = ds.myo.values.copy()
    myo[index] = big
    ds["myo"] = (ds.myo.dims, myo)
    summary = daskmri.report(ds, tmp_path / "qc", scheduler="sync")
    rows = verdict_rows(summary.verdicts)
    flags = flagged_rows(rows)
    outlier = ("patient002", int(ds.instance.values[index]))
    assert set(flags) == {("patient001", 3), outlier}
    assert flags[("patient001", 3)] == "lv empty"
    assert flags[outlier].startswith("myo area outlier (z = ")
    assert all(r["frame"] != "" and r["slice"] != "" for r in rows)
    assert {r["phase"] for r in rows} <= {"ED", "ES"}
    record = ds.isel(record=index).compute()
    masks = [record[k].values if record[f"has_{k}"] else None for k in ("lv", "myo", "rv")]
    picture = decode(summary.out / f"img/patient002/{outlier[1]}.png")
    np.testing.assert_array_equal(picture, reference_thumbnail(record.image.values, masks, 160))
    assert broken_links(summary.out) == []


def test_the_real_sample(real_root, tmp_path):
    ds = daskmri.load_dataset(real_root, chunk_size=16, scheduler="sync")
    summary = daskmri.report(ds, tmp_path / "qc", scheduler="threads")
    rows = verdict_rows(summary.verdicts)
    assert len(rows) == ds.sizes["record"] + len(daskmri.dropped(ds))
    table = qc.area_outliers(qc.flags(ds))
    assert summary.flagged == int(table["flagged"].sum())
    assert len(list((tmp_path / "qc/img").rglob("*.png"))) == ds.sizes["record"]
    assert broken_links(summary.out) == []


# -- the folder ------------------------------------------------------------------------


def test_a_folder_that_is_not_a_report_is_refused_untouched(planted, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(DaskmriError, match=r"not empty and is not a daskmri report.*another out"):
        daskmri.report(planted, tmp_path / "mine")
    assert listing(tmp_path / "mine") == {"notes.txt": b"keep me"}
    (tmp_path / "file").write_text("a file")
    with pytest.raises(DaskmriError, match="is a file"):
        daskmri.report(planted, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "a file"


def test_an_empty_folder_is_used_and_a_report_rewritten_removes_only_its_files(planted, tmp_path):
    out = tmp_path / "qc"
    out.mkdir()
    daskmri.report(planted, out, scheduler="sync")
    (out / "notes.txt").write_text("mine")
    (out / "img/SYN0002/mine.txt").write_text("mine too")
    one = planted.sel(record=planted.patient_id == "SYN0001")
    daskmri.report(one, out, scheduler="sync")
    files = set(listing(out))
    assert {"notes.txt", "img/SYN0002/mine.txt"} <= files  # the user's, kept
    assert not any(f.startswith("img/SYN0002/") and f.endswith(".png") for f in files)
    assert "patients/SYN0002.html" not in files
    assert len([r for r in verdict_rows(out / "verdicts.csv") if r["patient_id"] == "SYN0002"]) == 0
    assert broken_links(out) == []


def test_nothing_is_removed_or_written_through_a_folder_made_a_link(planted, tmp_path):
    """A user who replaced the report's image folder with a link to a folder of their
    own (holding files of the report's names): the rewrite is refused before anything is
    removed or written, and their folder is as it was."""
    out = tmp_path / "qc"
    daskmri.report(planted, out, scheduler="sync")
    mine = tmp_path / "photos"
    shutil.move(out / "img", mine)  # the user's now: the same names, their own bytes
    for png in mine.rglob("*.png"):
        png.write_bytes(b"the user's own picture")
    (out / "img").symlink_to(mine, target_is_directory=True)
    before, report_before = listing(mine), listing(out)
    with pytest.raises(DaskmriError, match=r"has img as a link to another folder"):
        daskmri.report(planted, out, scheduler="sync")
    assert listing(mine) == before and listing(out) == report_before


def test_filled_verdicts_are_carried_over_and_never_lost(planted, tmp_path):
    out = tmp_path / "qc"
    daskmri.report(planted, out, scheduler="sync")
    rows = verdict_rows(out / "verdicts.csv")
    for row in rows:
        if (row["patient_id"], int(row["instance"])) in (LEAK, ("SYN0002", 4)):
            row["verdict"] = "exclude" if row["instance"] == str(LEAK[1]) else "keep"
    with open(out / "verdicts.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = daskmri.report(planted, out, scheduler="sync")
    assert summary.carried == 2
    assert read_verdicts(out / "verdicts.csv") == [LEAK]
    kept = {
        (r["patient_id"], r["instance"]): r["verdict"] for r in verdict_rows(out / "verdicts.csv")
    }
    assert kept[("SYN0002", "4")] == "keep"
    before = listing(out)
    one = planted.sel(record=planted.patient_id == "SYN0002")  # LEAK's record is gone
    with pytest.raises(
        DaskmriError, match=r"1 verdict\(s\) filled in .*patient 'SYN0001', instance 6"
    ):
        daskmri.report(one, out, scheduler="sync")
    assert listing(out) == before  # refused before anything was touched


def test_a_marker_cannot_remove_or_overwrite_what_it_did_not_write(planted, tmp_path):
    out = tmp_path / "qc"
    out.mkdir()
    (tmp_path / "outside.txt").write_text("outside")
    (out / reporting.MARKER).write_text(json.dumps({"files": ["../outside.txt"]}))
    with pytest.raises(DaskmriError, match="names files outside it"):
        daskmri.report(planted, out)
    assert (tmp_path / "outside.txt").read_text() == "outside"
    (out / reporting.MARKER).write_text(json.dumps({"files": []}))
    (out / "img/SYN0002").mkdir(parents=True)
    (out / "img/SYN0002/3.png").write_bytes(b"my picture")
    with pytest.raises(DaskmriError, match=r"holds img/SYN0002/3\.png, which its report did not"):
        daskmri.report(planted, out)
    assert (out / "img/SYN0002/3.png").read_bytes() == b"my picture"
    (out / reporting.MARKER).write_text("{not json")
    with pytest.raises(DaskmriError, match="cannot be read"):
        daskmri.report(planted, out)


# -- where it runs -----------------------------------------------------------------------


def test_a_dataset_persisted_on_a_cluster_gives_the_same_report(planted_root, client, tmp_path):
    sync = daskmri.report(
        daskmri.load_dataset(planted_root, chunk_size=5, scheduler="sync"),
        tmp_path / "sync",
        scheduler="sync",
    )
    ds = daskmri.load_dataset(planted_root, chunk_size=5, client=client)
    from distributed import futures_of

    assert futures_of(ds)
    summary = daskmri.report(ds, tmp_path / "cluster", window=2)
    ours, theirs = listing(sync.out), listing(summary.out)
    verdicts = "verdicts.csv"
    assert sorted(verdict_rows(summary.verdicts), key=str) == sorted(
        verdict_rows(sync.verdicts), key=str
    )
    ours.pop(verdicts), theirs.pop(verdicts)  # rows in the order patients completed
    assert theirs == ours


def counted(tasks, pulled):
    for task in tasks:
        pulled.append(task)
        yield task


@pytest.mark.parametrize("where", ["sync", "threads", "cluster"])
def test_no_more_than_the_window_of_chunks_is_in_flight(where, request):
    import dask

    tasks = [dask.delayed(lambda k: k * k, pure=False)(k) for k in range(11)]
    pulled, results = [], []
    options = {"client": request.getfixturevalue("client")} if where == "cluster" else {}
    options.setdefault("scheduler", None if where == "cluster" else where)
    for position, result in reporting.completed(counted(tasks, pulled), window=3, **options):
        # Taken from the iterator and not yet handed on: at most the window.
        assert len(pulled) - len(results) <= 3
        results.append((position, result))
    assert sorted(results) == [(k, k * k) for k in range(11)]
    with pytest.raises(ValueError, match="window"):
        reporting.completed(tasks, window=0)


def test_the_report_runs_through_the_window_it_is_given(planted, tmp_path, monkeypatch):
    seen = []
    real = reporting.completed

    def spy(tasks, **options):
        seen.append(options["window"])
        return real(tasks, **options)

    monkeypatch.setattr(reporting, "completed", spy)
    daskmri.report(planted, tmp_path / "qc", window=2, scheduler="sync")
    assert seen == [2]


# -- the command line ---------------------------------------------------------------------


def test_the_cli_on_a_folder_and_on_a_store(planted_root, tmp_path, capsys):
    assert (
        main(["report", str(planted_root), "--out", str(tmp_path / "a"), "--scheduler", "sync"])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"report:      {(tmp_path / 'a/index.html').resolve()}" in printed
    assert "flagged:     2" in printed and "dropped:     1" in printed
    store = tmp_path / "ds.zarr"
    daskmri.build(planted_root, store, chunk_size=5, scheduler="sync")
    assert main(["report", str(store), "--out", str(tmp_path / "b")]) == 0
    assert "flagged:     2" in capsys.readouterr().out
    assert flagged_rows(verdict_rows(tmp_path / "b/verdicts.csv")) == flagged_rows(
        verdict_rows(tmp_path / "a/verdicts.csv")
    )
    assert main(["report", str(store), "--out", str(planted_root)]) == 2
    assert "not a daskmri report" in capsys.readouterr().err


def test_the_cli_refuses_a_folder_it_may_not_write_before_loading(tmp_path, capsys):
    """The out folder is checked first: a refused folder costs no load (the source
    here does not even exist, and the message is about the folder)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["report", str(tmp_path / "no-such-data"), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "not a daskmri report" in err and "no-such-data" not in err
    assert (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 1
