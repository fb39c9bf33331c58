"""Helpers for testing code that uses daskmri (and for daskmri's own tests).

:func:`eager_load` is the plain reference: one record at a time, pydicom's own
``pixel_array`` and the contour rasteriser, no Dask. Chunked and distributed
results are compared against it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask
import numpy as np
import pydicom
import xarray as xr
from pydicom.pixels import apply_modality_lut

from .contours import polygon_mask, read_contour
from .layout import scan
from .schema import COMPACT
from .sources.dicom_contours import Layout

__all__ = ["assert_records_equal", "eager_load", "raise_if_dask_computes"]


def eager_load(
    root: str | os.PathLike[str], *, layout: Layout | None = None, labels: str = "any"
) -> xr.Dataset:
    """Load a dataset with a plain loop (no Dask), skipping records that fail.

    Returns numpy-backed variables with the same names, dims and coordinates as
    :func:`daskmri.load_dataset`. Contour text files only (no RTSTRUCT).
    """
    table, _ = scan(root, layout=layout, labels=labels)
    kinds = [c[: -len("_path")] for c in table.columns if c.endswith("_path") and c != "image_path"]
    images, ids, spacings = [], [], []
    found: dict[str, list] = {kind: [] for kind in kinds}
    for row in table.itertuples():
        if row.problem is not None:
            continue
        try:
            ds = pydicom.dcmread(row.image_path)
            image = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            masks = []
            for kind in kinds:
                path = getattr(row, f"{kind}_path")
                if path is None:
                    masks.append(None)
                else:
                    points = read_contour(path, shape=image.shape)
                    masks.append(polygon_mask(points, image.shape))
        except Exception:
            continue
        if images and image.shape != images[0].shape:
            continue
        images.append(image)
        for kind, mask in zip(kinds, masks, strict=True):
            found[kind].append(mask)
        ids.append((row.patient_id, row.original_id, row.instance))
        spacing = ds.get("PixelSpacing")
        spacings.append([float(v) for v in spacing] if spacing else [np.nan, np.nan])
    shape = images[0].shape if images else (0, 0)
    dims = ("record", "y", "x")
    n = len(images)
    spacing = np.array(spacings, dtype=np.float64).reshape(n, 2)
    geometry = {  # every slice as it is: the frame is its size
        "source_rows": ("record", np.full(n, shape[0], np.int64)),
        "source_columns": ("record", np.full(n, shape[1], np.int64)),
        "row_offset": ("record", np.zeros(n, np.int64)),
        "column_offset": ("record", np.zeros(n, np.int64)),
        "row_scale": ("record", np.ones(n)),
        "column_scale": ("record", np.ones(n)),
        "source_row_spacing": ("record", spacing[:, 0]),
        "source_column_spacing": ("record", spacing[:, 1]),
    }
    return xr.Dataset(
        {
            "image": (dims, np.stack(images) if images else np.zeros((0, *shape), np.float32)),
        }
        | {kind: (dims, _stack(masks, shape)) for kind, masks in found.items()}
        | {
            f"has_{kind}": ("record", np.array([m is not None for m in masks], dtype=bool))
            for kind, masks in found.items()
        },
        coords={
            "patient_id": ("record", np.array([i[0] for i in ids], dtype=str)),
            "original_id": ("record", np.array([i[1] for i in ids], dtype=str)),
            "instance": ("record", np.array([i[2] for i in ids], dtype=np.int64)),
        }
        | geometry,
    )


def _stack(masks: list, shape: tuple[int, int]) -> np.ndarray:
    """One kind's masks as ``(record, y, x)``, all False where a record has none."""
    planes = [np.zeros(shape, bool) if mask is None else mask for mask in masks]
    return np.stack(planes) if planes else np.zeros((0, *shape), bool)


def assert_records_equal(actual: xr.Dataset, expected: xr.Dataset) -> None:
    """Assert two daskmri datasets hold the same records, pixels and masks.

    Dask-backed data is computed under the synchronous scheduler, so a failure
    points at the data rather than at a scheduler (data persisted on a cluster is
    fetched through its client). Attributes are not compared, nor the compact
    variables that hold the pixels (``pixels``, ``slope``, ``intercept``, ``labels``):
    what they hold is compared as the ``image`` and masks derived from them, which must
    be equal bit for bit.
    """
    from distributed import futures_of

    def compute(ds: xr.Dataset) -> xr.Dataset:
        # Data persisted on a cluster can only be fetched through its client, which
        # need not be the default one.
        futures = futures_of(ds)
        if futures:
            with futures[0].client.as_current():
                return ds.compute()
        with dask.config.set(scheduler="sync"):
            return ds.compute()

    def served(ds: xr.Dataset) -> xr.Dataset:
        return ds.drop_vars([name for name in COMPACT if name in ds.data_vars])

    actual, expected = compute(served(actual)), compute(served(expected))
    for name in ("image", *(k for k in actual.data_vars if actual[k].dtype == bool)):
        if name in actual and name in expected and actual[name].dtype == expected[name].dtype:
            # Bits, not values: -0.0 is not 0.0, and a NaN must be the same NaN.
            left, right = actual[name].values, expected[name].values
            if left.dtype == np.float32:
                assert np.array_equal(left.view(np.uint32), right.view(np.uint32)), name
    xr.testing.assert_equal(actual, expected)


class _ComputeCounter:
    def __init__(self, max_computes: int) -> None:
        self.max_computes = max_computes
        self.total = 0

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_ComputeCounter]:
    """Fail when code inside computes a dask collection more than ``max_computes`` times.

    Proves that an operation stays lazy (the same idea as xarray's test helper).

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_dask_computes():
    ...     x = da.ones(3) + 1  # building a graph is fine
    """
    counter = _ComputeCounter(max_computes)
    with dask.config.set(scheduler=counter):
        yield counter
