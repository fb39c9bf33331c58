"""Datasets in the compact form of issue 26, made from a dataset of today's form, for
the tests of the iterator and the torch adapter until the loaders make them.

The form is the contract's: the dataset HOLDS ``pixels`` (integers), ``slope`` and
``intercept`` (float64 per record) and ``labels`` (one bit per kind, in the order of
``ds.attrs["kinds"]``), chunked like the original, and DERIVES ``image`` and one bool
variable per kind lazily (dask blockwise over what it holds), as the real datasets do.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import dask.array as da
import numpy as np
import xarray as xr

from daskmri import synth
from daskmri.compact import pack_labels, unpack_labels, widen

Rescale = Callable[[str], tuple[float, float]]


def synth_rescale(patient_id: str) -> tuple[float, float]:
    """The rescale daskmri.synth wrote on a patient's slices (``SYN0002`` is patient 2)."""
    return synth.patient_rescale(int(patient_id[3:])) or (1.0, 0.0)


def no_rescale(patient_id: str) -> tuple[float, float]:
    """Slope 1 and intercept 0 (the Sunnybrook sample's DICOMs carry none)."""
    return 1.0, 0.0


def record_chunks(ds: xr.Dataset) -> tuple[int, ...]:
    """The record chunks of ``ds``'s image (or of its ``chunk_size`` when in memory)."""
    chunks = ds["image"].chunks
    if chunks is not None:
        return tuple(chunks[0])
    n, size = ds.sizes["record"], int(ds.attrs["chunk_size"])
    return tuple(min(size, n - s) for s in range(0, n, size))


def compact_form(
    ds: xr.Dataset,
    rescale: Rescale = no_rescale,
    dtype=np.int16,
    client=None,
) -> xr.Dataset:
    """``ds`` (today's form) in the compact form; ``client``: what it holds is persisted
    on that client's cluster, and the derived variables are lazy over the futures.

    The pixels are the image undone by each record's rescale, cast to ``dtype``: the
    cast is asserted exact (widening them gives the image back bit for bit)."""
    kinds = tuple(json.loads(ds.attrs["kinds"]))
    image = np.asarray(ds["image"].values)
    patients = np.asarray(ds["patient_id"].values).astype(str)
    rescales = np.array([rescale(p) for p in patients], dtype=np.float64).reshape(-1, 2)
    slope, intercept = rescales[:, 0].copy(), rescales[:, 1].copy()
    raw = (image.astype(np.float64) - intercept[:, None, None]) / slope[:, None, None]
    pixels = np.rint(raw).astype(dtype)
    assert np.array_equal(raw, pixels), "the image is not integers of dtype after its rescale"
    assert np.array_equal(widen(pixels, slope, intercept).view(np.uint32), image.view(np.uint32))
    labels = pack_labels({k: np.asarray(ds[k].values) for k in kinds}, kinds)
    chunks = record_chunks(ds)
    held = xr.Dataset(
        {
            "pixels": (("record", "y", "x"), da.from_array(pixels, chunks=(chunks, -1, -1))),
            "slope": ("record", da.from_array(slope, chunks=(chunks,))),
            "intercept": ("record", da.from_array(intercept, chunks=(chunks,))),
            "labels": (("record", "y", "x"), da.from_array(labels, chunks=(chunks, -1, -1))),
        }
    )
    if client is not None:
        held = client.persist(held)
    derived = derive(held, kinds)
    out = ds.drop_vars(["image", *kinds]).assign(**held.data_vars, **derived)
    # The dataset's own order: what it holds, what it derives, then the rest.
    order = [*held.data_vars, *derived, *(v for v in ds.data_vars if v not in derived)]
    return out[order].assign_attrs(ds.attrs)


def derive(held: xr.Dataset, kinds: tuple[str, ...]) -> dict[str, xr.DataArray]:
    """``image`` and each kind's mask, lazily, from the held variables."""
    dims = ("record", "y", "x")
    image = da.blockwise(
        widen,
        "ryx",
        held["pixels"].data,
        "ryx",
        held["slope"].data,
        "r",
        held["intercept"].data,
        "r",
        dtype=np.float32,
    )
    out = {"image": xr.DataArray(image, dims=dims)}
    for kind in kinds:
        mask = held["labels"].data.map_blocks(
            lambda block, kind=kind: unpack_labels(block, kinds)[kind], dtype=bool
        )
        out[kind] = xr.DataArray(mask, dims=dims)
    return out


def with_extra_kinds(ds: xr.Dataset, n: int, seed: int = 0) -> xr.Dataset:
    """``ds`` (today's form, in memory) with ``n`` more kinds of random masks (each
    with its ``has_`` flag, in ``attrs["kinds"]``): over 8 kinds, labels are uint16."""
    rng = np.random.default_rng(seed)
    kinds = list(json.loads(ds.attrs["kinds"]))
    shape = ds["image"].shape
    extra = {}
    for j in range(n):
        mask = rng.random(shape) < 0.3
        extra[f"extra{j}"] = (("record", "y", "x"), mask)
        extra[f"has_extra{j}"] = ("record", mask.any(axis=(1, 2)))
        kinds.append(f"extra{j}")
    return ds.assign(**extra).assign_attrs(kinds=json.dumps(kinds))


def stored(compact: xr.Dataset, path) -> xr.Dataset:
    """``compact`` written to a Zarr store at ``path`` (what it holds, the coordinates
    and the rest; not what it derives) and opened lazily, deriving ``image`` and the
    masks over the stored chunks: a stand-in for ``open_dataset`` of a format-5 store."""
    kinds = tuple(json.loads(compact.attrs["kinds"]))
    with warnings.catch_warnings():  # zarr's on text coordinates in format 3: known
        warnings.simplefilter("ignore")
        compact.drop_vars(["image", *kinds]).to_zarr(path, mode="w-")
        opened = xr.open_zarr(path)
    derived = derive(opened, kinds)
    return opened.assign(**derived)[list(compact.data_vars)].assign_attrs(compact.attrs)
