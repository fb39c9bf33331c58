"""Bad data is dropped; bugs are raised. A damaged file drops only its record, on
every path that reads a file (the parse, shape inference, the geometry read, the
RTSTRUCT planes of the scan), even when it comes first; any other exception, from a
user's reader or from daskmri, reaches the caller naming the record, its cause
chained, on every way of running (``on_error="drop"`` makes those rows too)."""

from __future__ import annotations

import logging
import os
import pickle
import re
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataelem import RawDataElement

import daskmri
from daskmri.errors import ContourError, DicomError, ReaderError
from daskmri.testing import assert_records_equal

from .readers import Buggy, OddError

FIRST = ("SYN0001", 2)  # the first labelled slice of the synthetic dataset


@pytest.fixture(scope="module")
def reference(synth_root):
    return daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")


def keys(ds) -> list[tuple[str, int]]:
    return list(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True))


def without(ds, key: tuple[str, int]):
    return ds.isel(record=[k for k, found in enumerate(keys(ds)) if found != key])


def first_dicom(root: Path) -> Path:
    path = Path(daskmri.scan(root).table["image_path"].iloc[0])
    assert (path.parent.name, int(path.stem)) == FIRST
    return path


# -- a bug in a reader is raised, naming the record ----------------------------------


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_a_bug_in_a_reader_is_raised_naming_the_record(synth_root, scheduler):
    reader = Buggy(*FIRST, TypeError, "unsupported operand")
    with pytest.raises(ReaderError) as info:
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler=scheduler, reader=reader)
    error = info.value
    assert "patient SYN0001, instance 2" in str(error)
    assert "TypeError: unsupported operand" in str(error)
    assert "on_error=" in str(error)  # the message names the way out
    assert isinstance(error.__cause__, TypeError)
    assert str(error.__cause__) == "unsupported operand"


def test_a_bug_on_a_cluster_is_raised_with_the_workers_traceback(synth_root, client):
    reader = Buggy(*FIRST, KeyError, "lost")
    with pytest.raises(ReaderError, match="patient SYN0001, instance 2") as info:
        daskmri.load_dataset(synth_root, chunk_size=4, client=client, reader=reader)
    cause = info.value.__cause__
    assert isinstance(cause, KeyError)
    # The traceback does not travel with the exception: its text does, as a note.
    notes = "\n".join(getattr(cause, "__notes__", []))
    assert "Traceback in the worker" in notes
    assert "readers.py" in notes


def test_a_bug_in_local_workers_keeps_the_cause_and_its_traceback(synth_root):
    reader = Buggy(*FIRST, ZeroDivisionError, "division by zero")
    with pytest.raises(ReaderError) as info:
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler="processes", reader=reader)
    cause = info.value.__cause__
    assert isinstance(cause, ZeroDivisionError)  # not loky's text in its place
    assert "readers.py" in "\n".join(getattr(cause, "__notes__", []))


def test_an_exception_that_does_not_unpickle_still_names_the_record(synth_root):
    reader = Buggy(*FIRST, OddError, 7, "checksum")
    with pytest.raises(ReaderError, match="instance 2") as info:
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler="processes", reader=reader)
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeError)
    assert "tests.readers.OddError: odd 7: checksum" in str(cause)


class ImportsThisModule(Buggy):
    """:class:`Buggy`, from this module: a worker that unpickles it imports this
    module, and with it distributed (through what it imports), after daskmri's
    errors. distributed installs tblib's reducers for the exception classes already
    imported, which pickle ``__context__`` and ``__cause__`` as they are."""


def test_a_bug_arrives_whole_where_distributed_installed_its_reducers(synth_root):
    drop = ImportsThisModule(*FIRST, KeyError, "stub")
    daskmri.load_dataset(
        synth_root, chunk_size=4, scheduler="processes", reader=drop, on_error="drop"
    )
    reader = Buggy(*FIRST, OddError, 7, "checksum")
    with pytest.raises(ReaderError, match="instance 2") as info:
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler="processes", reader=reader)
    assert "tests.readers.OddError: odd 7: checksum" in str(info.value.__cause__)


def test_a_bug_stops_a_build_and_the_build_resumes_once_fixed(synth_root, reference, tmp_path):
    store = tmp_path / "ds.zarr"
    reader = Buggy(*FIRST, AttributeError, "'NoneType' object has no attribute 'shape'")
    with pytest.raises(ReaderError, match="instance 2"):
        daskmri.build(synth_root, store, chunk_size=4, scheduler="sync", reader=reader)
    report = daskmri.build(synth_root, store, chunk_size=4, scheduler="sync")
    assert report.dropped == 0
    assert_records_equal(daskmri.open_dataset(store).compute(), reference)


def test_on_error_drop_makes_every_failure_a_row(synth_root, reference):
    reader = Buggy(*FIRST, TypeError, "unsupported operand")
    ds = daskmri.load_dataset(
        synth_root, chunk_size=4, scheduler="processes", reader=reader, on_error="drop"
    )
    lost = daskmri.dropped(ds)
    assert lost[["patient_id", "instance"]].values.tolist() == [list(FIRST)]
    assert lost.reason.tolist() == ["TypeError: unsupported operand"]
    assert_records_equal(ds, without(reference, FIRST))


def test_on_error_is_checked_before_anything_runs(synth_root):
    with pytest.raises(ValueError, match="on_error must be one of"):
        daskmri.load_dataset(synth_root, on_error="ignore")


@pytest.mark.parametrize(
    "error",
    [
        (ContourError, "/c/x.txt", "line 3: 'x y' is not two numbers"),
        (DicomError, "/d/2.dcm", "truncated"),
        (FileNotFoundError, 2, "No such file or directory", "/d/2.dcm"),
        (PermissionError, 13, "Permission denied", "/d/2.dcm"),
    ],
    ids=["ContourError", "DicomError", "FileNotFoundError", "PermissionError"],
)
def test_data_errors_from_a_reader_are_dropped(synth_root, reference, error):
    reader = Buggy(*FIRST, *error)
    ds = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync", reader=reader)
    lost = daskmri.dropped(ds)
    assert lost[["patient_id", "instance"]].values.tolist() == [list(FIRST)]
    assert_records_equal(ds, without(reference, FIRST))


@pytest.mark.parametrize("error", [TimeoutError, ConnectionRefusedError])
def test_a_reader_whose_service_fails_is_not_bad_data(synth_root, error):
    # An OSError that is not about the file: the infrastructure failed, not the record.
    reader = Buggy(*FIRST, error, "the service did not answer")
    with pytest.raises(ReaderError, match=error.__name__):
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync", reader=reader)


def test_a_multi_line_exception_gives_one_line_messages(synth_root):
    reader = Buggy(*FIRST, ValueError, "line one\nline two")
    with pytest.raises(ReaderError) as info:
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync", reader=reader)
    assert "\n" not in str(info.value) and "line one line two" in str(info.value)
    ds = daskmri.load_dataset(
        synth_root, chunk_size=4, scheduler="sync", reader=reader, on_error="drop"
    )
    assert daskmri.dropped(ds).reason.tolist() == ["ValueError: line one line two"]


def test_a_full_shared_memory_is_not_blamed_on_a_record():
    from daskmri.parse import Slots

    slots = Slots("/dev/shm/never-made.slots", 2, (4, 4))
    fd = os.open("/dev/full", os.O_WRONLY)  # every write: no space left on device
    try:
        with pytest.raises(daskmri.DaskmriError, match="free memory in /dev/shm") as info:
            slots.write(fd, 0, np.zeros((4, 4), np.float32), [None, None])
    finally:
        os.close(fd)
    assert isinstance(info.value.__cause__, OSError)


def test_dropped_records_are_logged_at_debug_with_their_exception(synth_root, caplog):
    reader = Buggy(*FIRST, DicomError, "/d/2.dcm", "truncated")
    with caplog.at_level(logging.DEBUG, logger="daskmri.parse"):
        daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync", reader=reader)
    (found,) = [r for r in caplog.records if r.name == "daskmri.parse"]
    assert found.levelno == logging.DEBUG
    assert "patient SYN0001, instance 2" in found.getMessage()
    assert isinstance(found.exc_info[1], DicomError)


def test_reader_error_pickles_with_its_cause_and_where_it_was_raised():
    try:
        {}["missing"]
    except KeyError as exc:
        error = ReaderError("patient P, instance 1 (/d/1.dcm)", exc)
    back = pickle.loads(pickle.dumps(error))
    assert str(back) == str(error)
    assert isinstance(back.__cause__, KeyError)
    assert "test_errors.py" in "\n".join(back.__cause__.__notes__)
    # Printed, the chain shows the cause and then the error naming the record.
    text = "".join(traceback.format_exception(back))
    assert text.index("KeyError") < text.index("ReaderError: reading patient P")


# -- a damaged file that comes first never stops a load ------------------------------


def _raw(path: Path, tag: int, vr: str, value: bytes) -> None:
    """Set ``tag`` to the raw ``value`` bytes, with no validation by pydicom."""
    ds = pydicom.dcmread(path)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(path, enforce_file_format=True)


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:400])
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)  # a read that waited for a writer would hang the load
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "frames '1A'":  # as pydicom's badVR.dcm
        _raw(path, 0x00280008, "IS", b"1A")
    elif how == "rows as DS":
        _raw(path, 0x00280010, "DS", b"4A")


DAMAGE = ["truncated", "fifo", "directory", "frames '1A'", "rows as DS"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize(
    "options",
    [{}, {"shape": (48, 64)}, {"spacing": 1.25}],
    ids=["inferred shape", "given shape", "spacing"],
)
def test_a_damaged_first_file_drops_only_its_record(damaged_root, reference, how, options):
    _damage(first_dicom(damaged_root), how)
    ds = daskmri.load_dataset(damaged_root, chunk_size=4, scheduler="sync", **options)
    lost = daskmri.dropped(ds)
    assert lost[["patient_id", "instance"]].values.tolist() == [list(FIRST)]
    reason = lost.reason.iloc[0]
    # One line, daskmri's own words: not a raw exception (``ValueError: ...``).
    assert reason and "\n" not in reason and not re.match(r"\w+Error: ", reason), reason
    if not options:
        assert_records_equal(ds, without(reference, FIRST))


def test_an_absurd_pixel_spacing_drops_its_record(damaged_root, reference):
    path = first_dicom(damaged_root)
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = ["1e308", "1e308"]
    ds.save_as(path, enforce_file_format=True)
    loaded = daskmri.load_dataset(
        damaged_root, chunk_size=4, scheduler="sync", spacing=1.25, shape=(48, 64)
    )
    lost = daskmri.dropped(loaded)
    assert lost.instance.tolist() == [FIRST[1]]
    assert "cannot be resampled" in lost.reason[0]


def test_reading_a_directory_leaves_no_file_open(damaged_root):
    path = first_dicom(damaged_root)
    path.unlink()
    path.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(DicomError, match="is a directory"):
            daskmri.read_dicom(path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_bug_while_inferring_the_shape_names_the_record(synth_root, monkeypatch):
    def broken(path, **_):
        raise TypeError("a bug in the geometry read")

    monkeypatch.setattr(daskmri.plan, "read_dicom_geometry", broken)
    with pytest.raises(ReaderError, match="patient SYN0001, instance 2") as info:
        daskmri.load_dataset(synth_root, scheduler="sync")
    assert isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize("how", ["truncated", "fifo", "directory"])
def test_the_scan_and_build_survive_a_damaged_first_file(damaged_root, reference, how, tmp_path):
    _damage(first_dicom(damaged_root), how)
    assert len(daskmri.scan(damaged_root).table) == reference.sizes["record"]
    store = tmp_path / "ds.zarr"
    report = daskmri.build(damaged_root, store, chunk_size=4, scheduler="sync")
    assert report.dropped == 1
    assert_records_equal(daskmri.open_dataset(store).compute(), without(reference, FIRST))


def test_the_command_line_reports_a_damaged_first_file_without_a_traceback(
    damaged_root, tmp_path, capsys
):
    from daskmri.cli import main

    _damage(first_dicom(damaged_root), "frames '1A'")
    assert main(["build", str(damaged_root), "--out", str(tmp_path / "ds.zarr")]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    dropped = pd.read_csv(tmp_path / "ds.dropped.csv")
    assert dropped.instance.tolist() == [2]
    assert "NumberOfFrames '1A'" in dropped.reason[0]


@pytest.fixture(scope="module")
def rt_root(tmp_path_factory):
    """An oblique series whose contours are in one RTSTRUCT, for every slice."""
    from .rtstructs import Drawn, Roi, oblique_series, slice_header, to_patient, write_rtstruct

    root = tmp_path_factory.mktemp("rt-first") / "data"
    oblique_series(root, slices=4)
    square = np.array([[10.5, 8.5], [30.5, 8.5], [30.5, 20.5], [10.5, 20.5]])
    drawn = []
    for instance in range(1, 5):
        ds = slice_header(root, instance)
        drawn.append(Drawn(to_patient(square, ds), str(ds.SOPInstanceUID)))
    write_rtstruct(root / "rt" / "SYN0001" / "set.dcm", [Roi(1, "LV Endo", drawn)])
    layout = daskmri.Layout(
        name="rt-first",
        contours=(),
        rtstruct=daskmri.RTStruct(glob="rt/{patient_id}/*.dcm", rois={"icontour": "lv endo"}),
    )
    return root, layout


@pytest.mark.parametrize("how", DAMAGE)
def test_rtstruct_planes_survive_a_damaged_first_slice(rt_root, tmp_path, how):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(rt_root[0], root)
    _damage(root / "dicoms" / "SYN0001" / "1.dcm", how)
    ds = daskmri.load_dataset(root, layout=rt_root[1], scheduler="sync")
    assert ds.instance.values.tolist() == [2, 3, 4]
    full = daskmri.load_dataset(rt_root[0], layout=rt_root[1], scheduler="sync")
    assert_records_equal(ds, full.isel(record=[1, 2, 3]))
    lost = daskmri.dropped(ds)
    assert lost.path.str.endswith("1.dcm").any(), lost


@pytest.mark.parametrize("kind", [DicomError, ContourError, daskmri.errors.RTStructError])
def test_record_errors_pickle_whole(kind):
    error = pickle.loads(pickle.dumps(kind("/d/1.dcm", "truncated")))
    assert (type(error), error.path, error.reason) == (kind, "/d/1.dcm", "truncated")
