"""``exclude=`` (issue 27): a verdicts file's excluded records are left out of
load_dataset, build and BatchIterator, and reported like dropped ones.

The reference is always the same call without ``exclude``, with the excluded
records taken out afterwards (``isel``): the result must equal it, pixels and masks
included, and ``dropped()`` must list exactly the excluded records with the reason.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import daskmri
from daskmri import synth
from daskmri.cli import main
from daskmri.errors import StaleStoreError
from daskmri.store import read_attrs
from daskmri.store.spec import StoreSpec
from daskmri.verdicts import Exclusion, write_verdicts

SHAPE = (32, 40)


def write(path: Path, excluded, *, kept=(), header="patient_id,instance,flags,verdict") -> Path:
    """A verdicts file: ``excluded`` keys with verdict ``exclude``, ``kept`` with none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{p},{i},,exclude" for p, i in excluded] + [f"{p},{i},,keep" for p, i in kept]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def keys(ds) -> list[tuple[str, int]]:
    return list(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True))


def without(ds, excluded) -> xr.Dataset:
    """``ds`` less the records ``excluded`` names: the reference."""
    out = set(excluded)
    return ds.isel(record=[k for k, key in enumerate(keys(ds)) if key not in out])


def assert_same(ds, expected) -> None:
    """Every variable and coordinate equal, pixels compared with numpy too (attrs aside)."""
    assert keys(ds) == keys(expected)
    for name in ("image", *daskmri.schema.kinds_of(expected)):
        assert ds[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(ds[name].values, expected[name].values)
    assert ds.compute().equals(expected.compute())


def dropped_excluded(ds, reason: str) -> list[tuple[str, int]]:
    """The ``(patient_id, instance)`` of the dropped rows with ``reason``, checking
    that every dropped row with an exclusion reason has exactly that one."""
    table = daskmri.dropped(ds)
    by_exclusion = table[table.reason.str.startswith("excluded by")]
    assert set(by_exclusion.reason) <= {reason}
    return sorted(zip(by_exclusion.patient_id, by_exclusion.instance.astype(int), strict=True))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synth.make_dataset(
        tmp_path_factory.mktemp("exclude") / "data", patients=2, slices=10, shape=SHAPE, seed=3
    )


@pytest.fixture(scope="module")
def full(root):
    return daskmri.load_dataset(root, chunk_size=3, scheduler="sync").compute()


@pytest.fixture
def picked(full) -> list[tuple[str, int]]:
    """Three records of two patients, one the first of a chunk."""
    found = keys(full)
    return sorted([found[0], found[4], found[-2]])


# -- load_dataset -----------------------------------------------------------------


def test_load_dataset_leaves_out_the_excluded_records_and_reports_them(
    root, full, picked, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "qc" / "verdicts.csv", [*picked, ("GONE", 7)], kept=[keys(full)[1]])
    with caplog.at_level(logging.INFO, logger="daskmri.verdicts"):
        ds = daskmri.load_dataset(root, chunk_size=3, scheduler="sync", exclude="qc/verdicts.csv")
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, "excluded by qc/verdicts.csv") == picked
    assert len(daskmri.dropped(ds)) == len(picked)
    # A verdict about a record that is not there is not an error: one INFO line.
    (line,) = [r.getMessage() for r in caplog.records if "not in the dataset" in r.getMessage()]
    assert "1 excluded record(s)" in line
    # The chunks are planned after the exclusion: full chunks of what is left.
    n = len(keys(full)) - len(picked)
    assert ds.image.chunks[0] == (3,) * (n // 3) + ((n % 3,) if n % 3 else ())


def test_no_pixel_of_an_excluded_record_is_read(root, full, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(root, data)
    patient, instance = keys(full)[0]
    (data / "dicoms" / patient / f"{instance}.dcm").write_bytes(b"not a dicom")
    verdicts = write(tmp_path / "v.csv", [(patient, instance)])
    ds = daskmri.load_dataset(data, chunk_size=3, scheduler="sync", exclude=verdicts)
    # Read, it would be dropped as "not a DICOM file"; excluded, it is never opened.
    table = daskmri.dropped(ds)
    assert table.reason.tolist() == [f"excluded by {verdicts}"]
    assert_same(ds, without(full, [(patient, instance)]))


def test_an_exclusion_that_matches_nothing_changes_nothing(root, full, tmp_path):
    verdicts = write(tmp_path / "v.csv", [("GONE", 1)], kept=keys(full)[:3])
    ds = daskmri.load_dataset(root, chunk_size=3, scheduler="sync", exclude=verdicts)
    assert_same(ds, full)
    assert len(daskmri.dropped(ds)) == 0


def test_real_sample(real_root, tmp_path):
    full = daskmri.load_dataset(real_root, chunk_size=16, scheduler="sync").compute()
    found = keys(full)
    picked = sorted([found[0], found[len(found) // 2], found[-1]])
    verdicts = write(tmp_path / "verdicts.csv", picked)
    ds = daskmri.load_dataset(real_root, chunk_size=16, scheduler="sync", exclude=verdicts)
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked
    # The real sample's own drops are still there, with their own reasons.
    assert len(daskmri.dropped(ds)) == len(daskmri.dropped(full)) + len(picked)


@pytest.fixture(scope="module")
def volume_root(tmp_path_factory) -> Path:
    return synth.make_volume_dataset(
        tmp_path_factory.mktemp("volumes") / "data",
        layout="acdc",
        patients=2,
        frames=4,
        slices=5,
        shape=(24, 28),
        seed=1,
    )


def planes_of_one_volume(full) -> list[tuple[str, int]]:
    """Three planes of the first volume: its first, one in the middle, one late."""
    patient = str(full.patient_id.values[0])
    instances = full.instance.values[full.patient_id.values == patient].tolist()
    return sorted([(patient, instances[0]), (patient, instances[2]), (patient, instances[6])])


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_volume_planes_excluded_leave_the_other_planes_as_they_are(
    volume_root, tmp_path, chunk_size
):
    layout = daskmri.ACDC
    full = daskmri.load_dataset(
        volume_root, layout=layout, chunk_size=chunk_size, scheduler="sync"
    ).compute()
    picked = planes_of_one_volume(full)
    verdicts = write(tmp_path / "verdicts.csv", picked)
    ds = daskmri.load_dataset(
        volume_root, layout=layout, chunk_size=chunk_size, scheduler="sync", exclude=verdicts
    )
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked


@pytest.fixture(scope="module")
def rt_root(tmp_path_factory) -> Path:
    from .rtstructs import Drawn, Roi, oblique_series, slice_header, to_patient
    from .rtstructs import write_rtstruct as write_rt

    endo_square = np.array([[10.5, 8.5], [30.5, 8.5], [30.5, 20.5], [10.5, 20.5]])
    epi_square = np.array([[5.5, 5.5], [44.5, 5.5], [44.5, 35.5], [5.5, 35.5]])

    root = oblique_series(tmp_path_factory.mktemp("oblique") / "data", slices=5)

    def drawn(instance, points):
        header = slice_header(root, instance)
        return Drawn(to_patient(points, header), str(header.SOPInstanceUID))

    endo = Roi(1, "LV Endo", [drawn(k, endo_square) for k in (1, 2, 3, 4)])
    epi = Roi(2, "LV Epi", [drawn(k, epi_square) for k in (1, 3)])
    write_rt(root / "rt" / "SYN0001" / "rt.dcm", [endo, epi])
    return root


def test_rtstruct_source(rt_root, tmp_path):
    layout = daskmri.Layout(
        name="oblique",
        contours=(),
        rtstruct=daskmri.RTStruct(
            glob="rt/{patient_id}/*.dcm", rois={"icontour": "lv endo", "ocontour": "lv epi"}
        ),
    )
    full = daskmri.load_dataset(rt_root, layout=layout, chunk_size=2, scheduler="sync").compute()
    assert full.sizes["record"] == 4
    picked = [("SYN0001", 3)]
    verdicts = write(tmp_path / "verdicts.csv", picked)
    ds = daskmri.load_dataset(
        rt_root, layout=layout, chunk_size=2, scheduler="sync", exclude=verdicts
    )
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked


def test_on_a_local_cluster(root, full, picked, tmp_path, client):
    verdicts = write(tmp_path / "verdicts.csv", picked)
    ds = daskmri.load_dataset(root, chunk_size=3, client=client, exclude=verdicts)
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked
    with daskmri.BatchIterator(ds, batch_size=4, seed=2) as it:
        served = sorted(k for b in it for k in zip(b["patient_id"], b["instance"], strict=True))
    assert served == sorted(keys(without(full, picked)))


def test_an_exclusion_value_is_taken_as_it_is(root, full, picked):
    exclusion = Exclusion("my QC", frozenset(picked))
    ds = daskmri.load_dataset(root, chunk_size=3, scheduler="sync", exclude=exclusion)
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, "excluded by my QC") == picked


# -- bad verdicts files ---------------------------------------------------------------


def bad_files(tmp_path: Path) -> list[tuple[object, type, str]]:
    """``(exclude, error, words of the message)`` for every way a file is refused."""
    no_column = tmp_path / "no-verdict.csv"
    no_column.write_text("patient_id,instance,flags\nSYN0001,2,\n")
    unknown = write(tmp_path / "unknown.csv", [], header="patient_id,instance,verdict")
    unknown.write_text(unknown.read_text() + "SYN0001,2,maybe\n")
    return [
        (tmp_path / "missing.csv", FileNotFoundError, "no such verdicts file"),
        (no_column, ValueError, "has no verdict column"),
        (unknown, ValueError, "line 2: verdict 'maybe' is not understood; write 'exclude'"),
        (["SYN0001", 2], TypeError, "exclude= must be the path of a verdicts.csv"),
    ]


def test_bad_verdict_files_are_refused_before_any_work(root, full, tmp_path):
    store = tmp_path / "ds.zarr"
    for exclude, error, words in bad_files(tmp_path):
        with pytest.raises(error, match=re.escape(words)):
            daskmri.load_dataset(root, scheduler="sync", exclude=exclude)
        with pytest.raises(error, match=re.escape(words)):
            daskmri.build(root, store, scheduler="sync", exclude=exclude)
        assert not store.exists()  # nothing written
        with pytest.raises(error, match=re.escape(words)):
            daskmri.BatchIterator(full, batch_size=4, seed=0, exclude=exclude)


def test_the_command_line_refuses_a_bad_file_in_one_line(root, tmp_path, capsys):
    for exclude, _, words in bad_files(tmp_path)[:3]:
        with pytest.raises(SystemExit) as exit_:
            main(
                ["build", str(root), "--out", str(tmp_path / "ds.zarr"), "--exclude", str(exclude)]
            )
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words.split(";")[0] in err
    assert not (tmp_path / "ds.zarr").exists()


# -- build, open_dataset, check -------------------------------------------------------


def build(root, store, **options):
    return daskmri.build(root, store, chunk_size=3, scheduler="sync", **options)


def test_build_and_open_dataset(root, full, picked, tmp_path):
    verdicts = write(tmp_path / "verdicts.csv", picked)
    store = tmp_path / "ds.zarr"
    report = build(root, store, exclude=verdicts)
    assert report.records == len(keys(full)) - len(picked)
    assert report.parsed_records == report.records  # the excluded ones are never parsed
    ds = daskmri.open_dataset(store)
    assert_same(ds, without(full, picked))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked
    assert daskmri.check(store).fresh
    # The same call again has nothing to do.
    assert build(root, store, exclude=verdicts).parsed_chunks == 0


def sorted_records(ds):
    return ds.sortby(["patient_id", "instance"])


def test_a_changed_exclusion_makes_the_store_stale_and_update_follows_it(
    root, full, picked, tmp_path
):
    verdicts = write(tmp_path / "verdicts.csv", picked[:2])
    store = tmp_path / "ds.zarr"
    build(root, store, exclude=verdicts)
    fingerprint = read_attrs(StoreSpec.of(store))["input_fingerprint"]

    # The verdicts file is edited: a third record excluded, the first kept again.
    write(verdicts, picked[1:])
    freshness = daskmri.check(store)  # reads the file again
    assert not freshness.fresh
    assert freshness.excluded == (picked[2],)
    assert freshness.included == (picked[0],)
    assert not (freshness.added or freshness.removed or freshness.changed)
    assert "newly excluded" in str(freshness) and "no longer excluded" in str(freshness)
    with pytest.warns(daskmri.errors.StaleStoreWarning, match="newly excluded"):
        daskmri.open_dataset(store, root=root)
    with pytest.raises(StaleStoreError, match="1 record\\(s\\) newly excluded"):
        build(root, store, exclude=verdicts)

    report = build(root, store, exclude=verdicts, mode="update")
    assert (report.retired, report.parsed_records) == (1, 1)
    ds = daskmri.open_dataset(store)
    assert_same(sorted_records(ds), sorted_records(without(full, picked[1:])))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked[1:]
    assert daskmri.check(store).fresh
    assert read_attrs(StoreSpec.of(store))["input_fingerprint"] != fingerprint

    # Without exclude: stale (the store still leaves records out); update adds them back.
    assert daskmri.check(store, exclude=None).included == tuple(picked[1:])
    with pytest.raises(StaleStoreError, match="no longer excluded"):
        build(root, store)
    build(root, store, mode="update")
    ds = daskmri.open_dataset(store)
    assert_same(sorted_records(ds), sorted_records(full))
    assert len(daskmri.dropped(ds)) == 0
    assert daskmri.check(store).fresh  # built without exclude: checked without one


def test_the_fingerprint_holds_the_keys_not_the_file_name(root, picked, tmp_path):
    first = write(tmp_path / "a.csv", picked)
    store = tmp_path / "ds.zarr"
    build(root, store)
    plain = read_attrs(StoreSpec.of(store))["input_fingerprint"]
    # A file that excludes nothing there (a record that no longer exists) leaves it fresh.
    gone = write(tmp_path / "gone.csv", [("GONE", 1)])
    assert daskmri.check(store, exclude=gone).fresh
    assert build(root, store, exclude=gone).parsed_chunks == 0
    build(root, store, exclude=first, mode="update")
    with_exclusion = read_attrs(StoreSpec.of(store))["input_fingerprint"]
    assert with_exclusion != plain
    renamed = write(tmp_path / "b.csv", reversed(picked), kept=[("SYN0001", 99)])
    assert daskmri.check(store, exclude=renamed).fresh
    assert build(root, store, exclude=renamed).parsed_chunks == 0
    # The store now follows the renamed file: its reasons name it, check reads it.
    assert dropped_excluded(daskmri.open_dataset(store), f"excluded by {renamed}") == picked
    first.unlink()
    assert daskmri.check(store).fresh


def test_check_says_what_to_do_when_the_verdicts_file_is_gone(root, picked, tmp_path):
    verdicts = write(tmp_path / "verdicts.csv", picked)
    store = tmp_path / "ds.zarr"
    build(root, store, exclude=verdicts)
    verdicts.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("is gone; pass check(..., exclude=)")):
        daskmri.check(store)
    assert not daskmri.check(store, exclude=None).fresh
    assert daskmri.check(store, exclude=Exclusion("kept", frozenset(picked))).fresh


def test_volume_store_update_with_excluded_planes(volume_root, tmp_path):
    layout = daskmri.ACDC
    full = daskmri.load_dataset(volume_root, layout=layout, chunk_size=8, scheduler="sync")
    full = full.compute()
    picked = planes_of_one_volume(full)
    store = tmp_path / "ds.zarr"
    verdicts = write(tmp_path / "verdicts.csv", picked)
    daskmri.build(volume_root, store, layout=layout, chunk_size=8, scheduler="sync",
                  exclude=verdicts)  # fmt: skip
    assert_same(daskmri.open_dataset(store), without(full, picked))
    write(verdicts, picked[:1])  # two planes back in
    daskmri.build(volume_root, store, layout=layout, chunk_size=8, scheduler="sync",
                  exclude=verdicts, mode="update")  # fmt: skip
    ds = daskmri.open_dataset(store)
    assert_same(sorted_records(ds), sorted_records(without(full, picked[:1])))
    assert dropped_excluded(ds, f"excluded by {verdicts}") == picked[:1]


def test_the_command_line_builds_with_exclude(root, full, picked, tmp_path, capsys):
    verdicts = write(tmp_path / "verdicts.csv", picked)
    store = tmp_path / "out.zarr"
    argv = ["build", str(root), "--out", str(store), "--scheduler", "sync", "--chunk-size", "3"]
    assert main([*argv, "--exclude", str(verdicts)]) == 0
    listed = (tmp_path / "out.dropped.csv").read_text()
    assert listed.count(f"excluded by {verdicts}") == len(picked)
    assert_same(daskmri.open_dataset(store), without(full, picked))
    assert main(["check", str(store)]) == 0
    assert main(["check", str(store), "--exclude", str(write(tmp_path / "none.csv", []))]) == 1
    assert main(["scan", str(root), "--exclude", str(verdicts)]) == 0
    out = capsys.readouterr().out
    assert f"records:     {len(keys(full)) - len(picked)}" in out


# -- Layout.contains is not an input --------------------------------------------------


@pytest.mark.parametrize(
    ("built", "then"), [((), (("icontour", "ocontour"),)), ((("icontour", "ocontour"),), ())]
)
def test_contains_alone_does_not_make_a_store_stale(root, tmp_path, built, then):
    store = tmp_path / "ds.zarr"
    first = daskmri.Layout(contains=built)
    build(root, store, layout=first)
    fingerprint = read_attrs(StoreSpec.of(store))["input_fingerprint"]
    second = daskmri.Layout(contains=then)
    report = build(root, store, layout=second)  # resume: nothing to do, no refusal
    assert report.parsed_chunks == 0
    attrs = read_attrs(StoreSpec.of(store))
    assert attrs["input_fingerprint"] == fingerprint
    assert daskmri.check(store).fresh
    # The QC reads the new declaration from the dataset.
    layout = json.loads(daskmri.open_dataset(store).attrs["layout"])
    assert [tuple(pair) for pair in layout["contains"]] == list(then)


# -- BatchIterator --------------------------------------------------------------------


def epoch(it) -> list[dict]:
    return list(it)


def assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("source", ["memory", "store"])
def test_batch_iterator_serves_the_dataset_less_the_excluded_records(
    root, full, picked, tmp_path, source
):
    ds = daskmri.load_dataset(root, chunk_size=3, scheduler="sync")
    if source == "store":
        build(root, tmp_path / "ds.zarr")
        ds = daskmri.open_dataset(tmp_path / "ds.zarr")
    verdicts = write(tmp_path / "verdicts.csv", [*picked, ("GONE", 1)])
    options = {"batch_size": 4, "seed": 5, "shuffle_chunks": 2}
    with daskmri.BatchIterator(ds, exclude=verdicts, **options) as it:
        got = [epoch(it), epoch(it)]
        table = it.dropped
    with daskmri.BatchIterator(without(ds, picked), **options) as reference:
        expected = [epoch(reference), epoch(reference)]
    for a, b in zip(got, expected, strict=True):
        assert_same_batches(a, b)
    served = {k for b in got[0] for k in zip(b["patient_id"], b["instance"], strict=True)}
    assert served == set(keys(full)) - set(picked)
    assert sorted(zip(table.patient_id, table.instance.astype(int), strict=True)) == picked
    assert set(table.reason) == {f"excluded by {verdicts}"}


def test_batch_iterator_without_exclude_is_unchanged(full, tmp_path):
    ds = full.chunk({"record": 3})
    nothing = write(tmp_path / "nothing.csv", [("GONE", 1)], kept=keys(full)[:2])
    with daskmri.BatchIterator(ds, batch_size=4, seed=9) as it:
        plain = epoch(it)
        assert len(it.dropped) == 0
    with daskmri.BatchIterator(ds, batch_size=4, seed=9, exclude=nothing) as it:
        assert_same_batches(epoch(it), plain)
        state = it.state_dict()
    assert state["exclude"] is None


def test_every_rank_leaves_them_out(full, picked, tmp_path):
    ds = full.chunk({"record": 3})
    verdicts = write(tmp_path / "verdicts.csv", picked)
    served, lengths = [], set()
    for rank in range(3):
        with daskmri.BatchIterator(
            ds, batch_size=2, seed=4, rank=rank, world_size=3, exclude=verdicts
        ) as it:
            lengths.add(len(it))
            for b in it:
                served += [k for k, pad in zip(keys_of(b), b["padding"], strict=True) if not pad]
    assert len(lengths) == 1  # every rank serves as many batches
    assert sorted(served) == sorted(set(keys(full)) - set(picked))  # each once


def keys_of(batch) -> list[tuple[str, int]]:
    return list(zip(batch["patient_id"].tolist(), batch["instance"].tolist(), strict=True))


def test_a_resume_with_another_exclusion_is_refused(full, picked, tmp_path):
    ds = full.chunk({"record": 3})
    verdicts = write(tmp_path / "verdicts.csv", picked)
    with daskmri.BatchIterator(ds, batch_size=2, seed=1, exclude=verdicts) as it:
        batches = iter(it)
        next(batches)
        state = it.state_dict()
        rest = [keys_of(b) for b in batches]
    assert state["exclude"] is not None
    # The same exclusion resumes where it stood.
    with daskmri.BatchIterator(ds, batch_size=2, seed=1, exclude=verdicts) as it:
        it.load_state_dict(state)
        assert [keys_of(b) for b in it] == rest
    others = [None, write(tmp_path / "other.csv", picked[:1])]
    for other in others:
        with daskmri.BatchIterator(ds, batch_size=2, seed=1, exclude=other) as it:
            with pytest.raises(
                ValueError, match="make it with the exclude= the saved run had"
            ) as e:
                it.load_state_dict(state)
            assert "\n" not in str(e.value)
    # And a state saved without exclusion is refused by an iterator with one.
    with daskmri.BatchIterator(ds, batch_size=2, seed=1) as it:
        plain = it.state_dict()
    with (
        daskmri.BatchIterator(ds, batch_size=2, seed=1, exclude=verdicts) as it,
        pytest.raises(ValueError, match="saved with no exclusion"),
    ):
        it.load_state_dict(plain)


def test_verdicts_written_by_write_verdicts_read_back(root, full, picked, tmp_path):
    """The round trip the report and the user make: write_verdicts, edit, exclude."""
    path = tmp_path / "qc" / "verdicts.csv"
    path.parent.mkdir()
    write_verdicts([{"patient_id": p, "instance": i, "flags": ""} for p, i in keys(full)], path)
    lines = path.read_text().splitlines()
    edited = [lines[0]]
    for line in lines[1:]:
        patient, instance = line.split(",")[:2]
        edited.append(line + "exclude" if (patient, int(instance)) in picked else line)
    path.write_text("\n".join(edited) + "\n")
    ds = daskmri.load_dataset(root, chunk_size=3, scheduler="sync", exclude=path)
    assert_same(ds, without(full, picked))
