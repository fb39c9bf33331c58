"""Reliability on one machine: records that kill the local worker processes, a
hostile-input corpus (synthetic and real files) through every way of running, and a
mutation fuzz of whole builds on real DICOM bytes. (The cluster's side of these is
in test_remote_cluster.py; the decoy study outside the root in test_layout.py.)"""

from __future__ import annotations

import shutil
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

import daskmri
from daskmri import DaskmriError
from daskmri.execute import POISON_REASON, ProcessWorkers, find_killers
from daskmri.plan import plan_chunks
from daskmri.testing import assert_records_equal, eager_load

from . import hostile
from .conftest import FUZZ_CASES
from .readers import HangReader, NoisyReader, PoisonReader, Unloadable, dies


def keys(ds) -> list[tuple[str, int]]:
    return list(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True))


def without(ds, lost: set[tuple[str, int]]):
    """``ds`` less the records in ``lost``."""
    keep = [k for k, key in enumerate(keys(ds)) if key not in lost]
    return ds.isel(record=keep)


# -- records that kill the local worker processes ---------------------------------


def test_local_processes_drop_only_the_record_that_kills_its_process(synth_root):
    ds = daskmri.load_dataset(
        synth_root, chunk_size=4, scheduler="processes", reader=PoisonReader("SYN0001", 6)
    )
    lost = daskmri.dropped(ds)
    assert lost[["patient_id", "instance"]].values.tolist() == [["SYN0001", 6]]
    assert lost.reason.tolist() == [POISON_REASON]
    reference = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")
    assert_records_equal(ds, without(reference, {("SYN0001", 6)}))


def test_local_build_isolates_several_killers_and_reports_the_time(synth_root, tmp_path):
    # Two killers in one chunk (SYN0001's second chunk of 4 is 8, 9, 10, 12) and one
    # in another: their innocent neighbours must all be kept.
    killers = {("SYN0001", 8), ("SYN0001", 10), ("SYN0002", 9)}
    store = tmp_path / "ds.zarr"
    reader = PoisonReader("SYN0001", 8, also=(("SYN0001", 10), ("SYN0002", 9)))
    report = daskmri.build(synth_root, store, chunk_size=4, scheduler="processes", reader=reader)
    assert set(report.isolated) == killers
    assert 0 < report.isolation_seconds < report.seconds
    assert "3 record(s) killed their worker and were isolated in" in str(report)
    assert report.records == 13 and report.dropped == 3
    ds = daskmri.open_dataset(store)
    lost = daskmri.dropped(ds)
    assert set(keys(lost)) == killers and set(lost.reason) == {POISON_REASON}
    reference = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")
    assert_records_equal(ds, without(reference, killers))
    # A resumed build has nothing left to do, and parses nothing (no killer runs again).
    again = daskmri.build(synth_root, store, chunk_size=4, scheduler="processes", reader=reader)
    assert again.parsed_chunks == 0 and again.isolated == ()


def test_a_build_without_killers_reports_no_isolation(synth_root, tmp_path):
    report = daskmri.build(synth_root, tmp_path / "ds.zarr", chunk_size=4, scheduler="processes")
    assert report.isolated == () and report.isolation_seconds == 0.0
    assert "killed" not in str(report)


def test_a_chunk_that_kills_whatever_its_records_fails_clearly(synth_root):
    """When no single record is to blame, isolating records cannot help: the run
    must stop with a clear error after a bounded number of tries, not loop."""
    parts = [[(0, r) for r in plan_chunks(daskmri.scan(synth_root)).chunks[0]]]
    started = time.monotonic()
    with ProcessWorkers(1) as workers:
        with pytest.raises(DaskmriError, match=r"killed its worker process 4 times.*memory"):
            workers.run(dies, parts, daskmri.read_record)
        # The chunk died four times; its records' probes all passed (no restarts).
        assert workers.restarts == 4
    assert time.monotonic() - started < 60


def items_of(root, chunk: int = 0, chunk_size: int = 8) -> list:
    plan = plan_chunks(daskmri.scan(root), chunk_size=chunk_size)
    return list(enumerate(plan.chunks[chunk]))


def test_find_killers_names_each_killer_and_survives_them(synth_root):
    items = items_of(synth_root)  # SYN0001's instances 2, 3, 4, 6, 8, 9, 10, 12
    # Two side by side, and the last one.
    reader = PoisonReader("SYN0001", 3, also=(("SYN0001", 4), ("SYN0001", 12)))
    assert find_killers(items, reader) == [("SYN0001", 3), ("SYN0001", 4), ("SYN0001", 12)]
    assert find_killers(items, daskmri.read_record) == []
    # A closure is fine (cloudpickle), and a reader that raises is not a killer.
    assert find_killers(items, lambda record: 1 / 0) == []


def test_find_killers_counts_a_hang_as_a_killer(synth_root):
    started = time.monotonic()
    found = find_killers(items_of(synth_root), HangReader("SYN0001", 9), timeout=3)
    assert found == [("SYN0001", 9)]
    assert time.monotonic() - started < 30


def test_find_killers_blames_the_hang_alone_after_fast_records(synth_root):
    """Records that fail at once arrive as several index lines in one read; the hang
    after them is still charged to the right record."""

    class FastThenHang:
        def __call__(self, record):
            if record.instance == 10:
                time.sleep(3600)
            raise ValueError("fast")

    assert find_killers(items_of(synth_root), FastThenHang(), timeout=2) == [("SYN0001", 10)]


def test_find_killers_ignores_what_the_reader_prints(synth_root):
    reader = NoisyReader(keep=(("SYN0001", 4),))
    assert find_killers(items_of(synth_root), reader) == []


def test_find_killers_child_imports_from_the_parents_path(synth_root, tmp_path, monkeypatch):
    (tmp_path / "beside_the_script.py").write_text(
        "import os\nfrom daskmri import read_record\n"
        "def reader(record):\n"
        "    if record.instance == 3:\n        os._exit(9)\n"
        "    return read_record(record)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from beside_the_script import reader

    assert find_killers(items_of(synth_root), reader) == [("SYN0001", 3)]


def test_a_hanging_chunk_in_local_workers_is_found_like_a_crash(synth_root):
    items = items_of(synth_root)
    started = time.monotonic()
    with ProcessWorkers(2, chunk_timeout=3) as workers:
        results, isolation = workers.run(
            _instances, [items[:4], items[4:]], HangReader("SYN0001", 9)
        )
    assert isolation.records == (("SYN0001", 9),)
    assert results == [[2, 3, 4, 6], [8, 10, 12]]
    assert time.monotonic() - started < 60


def test_find_killers_says_why_its_child_cannot_start(synth_root):
    with pytest.raises(RuntimeError, match=r"died before its first record: .*Error"):
        find_killers(items_of(synth_root), Unloadable())


def test_process_workers_keep_finished_results_when_one_dies(synth_root):
    plan = plan_chunks(daskmri.scan(synth_root), chunk_size=2)
    items = list(enumerate(r for chunk in plan.chunks for r in chunk))
    parts = [items[i : i + 2] for i in range(0, len(items), 2)]
    reader = PoisonReader("SYN0002", 12)
    with ProcessWorkers(2) as workers:
        results, isolation = workers.run(_instances, parts, reader)
    assert isolation.records == (("SYN0002", 12),) and isolation.seconds > 0
    # Every chunk has its result, in order; the killer's chunk ran again without it.
    expected = [[r.instance for _, r in part] for part in parts]
    expected[-1] = [i for i in expected[-1] if i != 12]
    assert results == expected


def _instances(part, reader):
    out = []
    for _, record in part:
        try:
            reader(record)
        except Exception:
            continue
        out.append(record.instance)
    return out


# -- the hostile corpus ----------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    root, bad = hostile.make_corpus(base / "hostile")
    reference = daskmri.load_dataset(hostile.pristine(base / "pristine"), scheduler="sync")
    return root, bad, reference


def assert_corpus_outcome(ds, bad, reference) -> None:
    lost = daskmri.dropped(ds)
    assert sorted(keys(lost)) == sorted(bad), lost
    for row in lost.itertuples():
        path, fragment = bad[(row.patient_id, row.instance)]
        assert row.path == str(path), (row.path, path)
        assert fragment in row.reason, (row.instance, row.reason)
    # Everything else is there, with the pristine dataset's exact pixels and masks:
    # the CRLF, tab and blank-line contours, the BOM in link.csv, and the DICOMs in
    # implicit VR, big endian, deflated and RLE transfer syntaxes included.
    assert_records_equal(ds, without(reference, set(bad)))


def test_corpus_covers_every_kind_named_in_the_issue(corpus):
    _, bad, reference = corpus
    assert len(bad) == 16 and reference.sizes["record"] == 48


def test_corpus_sync_with_bounded_memory(corpus):
    root, bad, reference = corpus
    tracemalloc.start()
    try:
        ds = daskmri.load_dataset(root, scheduler="sync", chunk_size=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The 65535x65535 slice would be 16 GiB as float32: declared sizes drive nothing.
    assert peak < 64 * 2**20, peak
    assert_corpus_outcome(ds, bad, reference)


def test_corpus_processes(corpus):
    root, bad, reference = corpus
    ds = daskmri.load_dataset(root, scheduler="processes", chunk_size=8)
    assert_corpus_outcome(ds, bad, reference)


def test_corpus_build_to_a_store(corpus, tmp_path):
    root, bad, reference = corpus
    report = daskmri.build(root, tmp_path / "ds.zarr", chunk_size=8, scheduler="processes")
    assert report.dropped == len(bad)
    assert_corpus_outcome(daskmri.open_dataset(tmp_path / "ds.zarr"), bad, reference)


def test_corpus_on_a_cluster(corpus, client):
    root, bad, reference = corpus
    ds = daskmri.load_dataset(root, client=client, chunk_size=8)
    assert_corpus_outcome(ds, bad, reference)


@pytest.fixture(scope="module")
def rt_corpus(tmp_path_factory):
    return hostile.make_rtstruct_corpus(tmp_path_factory.mktemp("rt-corpus") / "hostile")


@pytest.mark.parametrize("how", ["sync", "processes", "store", "cluster"])
def test_rtstruct_corpus_on_every_way_of_running(rt_corpus, how, request, tmp_path):
    """Truncated, damaged, NaN and not-RTSTRUCT files cost only their own contours."""
    root, layout, problems = rt_corpus
    if how == "store":
        daskmri.build(root, tmp_path / "rt.zarr", layout=layout, chunk_size=2)
        ds = daskmri.open_dataset(tmp_path / "rt.zarr")
    elif how == "cluster":
        ds = daskmri.load_dataset(
            root, layout=layout, chunk_size=2, client=request.getfixturevalue("client")
        )
    else:
        ds = daskmri.load_dataset(root, layout=layout, chunk_size=2, scheduler=how)
    assert ds.instance.values.tolist() == [1, 2, 4]
    assert ds.icontour.values.sum(axis=(1, 2)).tolist() == [20 * 12] * 3  # columns 11-30, rows 9-20
    lost = daskmri.dropped(ds)
    assert len(lost) == len(problems), lost
    for case, (path, fragment) in problems.items():
        rows = lost[lost.path == str(path)]
        assert len(rows) == 1 and fragment in rows.reason.iloc[0], (case, rows.reason.tolist())


REAL_PATIENT = "SCD0000101"


@pytest.fixture
def real_patient(real_root, tmp_path) -> Path:
    """One real patient's labelled slices, copied into a temporary root to be broken
    (the shared sample itself is never written)."""
    table = daskmri.scan(real_root).table
    table = table[table.patient_id == REAL_PATIENT]
    root = tmp_path / "real"
    for row in table.itertuples():
        for path in (row.image_path, row.icontour_path, row.ocontour_path):
            if path is not None:
                target = root / Path(path).relative_to(real_root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    original_id = table.original_id.iloc[0]
    (root / "link.csv").write_text(f"patient_id,original_id\n{REAL_PATIENT},{original_id}\n")
    return root


def test_real_files_broken_drop_only_their_records(real_patient):
    table = daskmri.scan(real_patient).table
    pristine = eager_load(real_patient)
    assert len(table) >= 8
    rows = list(table.itertuples())
    broken: dict[tuple[str, int], tuple[str, str]] = {}

    def mark(row, path, fragment):
        broken[(row.patient_id, row.instance)] = (path, fragment)

    data = Path(rows[0].image_path).read_bytes()
    Path(rows[0].image_path).write_bytes(data[: len(data) // 2])
    mark(rows[0], rows[0].image_path, "truncated")
    path = Path(rows[1].image_path)
    path.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    mark(rows[1], str(path), "")
    ds = pydicom.dcmread(rows[2].image_path)
    ds.Columns = ds.Columns + 1
    ds.save_as(rows[2].image_path)
    mark(rows[2], rows[2].image_path, "PixelData holds")
    path = Path(rows[3].icontour_path)
    path.write_text(path.read_text() + "12.0 nan\n")
    mark(rows[3], str(path), "non-finite")
    path = Path(rows[4].icontour_path)
    path.write_bytes(path.read_bytes().replace(b" ", b" \xc3\x28 ", 1))
    mark(rows[4], str(path), "UTF-8")

    ds = daskmri.load_dataset(real_patient, scheduler="processes", chunk_size=4)
    lost = daskmri.dropped(ds)
    assert sorted(keys(lost)) == sorted(broken)
    for row in lost.itertuples():
        path, fragment = broken[(row.patient_id, row.instance)]
        assert row.path == path and fragment in row.reason, row
    assert_records_equal(ds, without(pristine, set(broken)))


# -- mutation fuzz of whole builds -------------------------------------------------

#: Files mutated in each build (of the real patient's labelled slices).
FUZZ_MUTATED = 6


def mutate(data: bytes, rng: np.random.Generator, pixel_bytes: int) -> bytes:
    """A truncation, or one to four random bytes, mostly in the header, where a flip
    changes tags, lengths, VRs and values."""
    if rng.random() < 0.3:
        return data[: int(rng.integers(0, len(data)))]
    out = bytearray(data)
    header = max(len(data) - pixel_bytes, 1)
    for _ in range(int(rng.integers(1, 5))):
        where = int(rng.integers(0, header if rng.random() < 0.85 else len(data)))
        out[where] = int(rng.integers(0, 256))
    return bytes(out)


def pydicom_image(path: str) -> np.ndarray | None:
    """pydicom's own reading of a file, or None where pydicom cannot decode it."""
    from pydicom.pixels import apply_modality_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    except Exception:
        return None


@pytest.mark.slow
@pytest.mark.timeout(120 + 30 * FUZZ_CASES)
def test_builds_over_mutated_real_dicoms_never_fail(real_patient, tmp_path):
    """Each case mutates a few of the real files, builds the folder into a store (local
    worker processes), and checks: the build returns, in bounded time; every file it
    did not touch is kept with pydicom's exact pixels; a mutated file is dropped and
    named, or kept only with the pixels pydicom itself decodes from it."""
    table = daskmri.scan(real_patient).table
    pristine = eager_load(real_patient)
    originals = {row.image_path: Path(row.image_path).read_bytes() for row in table.itertuples()}
    pixel_bytes = int(pristine.sizes["y"] * pristine.sizes["x"] * 2)
    slowest = 0.0
    outcomes = {"dropped": 0, "kept": 0}
    for case in range(FUZZ_CASES):
        rng = np.random.default_rng(case)
        for path, data in originals.items():
            Path(path).write_bytes(data)
        hit = rng.choice(len(table), size=FUZZ_MUTATED, replace=False)
        mutated = {}
        for k in hit:
            row = table.iloc[int(k)]
            mutated[(row.patient_id, int(row.instance))] = row.image_path
            Path(row.image_path).write_bytes(mutate(originals[row.image_path], rng, pixel_bytes))
        store = tmp_path / f"case{case}.zarr"
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's, on the damaged headers
            daskmri.build(real_patient, store, chunk_size=4, scheduler="processes")
        slowest = max(slowest, time.monotonic() - started)
        ds = daskmri.open_dataset(store)
        lost = daskmri.dropped(ds)
        assert set(keys(lost)) <= set(mutated), f"case {case}: dropped an untouched file"
        for row in lost.itertuples():
            assert row.path == mutated[(row.patient_id, row.instance)], f"case {case}"
        kept = set(keys(ds))
        outcomes["dropped"] += len(lost)
        outcomes["kept"] += len(kept & set(mutated))
        untouched = [key for key in keys(pristine) if key not in mutated]
        assert kept >= set(untouched), f"case {case}: lost an untouched file"
        assert_records_equal(
            ds.isel(record=[keys(ds).index(key) for key in untouched]),
            pristine.isel(record=[keys(pristine).index(key) for key in untouched]),
        )
        for key in sorted(kept & set(mutated)):
            expected = pydicom_image(mutated[key])
            assert expected is not None, f"case {case}: kept {key}, which pydicom cannot read"
            image = ds.image[keys(ds).index(key)].values
            np.testing.assert_array_equal(image, expected, err_msg=f"case {case} {key}")
    print(
        f"\n{FUZZ_CASES} fuzz builds of {len(table)} real slices, {FUZZ_MUTATED} mutated in each: "
        f"{outcomes['dropped']} dropped, {outcomes['kept']} kept with pydicom's pixels; "
        f"slowest build {slowest:.1f} s"
    )


def test_the_fuzz_mutations_really_break_files(real_patient):
    """A fuzz that never breaks anything proves nothing: most mutations of the first
    cases must change what pydicom reads."""
    table = daskmri.scan(real_patient).table
    rng = np.random.default_rng(0)
    changed = 0
    for row in list(table.itertuples())[:20]:
        data = Path(row.image_path).read_bytes()
        before = pydicom_image(row.image_path)
        Path(row.image_path).write_bytes(mutate(data, rng, int(before.size * 2)))
        after = pydicom_image(row.image_path)
        changed += after is None or after.shape != before.shape or (after != before).any()
        Path(row.image_path).write_bytes(data)
    assert changed >= 8, changed
