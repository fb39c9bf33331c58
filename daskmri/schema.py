"""The dataset's schema: its variables, coordinates and attributes, made in one
place for a dataset held in memory (:func:`daskmri.load_dataset`) and one read
from a store (:func:`daskmri.open_dataset`), so that the two are the same."""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .fit import GEOMETRY
from .record import dropped_table
from .settings import Parsing, Source

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = [
    "COMPACT",
    "dropped",
    "kinds_of",
    "now",
    "pixels",
    "provenance",
    "to_dataset",
    "with_derived",
]

#: The image's ``long_name``; a mask's is :func:`long_name` of its kind.
IMAGE_LONG_NAME = "pixel value after the source's rescale (DICOM modality LUT, NIfTI scaling)"

#: The variables that hold a dataset's pixels and masks (see :mod:`daskmri.compact`);
#: ``image`` and the masks are derived from them, lazily (:func:`with_derived`).
COMPACT = ("pixels", "slope", "intercept", "labels")

#: The ``long_name`` of each compact variable.
COMPACT_LONG_NAMES = {
    "pixels": "stored pixel value (the source's integers, or float32 where a record "
    "is not integer data); image = pixels * slope + intercept, in float64, as float32",
    "slope": "the record's rescale slope",
    "intercept": "the record's rescale intercept",
    "labels": "bit k set where the pixel is inside contour kind k (attrs['kinds'] order)",
}


def long_name(kind: str) -> str:
    """The ``long_name`` of the mask of ``kind``: generic, the same for every layout.

    Examples
    --------
    >>> long_name("lv")
    "inside the 'lv' contour or label"
    """
    return f"inside the {kind!r} contour or label"


def pixels(kinds: tuple[str, ...] | list[str]) -> dict[str, type]:
    """The pixel variables of a dataset with these contour kinds, and their dtypes.

    Examples
    --------
    >>> list(pixels(("icontour", "scar")))
    ['image', 'icontour', 'scar']
    """
    return {"image": np.float32} | {kind: np.bool_ for kind in kinds}


def kinds_of(ds: xr.Dataset) -> tuple[str, ...]:
    """The contour kinds of a daskmri dataset: each mask variable with its ``has_``.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(16, 16))
    >>> kinds_of(daskmri.load_dataset(root, scheduler="sync"))
    ('icontour', 'ocontour')
    """
    return tuple(
        name
        for name in ds.data_vars
        if f"has_{name}" in ds.data_vars and ds[name].dims == ("record", "y", "x")
    )


def now() -> str:
    """The time, in UTC, as the attributes give it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance(source: Source, parsing: Parsing) -> dict:
    """The attributes that say where a dataset came from, in memory or in a store."""
    fitted = {"fit": parsing.fit}
    if parsing.spacing is not None:
        fitted["spacing"] = list(parsing.spacing)
    return {
        "title": "MRI slices and contour masks",
        "source": source.root,  # already absolute, or a URL
        "layout": json.dumps(source.layout.to_dict()),
        "labels": source.labels,
        "kinds": json.dumps(list(source.layout.kinds)),
        "chunk_size": parsing.chunk_size,
        "created_by": f"daskmri {__version__}",
        "created": now(),
    } | fitted


#: The coordinates of a dataset of volume planes, beside ``patient_id`` and ``instance``.
PLANE_COORDS = {"frame": np.int64, "slice": np.int64, "phase": str}


def is_volumes(attrs: dict) -> bool:
    """Whether the dataset (or store) with these attributes holds volume planes."""
    return json.loads(attrs.get("layout", "{}")).get("source") == "volumes"


def plane_coords(attrs: dict, columns: dict) -> dict[str, np.ndarray]:
    """The plane coordinates (:data:`PLANE_COORDS`) of a volume dataset from
    ``columns`` (name to values, one per record); none for a dataset of slices.

    Examples
    --------
    >>> attrs = {"layout": '{"source": "volumes"}'}
    >>> plane_coords(attrs, {"frame": [0], "slice": [3], "phase": ["ED"]})["phase"]
    array(['ED'], dtype='<U2')
    >>> plane_coords({}, {})
    {}
    """
    if not is_volumes(attrs):
        return {}
    # Through object: zarr 3 reads a string array as numpy's variable-width StringDType,
    # which casts to object but not to a fixed-width "<U" of unspecified size.
    return {
        name: np.asarray(columns[name], dtype=object).astype(dtype)
        if len(columns[name])
        else np.zeros(0, dtype)
        for name, dtype in PLANE_COORDS.items()
    }


def to_dataset(
    arrays: dict,
    *,
    slope: np.ndarray,
    intercept: np.ndarray,
    has: dict[str, np.ndarray],
    patient_id: np.ndarray,
    original_id: np.ndarray,
    instance: np.ndarray,
    attrs: dict,
    geometry: np.ndarray | None = None,
    planes: dict[str, np.ndarray] | None = None,
    derived: bool = True,
    chunks: tuple[int, ...] | None = None,
    sources: dict | None = None,
) -> xr.Dataset:
    """The daskmri dataset from its compact ``arrays`` (``pixels`` and ``labels``, each
    ``(record, y, x)``), each record's ``slope`` and ``intercept``, and its per-record
    tables: ``has`` says which records have each kind (in the bit order of
    ``labels``); ``geometry`` holds one row of :data:`daskmri.fit.GEOMETRY` values per
    record; ``planes`` the volume planes' coordinates (:func:`plane_coords`). With
    ``derived``, ``image`` and the masks too (:func:`with_derived`, from ``sources``
    when given, ``chunks`` along ``record`` where they are not dask arrays)."""
    import xarray as xr

    n = len(instance)
    geometry = np.zeros((n, len(GEOMETRY))) if geometry is None else np.asarray(geometry)
    where = {
        name: ("record", geometry[:, j].astype(np.int64 if j < 4 else np.float64))
        for j, name in enumerate(GEOMETRY)
    }
    ds = xr.Dataset(
        {name: (("record", "y", "x"), arrays[name]) for name in ("pixels", "labels")}
        | {
            "slope": ("record", np.asarray(slope, dtype=np.float64)),
            "intercept": ("record", np.asarray(intercept, dtype=np.float64)),
        }
        | {f"has_{kind}": ("record", np.asarray(flags, dtype=bool)) for kind, flags in has.items()},
        coords={
            "patient_id": ("record", np.array(patient_id, dtype=str)),
            "original_id": ("record", np.array(original_id, dtype=str)),
            "instance": ("record", np.asarray(instance, dtype=np.int64)),
        }
        | {name: ("record", values) for name, values in (planes or {}).items()}
        | where,
        attrs=attrs,
    )
    for name in COMPACT:
        ds[name].attrs.update(long_name=COMPACT_LONG_NAMES[name])
    if not derived:
        return ds
    return with_derived(ds, tuple(has), chunks=chunks, sources=sources or arrays)


def with_derived(
    ds: xr.Dataset,
    kinds: tuple[str, ...] | None = None,
    *,
    chunks: tuple[int, ...] | None = None,
    sources: dict | None = None,
) -> xr.Dataset:
    """``ds`` with ``image`` (float32) and one bool mask per kind, derived lazily from
    its compact variables: nothing is computed until they are read.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset with ``pixels``, ``slope``, ``intercept`` and ``labels``.
    kinds : tuple of str, optional
        The kinds in bit order; default ``ds.attrs["kinds"]``.
    chunks : tuple of int, optional
        The ``record`` chunks of the derived variables where ``pixels`` is not a dask
        array (lazily indexed by xarray's backend); default 64 records.
    sources : dict, optional
        The ``pixels`` and ``labels`` arrays to derive from, when ``ds`` holds them
        lazily indexed (reading its ``.data`` would load them); default ``ds``'s.

    Returns
    -------
    xarray.Dataset
        A new dataset: the derived variables first, then those of ``ds``.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(16, 16))
    >>> ds = daskmri.load_dataset(root, scheduler="sync")
    >>> ds.pixels.dtype, ds.image.dtype, ds.icontour.dtype
    (dtype('int16'), dtype('float32'), dtype('bool'))
    """
    import dask.array as da

    from .compact import bit, widen

    kinds = tuple(json.loads(ds.attrs["kinds"])) if kinds is None else tuple(kinds)
    sources = sources or {name: ds[name].data for name in ("pixels", "labels")}
    pixels = sources["pixels"]
    if not isinstance(pixels, da.Array):
        pixels = da.from_array(pixels, chunks=(chunks or 64, -1, -1), meta=np.empty((0, 0, 0)))
    labels = sources["labels"]
    if not isinstance(labels, da.Array):
        labels = da.from_array(labels, chunks=(pixels.chunks[0], -1, -1), meta=np.empty((0, 0, 0)))
    rescale = [
        da.from_array(np.asarray(ds[name].values), chunks=(pixels.chunks[0],))
        for name in ("slope", "intercept")
    ]
    image = da.blockwise(
        widen, "rij", pixels, "rij", rescale[0], "r", rescale[1], "r",
        dtype=np.float32, meta=np.empty((0, 0, 0), np.float32),
    )  # fmt: skip
    dims = ("record", "y", "x")
    derived = {"image": (dims, image, {"long_name": IMAGE_LONG_NAME})}
    for k, kind in enumerate(kinds):
        mask = labels.map_blocks(bit, k, dtype=bool, meta=np.empty((0, 0, 0), bool))
        derived[kind] = (dims, mask, {"long_name": long_name(kind)})
    # The served variables first, as before the compact form (image, then the masks).
    out = ds.drop_vars(list(ds.data_vars)).assign(derived)
    return out.assign({name: ds[name] for name in ds.data_vars})


def dropped(ds: xr.Dataset) -> pd.DataFrame:
    """Every record that is not in ``ds``, with the file and the reason.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset from :func:`daskmri.load_dataset` or :func:`daskmri.open_dataset`.

    Returns
    -------
    pandas.DataFrame
        Columns ``patient_id``, ``original_id``, ``instance``, ``path``, ``reason``.

    Raises
    ------
    ValueError
        If ``ds`` was not made by daskmri (no ``dropped`` attribute).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> (root / "dicoms" / "SYN0001" / "2.dcm").write_bytes(b"not a dicom")
    11
    >>> ds = daskmri.load_dataset(root, scheduler="sync")
    >>> daskmri.dropped(ds)[["instance", "reason"]].values.tolist()
    [[2, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"]]
    """
    if "dropped" not in ds.attrs:
        raise ValueError(
            "this dataset has no 'dropped' attribute: was it made by daskmri.load_dataset "
            "or daskmri.open_dataset? "
            "(xarray operations with keep_attrs=False drop it)"
        )
    return dropped_table(json.loads(ds.attrs["dropped"]))
