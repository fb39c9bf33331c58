"""The dataset in memory (load_dataset, the local and cluster memory sinks): its
schema, exact agreement with the eager reference under every executor, the real
sample, and what a custom reader sees."""

from __future__ import annotations

import math
import mmap
import warnings

import dask
import numpy as np
import pydicom
import pytest
import xarray as xr

import daskmri
from daskmri import RecordError, synth
from daskmri.fit import GEOMETRY
from daskmri.testing import assert_records_equal, eager_load, raise_if_dask_computes

from .conftest import PATIENTS, SHAPE, SLICES
from .reference import iou, matplotlib_mask, pnpoly_exact


def n_any() -> int:
    return PATIENTS * sum(1 for k in range(1, SLICES + 1) if k % 2 == 0 or k % 3 == 0)


class TestSchema:
    def test_schema_dtypes_and_known_chunks(self, synth_root):
        ds = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync")
        n = n_any()
        assert ds.sizes == {"record": n, "y": SHAPE[0], "x": SHAPE[1]}
        assert ds.image.dtype == np.float32
        assert ds.icontour.dtype == bool and ds.ocontour.dtype == bool
        assert ds.has_icontour.dtype == bool and ds.instance.dtype == np.int64
        assert ds.patient_id.dtype.kind == "U" and ds.original_id.dtype.kind == "U"
        assert set(ds.coords) == {"patient_id", "original_id", "instance", *GEOMETRY}
        # Every synthetic slice fills the frame as it is: no offset, no scale.
        assert (ds.source_rows == SHAPE[0]).all() and (ds.source_columns == SHAPE[1]).all()
        assert ds.row_offset.dtype == np.int64 and not ds.row_offset.any()
        assert (ds.row_scale == 1.0).all() and (ds.source_row_spacing == 1.25).all()
        for name in ("image", "icontour", "ocontour"):
            chunks = ds[name].chunks
            assert chunks[0] == (5,) * (n // 5) + ((n % 5,) if n % 5 else ())
            assert chunks[1:] == ((SHAPE[0],), (SHAPE[1],))
            assert not any(math.isnan(c) for c in chunks[0])
        assert ds.attrs["source"] == str(synth_root)
        assert ds.attrs["labels"] == "any" and ds.attrs["created_by"].startswith("daskmri ")
        assert (
            daskmri.Layout.from_dict(__import__("json").loads(ds.attrs["layout"]))
            == daskmri.SUNNYBROOK
        )

    def test_one_task_per_chunk(self, synth_root):
        from dask.callbacks import Callback

        executed = []
        with Callback(pretask=lambda key, dsk, state: executed.append(key)):
            ds = daskmri.load_dataset(synth_root, chunk_size=4, scheduler="sync")
        chunks = math.ceil(n_any() / 4)
        assert len(ds.image.chunks[0]) == chunks
        # The bag's partitions are literal data: parsing is the only task per chunk.
        assert len(executed) == chunks

    def test_bad_arguments(self, synth_root):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            daskmri.load_dataset(synth_root, chunk_size=0)
        with pytest.raises(ValueError, match="scheduler must be one of"):
            daskmri.load_dataset(synth_root, scheduler="distributed")
        with pytest.raises(daskmri.LayoutError, match="is not a folder"):
            daskmri.load_dataset(synth_root / "nope")
        with pytest.raises(ValueError, match="no 'dropped' attribute"):
            daskmri.dropped(xr.Dataset())


class TestExact:
    def test_synthetic_pixels_and_masks_are_exact(self, synth_root):
        ds = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="sync", labels="all")
        assert ds.sizes["record"] == PATIENTS * SLICES
        ids = dict(synth.patient_ids(PATIENTS))
        for k in range(ds.sizes["record"]):
            patient = list(ids).index(str(ds.patient_id[k].values)) + 1
            instance = int(ds.instance[k])
            stored = synth.slice_pixels(seed=7, patient=patient, instance=instance, shape=SHAPE)
            rescale = synth.patient_rescale(patient)
            expected = stored.astype(np.float64)
            if rescale:
                expected = expected * rescale[0] + rescale[1]
            np.testing.assert_array_equal(ds.image[k].values, expected.astype(np.float32))
            inner, outer = synth.slice_contours(
                seed=7, patient=patient, instance=instance, shape=SHAPE
            )
            for points, var, has in (
                (inner, "icontour", "has_icontour"),
                (outer, "ocontour", "has_ocontour"),
            ):
                truth = np.zeros(SHAPE, bool) if points is None else pnpoly_exact(points, SHAPE)
                np.testing.assert_array_equal(ds[var][k].values, truth)
                assert bool(ds[has][k]) is (points is not None)
                if points is not None:
                    assert truth.sum() > 20  # a real shape, not an empty mask

    @pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
    def test_chunked_equals_eager_loop(self, synth_root, scheduler):
        ds = daskmri.load_dataset(synth_root, chunk_size=5, scheduler=scheduler, labels="all")
        assert_records_equal(ds, eager_load(synth_root, labels="all"))

    def test_default_scheduler_equals_eager_loop(self, synth_root):
        ds = daskmri.load_dataset(synth_root, chunk_size=7)
        assert_records_equal(ds, eager_load(synth_root))

    def test_distributed_equals_eager_and_keeps_pixels_on_workers(self, synth_root, client):
        from distributed import futures_of

        ds = daskmri.load_dataset(synth_root, chunk_size=5, client=client)
        futures = futures_of(ds)
        # The compact arrays (pixels, labels) are persisted on the cluster, a future per
        # chunk each; the image and masks are derived from them, never held.
        assert len(futures) == 2 * len(ds.image.chunks[0])
        assert {f.key for f in futures} == {f.key for f in futures_of(ds[["pixels", "labels"]])}
        assert all(f.status == "finished" for f in futures)
        with raise_if_dask_computes():
            ds.isel(record=slice(2, 9)).image.mean()  # stays lazy
        assert_records_equal(ds, eager_load(synth_root))

    @pytest.mark.parametrize("where", ["processes", "cluster"])
    def test_progress_bar_counts_every_chunk(self, synth_root, client, capsys, where):
        kwargs = {"client": client} if where == "cluster" else {"scheduler": "processes"}
        ds = daskmri.load_dataset(synth_root, chunk_size=5, progress=True, **kwargs)
        chunks = len(ds.image.chunks[0])
        assert f"| {chunks}/{chunks} chunks |" in capsys.readouterr().err

    def test_scheduler_address_string(self, synth_root, local_cluster):
        from distributed import default_client, futures_of

        ds = daskmri.load_dataset(synth_root, chunk_size=9, client=local_cluster.scheduler_address)
        made = futures_of(ds)[0].client
        try:
            assert default_client() is made  # so that ds.compute() finds the cluster
            assert_records_equal(ds, eager_load(synth_root))
        finally:
            made.close()

    def test_default_client_is_used(self, synth_root, client):
        from distributed import futures_of

        ds = daskmri.load_dataset(synth_root, chunk_size=9)
        assert futures_of(ds), "with a default client the pixels should live on the cluster"


class TestReal:
    def test_counts(self, real_root):
        ds = daskmri.load_dataset(real_root, chunk_size=16, scheduler="sync")
        assert ds.sizes["record"] == 56
        assert int(ds.has_icontour.sum()) == 56 and int(ds.has_ocontour.sum()) == 28
        assert len(daskmri.dropped(ds)) == 0
        assert daskmri.load_dataset(real_root, labels="o", scheduler="sync").sizes["record"] == 28

    def test_images_equal_pydicom_and_masks_match_reference(self, real_root):
        pytest.importorskip("matplotlib")
        ds = daskmri.load_dataset(real_root, chunk_size=16, scheduler="processes")
        table = daskmri.scan(real_root).table
        assert ds.instance.values.tolist() == table.instance.tolist()
        polygon_area = mask_area = 0.0
        for k, row in enumerate(table.itertuples()):
            source = pydicom.dcmread(row.image_path)
            np.testing.assert_array_equal(ds.image[k].values, source.pixel_array.astype(np.float32))
            for path, var in ((row.icontour_path, "icontour"), (row.ocontour_path, "ocontour")):
                if path is None:
                    assert not ds[var][k].values.any()
                    continue
                points = daskmri.read_contour(path)
                mask = ds[var][k].values
                assert iou(mask, matplotlib_mask(points, mask.shape)) >= 0.98, (path, var)
                x, y = points[:, 0], points[:, 1]
                area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
                assert abs(mask.sum() - area) / area < 0.02, (path, var)
                polygon_area += area
                mask_area += mask.sum()
        assert abs(mask_area - polygon_area) / polygon_area < 0.005

    def test_all_labels_equal_eager_loop_and_warn_nothing(self, real_root):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = daskmri.load_dataset(real_root, labels="all", chunk_size=100, scheduler="sync")
        assert [str(w.message) for w in caught] == []
        assert ds.sizes["record"] == 700
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own UID warnings, in the reference only
            expected = eager_load(real_root, labels="all")
        assert_records_equal(ds, expected)
        unlabelled = ~(ds.has_icontour | ds.has_ocontour)
        assert int(unlabelled.sum()) == 700 - 56
        assert not ds.icontour.where(unlabelled, False).any()


def break_file(root, kind: str):
    """Damage one record's files in a way ``kind`` names; return (patient, instance, fragment)."""
    dicoms, contours = root / "dicoms" / "SYN0001", root / "contourfiles" / "SYN-C-1"
    if kind == "truncated":
        path = dicoms / "4.dcm"
        path.write_bytes(path.read_bytes()[:-700])
        return 4, "truncated", path
    if kind == "not-dicom":
        path = dicoms / "6.dcm"
        path.write_text("this is not DICOM\n" * 50)
        return 6, "not a DICOM file", path
    if kind == "no-pixel-data":
        path = dicoms / "8.dcm"
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
        return 8, "no PixelData", path
    if kind == "bad-contour-line":
        path = contours / "i-contours" / "IM-0001-0010-icontour-manual.txt"
        path.write_text(path.read_text().replace("\n", "\n12.5 oops\n", 1))
        return 10, "line 2 is '12.5 oops'", path
    if kind == "two-points":
        path = contours / "o-contours" / "IM-0001-0003-ocontour-manual.txt"
        path.write_text("10 10\n20 20\n")
        return 3, "only 2 point(s)", path
    if kind == "contour-without-dicom":
        (dicoms / "12.dcm").unlink()
        return 12, "has no DICOM", contours / "i-contours" / "IM-0001-0012-icontour-manual.txt"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "not-dicom",
        "no-pixel-data",
        "bad-contour-line",
        "two-points",
        "contour-without-dicom",
    ],
)
def test_one_bad_file_drops_only_its_record(damaged_root, kind):
    instance, fragment, path = break_file(damaged_root, kind)
    ds = daskmri.load_dataset(damaged_root, chunk_size=4, scheduler="sync")
    lost = daskmri.dropped(ds)
    assert len(lost) == 1, lost
    row = lost.iloc[0]
    assert (row.patient_id, row.instance) == ("SYN0001", instance)
    assert row.path == str(path)
    assert fragment in row.reason
    assert ds.sizes["record"] == n_any() - 1
    kept = set(zip(ds.patient_id.values.tolist(), ds.instance.values.tolist(), strict=True))
    assert ("SYN0001", instance) not in kept
    # Every good record is there, with the right pixels.
    assert_records_equal(ds, eager_load(damaged_root))


def test_many_failures_in_one_chunk_and_an_empty_chunk(damaged_root):
    for instance in (2, 3, 4, 6):  # the first chunk of 4 records, all broken
        (damaged_root / "dicoms" / "SYN0001" / f"{instance}.dcm").write_bytes(b"")
    ds = daskmri.load_dataset(damaged_root, chunk_size=4, scheduler="threads")
    assert len(daskmri.dropped(ds)) == 4
    assert set(daskmri.dropped(ds).reason) == {"empty file (0 bytes), expected a DICOM file"}
    assert sum(ds.image.chunks[0]) == n_any() - 4
    assert_records_equal(ds, eager_load(damaged_root))


def test_a_slice_of_another_size_is_dropped(damaged_root):
    path = damaged_root / "dicoms" / "SYN0002" / "9.dcm"
    other = synth.make_dataset(damaged_root.parent / "other", patients=1, slices=9, shape=(32, 32))
    path.write_bytes((other / "dicoms" / "SYN0001" / "9.dcm").read_bytes())
    lost = daskmri.dropped(daskmri.load_dataset(damaged_root, scheduler="sync"))
    assert lost.instance.tolist() == [9]
    assert "image is 32x32 but this dataset's images are 48x64" in lost.reason[0]


class CountingReader:
    """A reader hook that stubs the pixels and fails on request (picklable)."""

    def __init__(self, fail_instance: int) -> None:
        self.fail_instance = fail_instance

    def __call__(self, record: daskmri.Record):
        if record.instance == self.fail_instance:
            raise KeyError("stub failure")
        if record.instance == self.fail_instance + 1:
            raise RecordError("/fake/path.dcm", "stub record error")
        image = np.full(SHAPE, record.instance, dtype=np.float32)
        inner = np.ones(SHAPE, bool) if record.path("icontour") else None
        return image, inner, None


@pytest.mark.parametrize("scheduler", ["sync", "processes"])
def test_reader_hook(synth_root, scheduler):
    # on_error="drop": the KeyError (a bug, raised by default) is dropped like bad data.
    ds = daskmri.load_dataset(
        synth_root,
        reader=CountingReader(fail_instance=2),
        scheduler=scheduler,
        chunk_size=3,
        on_error="drop",
    )
    lost = daskmri.dropped(ds)
    assert (
        sorted(lost.reason.tolist()) == ["KeyError: 'stub failure'"] * 2 + ["stub record error"] * 2
    )
    assert set(lost[lost.reason == "stub record error"].path) == {"/fake/path.dcm"}
    np.testing.assert_array_equal(ds.image.values[:, 0, 0], ds.instance.values)
    assert (ds.icontour.values.all(axis=(1, 2)) == ds.has_icontour.values).all()
    assert not ds.ocontour.values.any() and not ds.has_ocontour.values.any()


def test_no_records_gives_an_empty_dataset(damaged_root):
    for path in (damaged_root / "contourfiles").glob("*/o-contours/*.txt"):
        path.unlink()
    ds = daskmri.load_dataset(damaged_root, labels="o", scheduler="sync")
    assert ds.sizes["record"] == 0 and ds.image.shape == (0, 0, 0)
    assert len(daskmri.dropped(ds)) == 0


def test_processes_result_is_plain_in_memory_dask(synth_root):
    ds = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="processes")
    with raise_if_dask_computes(max_computes=1):
        ds.image.sum().compute()
    assert dask.is_dask_collection(ds.image.data)


def slot_files() -> set[str]:
    import glob

    return set(glob.glob("/dev/shm/daskmri-*.slots"))


def test_local_build_writes_shared_slots_and_leaves_no_files(synth_root):
    before = slot_files()
    ds = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="processes")
    assert slot_files() == before
    # The compact pixels and labels live in the shared mapping, not in per-chunk arrays.
    chunks = [
        getattr(v, "value", v)
        for name in ("pixels", "labels")
        for v in dict(ds[name].data.dask).values()
    ]
    chunks = [c for c in chunks if isinstance(c, np.ndarray)]
    assert len(chunks) == 2 * len(ds.image.chunks[0])
    for chunk in chunks:
        base = chunk
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        assert isinstance(getattr(base, "obj", base), mmap.mmap)


class Interrupting:
    def __call__(self, record):
        raise SystemExit("stop")


def test_interrupted_build_leaves_no_files(synth_root):
    before = slot_files()
    with pytest.raises(SystemExit):
        daskmri.load_dataset(synth_root, reader=Interrupting(), scheduler="sync")
    assert slot_files() == before


def test_without_room_for_shared_slots_results_come_back_in_memory(synth_root, monkeypatch):
    from daskmri.parse import Slots

    monkeypatch.setattr(Slots, "create", classmethod(lambda cls, *args, **kwargs: None))
    ds = daskmri.load_dataset(synth_root, chunk_size=5, scheduler="processes")
    assert_records_equal(ds, eager_load(synth_root))
