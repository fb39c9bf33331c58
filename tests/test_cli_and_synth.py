from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zlib

import numpy as np
import pydicom
import pytest

import daskmri
from daskmri import synth
from daskmri.cli import main


def tree_digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_png(path) -> np.ndarray:
    """Decode the PNGs that daskmri writes (8-bit RGB, filter 0) to check them."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert zlib.crc32(kind + body) == crc
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8:10] == b"\x08\x02"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


class TestSynth:
    def test_same_seed_same_bytes(self, tmp_path):
        a = synth.make_dataset(tmp_path / "a", patients=2, slices=4, shape=(32, 40), seed=3)
        b = synth.make_dataset(tmp_path / "b", patients=2, slices=4, shape=(32, 40), seed=3)
        c = synth.make_dataset(tmp_path / "c", patients=2, slices=4, shape=(32, 40), seed=4)
        assert tree_digest(a) == tree_digest(b)
        assert tree_digest(a) != tree_digest(c)
        assert tree_digest(a).keys() == tree_digest(c).keys()

    def test_files_are_valid_mr_dicom(self, synth_root):
        ds = pydicom.dcmread(synth_root / "dicoms" / "SYN0002" / "3.dcm")
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.MRImageStorage
        assert ds.Modality == "MR" and ds.PatientID == "SYN0002" and ds.InstanceNumber == 3
        assert [float(v) for v in ds.PixelSpacing] == [1.25, 1.25]
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, -1024.0)
        assert "RescaleSlope" not in pydicom.dcmread(synth_root / "dicoms" / "SYN0001" / "3.dcm")
        assert ds.pixel_array.shape == (48, 64)

    def test_dcmdump_accepts_the_files(self, synth_root):
        dcmdump = pytest.importorskip("shutil").which("dcmdump")
        if dcmdump is None:
            pytest.skip("dcmdump (Debian package dcmtk) is not installed")
        out = subprocess.run(
            [dcmdump, str(synth_root / "dicoms" / "SYN0001" / "2.dcm")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "(0010,0020) LO [SYN0001]" in out.stdout and "E:" not in out.stderr

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="at least one patient"):
            synth.make_dataset(tmp_path, patients=0)
        with pytest.raises(ValueError, match="too small"):
            synth.make_dataset(tmp_path, shape=(8, 8))


class TestCli:
    def test_scan_summary(self, damaged_root, capsys):
        (damaged_root / "dicoms" / "SYN0001" / "2.dcm").unlink()
        assert main(["scan", str(damaged_root)]) == 0
        out = capsys.readouterr().out
        assert "patients:    2" in out
        assert "records:     16 (labels='any')" in out
        assert "icontour:    12" in out and "ocontour:    8" in out
        assert "problems:    1" in out and "IM-0001-0002-icontour-manual.txt has no DICOM" in out

    def test_demo_on_a_folder(self, damaged_root, tmp_path, capsys):
        (damaged_root / "dicoms" / "SYN0002" / "3.dcm").write_bytes(b"")
        png = tmp_path / "overlay.png"
        assert main(["demo", str(damaged_root), "--out", str(png), "--scheduler", "sync"]) == 0
        out = capsys.readouterr().out
        assert "records:     15 (2 patients)" in out
        assert "dropped:     1" in out and "empty file" in out
        assert "records/s" in out
        assert "epoch:       2 random batches of 8, 15 records" in out
        picture = read_png(png)
        # 8 tiles of 48x64 in a 4-wide grid with 2-pixel gaps.
        assert picture.shape == (2 * 48 + 2, 4 * 64 + 3 * 2, 3)
        red, green = daskmri.plot.PALETTE[:2]
        assert (picture == red).all(axis=2).sum() > 50  # icontour, the first kind
        assert (picture == green).all(axis=2).sum() > 50
        assert "(red: icontour, green: ocontour)" in out

    def test_demo_of_mixed_sizes_pads_and_crops_into_one_frame(self, tmp_path, capsys):
        png = tmp_path / "mixed.png"
        assert main(["demo", "--mixed", "--out", str(png), "--scheduler", "sync"]) == 0
        out = capsys.readouterr().out
        assert "of mixed sizes (fitted into 256x256)" in out
        assert "records:     80 (4 patients)" in out and "dropped:     0" in out
        picture = read_png(png)
        assert picture.shape == (2 * 256 + 2, 4 * 256 + 3 * 2, 3)
        # The second tile is a padded 192x224 slice: its padding is one flat value.
        tile = picture[:256, 258 : 258 + 256]
        assert (tile[:32] == tile[0, 0]).all() and (tile[:, :16] == tile[0, 0]).all()

    def test_build_passes_fit_and_spacing(self, tmp_path, capsys):
        root = daskmri.synth.make_dataset(
            tmp_path / "d", patients=2, slices=4, shape=[(32, 32), (40, 24)], spacing=1.0
        )
        store = tmp_path / "ds.zarr"
        argv = ["build", str(root), "--out", str(store), "--scheduler", "sync"]
        assert main([*argv, "--fit", "pad_or_crop", "--spacing", "0.5"]) == 0
        ds = daskmri.open_dataset(store)
        assert ds.sizes["record"] == 6 and ds.sizes["y"] == ds.sizes["x"] == 64
        assert set(ds.source_rows.values.tolist()) == {32, 40}
        assert (ds.row_scale == 2.0).all() and ds.attrs["spacing"] == [0.5, 0.5]

    def test_demo_without_data_uses_a_synthetic_set(self, tmp_path, monkeypatch):
        work, temp = tmp_path / "work", tmp_path / "temp"
        work.mkdir()
        temp.mkdir()
        monkeypatch.chdir(work)
        # A separate process, as a user runs it, with a temp folder of its own to watch.
        out = subprocess.run(
            [sys.executable, "-m", "daskmri.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=240,
            env=os.environ | {"TMPDIR": str(temp)},
        )
        assert out.returncode == 0, out.stderr
        assert "made a synthetic dataset of 4 patients x 30 slices, deleted" in out.stdout
        assert "records:     80 (4 patients)" in out.stdout and "dropped:     0" in out.stdout
        assert read_png(work / "daskmri-demo.png").shape[2] == 3
        # It prints no path that it deletes, and leaves nothing in the temp folder.
        assert str(temp) not in out.stdout + out.stderr
        assert list(temp.iterdir()) == []
        assert [p.name for p in work.iterdir()] == ["daskmri-demo.png"]

    def test_synth_command(self, tmp_path, capsys):
        assert (
            main(
                [
                    "synth",
                    str(tmp_path / "s"),
                    "--patients",
                    "2",
                    "--slices",
                    "3",
                    "--shape",
                    "20x30",
                ]
            )
            == 0
        )
        assert daskmri.read_dicom(tmp_path / "s" / "dicoms" / "SYN0002" / "3.dcm").shape == (20, 30)

    def test_errors_are_one_line_with_status_2(self, tmp_path, capsys):
        assert main(["scan", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("daskmri: error: no link file at") and err.count("\n") == 1
        with pytest.raises(SystemExit):
            main(["demo", "--scheduler", "fast"])
        assert "neither a local scheduler" in capsys.readouterr().err


#: Each option's bad values, and what the one line must say.
BAD_ARGUMENTS = [
    (["build", "R", "--out", "X", "--chunk-size", "0"], "at least 1, got '0'"),
    (["build", "R", "--out", "X", "--chunk-size", "-3"], "at least 1, got '-3'"),
    (["build", "R", "--out", "X", "--chunk-size", "many"], "got 'many'"),
    (["build", "R", "--out", "X", "--chunk-size", "2.5"], "got '2.5'"),
    (["build", "R", "--out", "X", "--labels", "some"], "invalid choice: 'some'"),
    (["build", "R", "--out", "X", "--mode", "append"], "invalid choice: 'append'"),
    (["build", "R", "--out", "X", "--scheduler", "fast"], "neither a local scheduler"),
    (["build", "R"], "--out"),
    (["build"], "required"),
    (["demo", "--chunk-size", "0"], "at least 1"),
    (["demo", "--spacing", "0"], "positive number of mm, got '0'"),
    (["build", "R", "--out", "X", "--spacing", "nan"], "positive number of mm"),
    (["build", "R", "--out", "X", "--fit", "stretch"], "invalid choice: 'stretch'"),
    (["demo", "--labels", "x"], "invalid choice"),
    (["demo", "--max-problems", "-1"], "at least 0"),
    (["demo", "--scheduler", "gpu"], "neither a local scheduler"),
    (["scan", "R", "--labels", "both"], "invalid choice"),
    (["scan", "R", "--max-problems", "ten"], "got 'ten'"),
    (["scan"], "required"),
    (["check"], "required"),
    (["synth", "OUT", "--patients", "0"], "at least 1, got '0'"),
    (["synth", "OUT", "--slices", "-1"], "at least 1, got '-1'"),
    (["synth", "OUT", "--shape", "8x8"], "from 16x16 to 4096x4096"),
    (["synth", "OUT", "--shape", "9999999x9999999"], "from 16x16 to 4096x4096"),
    (["build", "R", "--out", "X", "--scheduler", "host:abc"], "neither a local scheduler"),
    (["build", "R", "--out", "X", "--scheduler", ":"], "neither a local scheduler"),
    (["synth", "OUT", "--shape", "big"], "look like 256x256"),
    (["synth", "OUT", "--seed", "-1"], "at least 0"),
    (["synth"], "required"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["scan", "R", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize(("argv", "says"), BAD_ARGUMENTS, ids=lambda v: " ".join(v)[:40])
def test_every_argument_error_is_one_line_with_status_2(argv, says, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("R", "X", "OUT") else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("daskmri") and ": error: " in captured.err
    assert says in captured.err
    # Nothing was made from the bad call.
    assert list(tmp_path.iterdir()) == []


def test_show_versions():
    buffer = io.StringIO()
    daskmri.show_versions(file=buffer)
    text = buffer.getvalue()
    assert f"daskmri: {daskmri.__version__}" in text
    assert "pydicom: " in text and "cpu_count: " in text


def test_library_logging_is_silent_by_default():
    import logging

    handlers = logging.getLogger("daskmri").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
