from __future__ import annotations

import contextlib
import os
import shutil
import sys

import numpy as np
import pytest

import daskmri
from daskmri import SERIES, ContourKind, Layout, LayoutError, scan
from daskmri.plan import plan_chunks
from daskmri.testing import assert_records_equal

from .conftest import PATIENTS, SLICES


def expected_instances(labels: str) -> list[int]:
    keep = {
        "any": lambda k: k % 2 == 0 or k % 3 == 0,
        "i": lambda k: k % 2 == 0,
        "o": lambda k: k % 3 == 0,
        "all": lambda k: True,
    }[labels]
    return [k for k in range(1, SLICES + 1) if keep(k)]


@pytest.mark.parametrize("labels", ["any", "i", "o", "all"])
def test_scan_synthetic_labels(synth_root, labels):
    table, problems = scan(synth_root, labels=labels)
    instances = expected_instances(labels)
    assert list(table.columns) == [
        "patient_id",
        "original_id",
        "instance",
        "image_path",
        "icontour_path",
        "ocontour_path",
        "problem",
    ]
    assert table.patient_id.tolist() == [
        p for p, _ in daskmri.synth.patient_ids(PATIENTS) for _ in instances
    ]
    assert table.instance.tolist() == instances * PATIENTS
    assert table.instance.dtype == np.int64
    assert table.problem.isna().all() and problems == ()
    assert "problems" not in table.attrs
    assert (table.icontour_path.notna() == (table.instance % 2 == 0)).all()
    assert (table.ocontour_path.notna() == (table.instance % 3 == 0)).all()
    for row in table.itertuples():
        assert row.image_path.endswith(
            os.path.join("dicoms", row.patient_id, f"{row.instance}.dcm")
        )
        if row.icontour_path:
            assert row.icontour_path.endswith(f"IM-0001-{row.instance:04d}-icontour-manual.txt")


def test_scan_real_sample_counts(real_root):
    table, problems = scan(real_root)
    assert len(table) == 56
    assert table.icontour_path.notna().sum() == 56
    assert table.ocontour_path.notna().sum() == 28
    assert len(scan(real_root, labels="i").table) == 56
    assert len(scan(real_root, labels="o").table) == 28
    assert len(scan(real_root, labels="all").table) == 700
    assert table.groupby("patient_id").size().to_dict() == {
        "SCD0000101": 18,
        "SCD0000201": 18,
        "SCD0000301": 20,
    }
    assert table.problem.isna().all() and problems == ()


def test_scan_reads_no_pixel_data(damaged_root):
    before = scan(damaged_root, labels="all").table
    for path in (damaged_root / "dicoms").glob("*/*.dcm"):
        path.write_bytes(b"garbage, not DICOM")
    after, problems = scan(damaged_root, labels="all")
    assert after.equals(before) and problems == ()


def test_link_csv_with_bom_and_crlf(damaged_root):
    before = scan(damaged_root).table
    link = damaged_root / "link.csv"
    link.write_bytes(b"\xef\xbb\xbf" + link.read_bytes().replace(b"\n", b"\r\n"))
    after = scan(damaged_root).table
    assert after.equals(before)


#: Paths under watch by the audit hook, and what was opened or listed under them.
_WATCH: dict[str, list[str]] = {}


def _audit(event: str, args: tuple) -> None:
    if not _WATCH or event not in ("open", "os.listdir", "os.scandir", "glob.glob"):
        return
    path = args[0] if args else None
    if isinstance(path, int) or path is None:
        return
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    for prefix, hits in _WATCH.items():
        if real == prefix or real.startswith(prefix + os.sep):
            hits.append(f"{event} {os.fsdecode(path)}")


@contextlib.contextmanager
def watching(folder) -> list[str]:
    """Record every file opened and folder listed under ``folder`` in this process
    (through symlinks too), by a ``sys.addaudithook`` hook."""
    if not getattr(sys, "_daskmri_audit", False):
        sys.addaudithook(_audit)  # hooks cannot be removed: one for the session
        sys._daskmri_audit = True
    hits: list[str] = []
    _WATCH[os.path.realpath(folder)] = hits
    try:
        yield hits
    finally:
        _WATCH.clear()


def test_never_reads_outside_root(damaged_root, tmp_path):
    # A decoy study beside the root that link.csv and symlinks try to reach.
    decoy = tmp_path / "decoy"
    daskmri.synth.make_dataset(decoy, patients=1, slices=4, shape=(48, 64), seed=99)
    link = damaged_root / "link.csv"
    with open(link, "a") as fh:
        fh.write("../../decoy/dicoms/SYN0001,../../decoy/contourfiles/SYN-C-1\n")
        fh.write(f"{decoy}/dicoms/SYN0001,SYN-C-1\n")
    # A patient folder that is a symlink out of the root...
    shutil.rmtree(damaged_root / "dicoms" / "SYN0002")
    os.symlink(decoy / "dicoms" / "SYN0001", damaged_root / "dicoms" / "SYN0002")
    # ... and a contour file that is one.
    target = (
        damaged_root
        / "contourfiles"
        / "SYN-C-1"
        / "i-contours"
        / "IM-0001-0004-icontour-manual.txt"
    )
    target.unlink()
    os.symlink(decoy / "contourfiles" / "SYN-C-1" / "i-contours" / target.name, target)
    # ... and a DICOM file that is one.
    (damaged_root / "dicoms" / "SYN0001" / "8.dcm").unlink()
    os.symlink(
        decoy / "dicoms" / "SYN0001" / "2.dcm", damaged_root / "dicoms" / "SYN0001" / "8.dcm"
    )

    with watching(decoy) as hits:
        table, problems = scan(damaged_root)
        ds = daskmri.load_dataset(damaged_root, scheduler="sync")
        daskmri.build(damaged_root, tmp_path / "ds.zarr", scheduler="sync")
        stored = daskmri.open_dataset(tmp_path / "ds.zarr", root=damaged_root).compute()
    # Not one file of the decoy study was opened, nor its folders listed.
    assert hits == []
    with watching(decoy) as hits:  # and the watch itself works
        daskmri.read_dicom(decoy / "dicoms" / "SYN0001" / "2.dcm")
    assert len(hits) == 1
    for column in ("image_path", "icontour_path", "ocontour_path"):
        paths = table[column].dropna()
        assert not paths.str.contains("decoy").any()
    reasons = [p.reason for p in problems]
    assert sum("would leave the root folder" in r for r in reasons) == 2
    assert any("folder is a link that leaves the root" in r for r in reasons)
    assert sum("file is a link that leaves the root" in r for r in reasons) == 2
    # Patient 1 lost its instance-4 i-contour, so instance 4 is no longer a record.
    assert 4 not in table[table.patient_id == "SYN0001"].instance.tolist()

    assert_records_equal(stored, ds)
    # SYN0002's DICOM folder was the outside link: its records are dropped, not read.
    assert set(ds.patient_id.values) == {"SYN0001"}
    lost = daskmri.dropped(ds)
    records = lost[lost.instance.notna()]
    assert (records.patient_id == "SYN0002").sum() == len(expected_instances("any"))
    assert lost.reason.str.contains("leave").sum() == 5
    # The DICOM that was a link out is not listed, so its contours have no DICOM.
    eight = lost[(lost.patient_id == "SYN0001") & (lost.instance == 8)]
    assert "has no DICOM" in eight.reason.iloc[0]
    decoy_images = {daskmri.read_dicom(p).tobytes() for p in decoy.glob("dicoms/*/*.dcm")}
    assert not any(image.tobytes() in decoy_images for image in ds.image.values)


def test_contour_without_dicom_is_a_problem_record(damaged_root):
    (damaged_root / "dicoms" / "SYN0001" / "6.dcm").unlink()
    table = scan(damaged_root).table
    row = table[(table.patient_id == "SYN0001") & (table.instance == 6)].iloc[0]
    assert row.image_path is None
    assert "has no DICOM" in row.problem and "IM-0001-0006" in row.problem


def test_link_file_problems(damaged_root):
    link = damaged_root / "link.csv"
    text = link.read_text()
    link.write_text(text + "SYN0001,SYN-C-1\n,\n")
    reasons = [p.reason for p in scan(damaged_root).problems]
    assert any("listed twice" in r for r in reasons)
    assert any("empty or would leave" in r for r in reasons)

    link.write_text("subject,annotation\nSYN0001,SYN-C-1\n")
    with pytest.raises(LayoutError, match=r"columns \['subject', 'annotation'\].*patient_column"):
        scan(damaged_root)
    link.unlink()
    with pytest.raises(LayoutError, match="no link file"):
        scan(damaged_root)


def test_scan_returns_problems_beside_the_table_and_filtering_keeps_them(damaged_root):
    (damaged_root / "dicoms" / "SYN0001" / "notes.dcm").write_text("x")
    scanned = scan(damaged_root)
    table, problems = scanned
    assert isinstance(scanned, daskmri.Scan) and scanned.table is table
    (problem,) = problems
    assert isinstance(problem, daskmri.Problem)
    assert (problem.patient_id, problem.instance) == ("SYN0001", None)
    assert problem.row() == {
        "patient_id": "SYN0001",
        "original_id": "SYN-C-1",
        "instance": None,
        "path": str(damaged_root / "dicoms" / "SYN0001" / "notes.dcm"),
        "reason": "DICOM file name does not match the layout's pattern",
    }
    # pandas drops or keeps attrs as it likes; the problems are not in them.
    assert "problems" not in table.attrs
    filtered = table[table.patient_id == "SYN0002"]
    plan = plan_chunks(filtered, problems)
    assert plan.dropped == (problem.row(),)
    assert {r.patient_id for c in plan.chunks for r in c} == {"SYN0002"}
    whole, parts = plan_chunks(scanned), plan_chunks(table, problems)
    assert (whole.chunks, whole.dropped) == (parts.chunks, parts.dropped)


def test_unmatched_file_names_are_reported(damaged_root):
    (damaged_root / "dicoms" / "SYN0001" / "notes.dcm").write_text("x")
    problems = scan(damaged_root).problems
    assert [p.reason for p in problems] == ["DICOM file name does not match the layout's pattern"]


def to_series_layout(src, dst):
    """Rearrange a Sunnybrook-layout tree into the SERIES preset's layout."""
    with open(dst / "subjects.csv", "w") as fh:
        fh.write("annotation_set,subject,site\n")
        for patient_id, original_id in daskmri.synth.patient_ids(PATIENTS):
            fh.write(f"{original_id},{patient_id},somewhere\n")
            series = dst / "dicoms" / patient_id / "series-001"
            series.mkdir(parents=True)
            for path in (src / "dicoms" / patient_id).glob("*.dcm"):
                shutil.copy(path, series / f"IM-0001-{int(path.stem):04d}.dcm")
            for kind in ("i-contours", "o-contours"):
                out = dst / "contourfiles" / original_id / "reader-A" / kind
                out.mkdir(parents=True)
                for path in (src / "contourfiles" / original_id / kind).glob("*.txt"):
                    shutil.copy(path, out / path.name)


def test_second_preset_gives_the_same_dataset(synth_root, tmp_path):
    to_series_layout(synth_root, tmp_path)
    series_table, problems = scan(tmp_path, layout=SERIES)
    plain_table = scan(synth_root).table
    cols = ["patient_id", "original_id", "instance"]
    assert series_table[cols].equals(plain_table[cols])
    assert series_table.image_path.str.contains("series-001/IM-0001-").all()
    assert problems == ()
    a = daskmri.load_dataset(tmp_path, layout=SERIES, scheduler="sync")
    b = daskmri.load_dataset(synth_root, scheduler="sync")
    assert_records_equal(a, b)


def test_layout_is_validated():
    with pytest.raises(LayoutError, match=r"must contain '\{patient_id\}'"):
        Layout(dicom_glob="dicoms/*.dcm")
    with pytest.raises(LayoutError, match="needs a named group"):
        Layout(dicom_regex=r"\d+\.dcm")
    with pytest.raises(LayoutError, match="must stay inside the root"):
        ContourKind("icontour", glob="../{original_id}/*.txt", regex="(?P<instance>1)")
    with pytest.raises(LayoutError, match="not a valid regex"):
        Layout(dicom_regex="(")
    with pytest.raises(ValueError, match="labels must be one of"):
        scan(".", labels="inner")
    layout = Layout(name="x", link_file="pairs.csv")
    assert Layout.from_dict(layout.to_dict()) == layout
    with pytest.raises(AttributeError):
        layout.link_file = "other.csv"
