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

__all__ = ["dropped", "kinds_of", "now", "pixels", "provenance", "to_dataset"]

#: The image's ``long_name``; a mask's is :func:`long_name` of its kind.
IMAGE_LONG_NAME = "pixel value after the source's rescale (DICOM modality LUT, NIfTI scaling)"


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
    has: dict[str, np.ndarray],
    patient_id: np.ndarray,
    original_id: np.ndarray,
    instance: np.ndarray,
    attrs: dict,
    geometry: np.ndarray | None = None,
    planes: dict[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """The daskmri dataset from its pixel ``arrays`` (``image`` and one mask per
    contour kind, each ``(record, y, x)``) and its per-record tables: ``has`` says
    which records have each kind; ``geometry`` holds one row of
    :data:`daskmri.fit.GEOMETRY` values per record; ``planes`` the volume planes'
    coordinates (:func:`plane_coords`)."""
    import xarray as xr

    n = len(instance)
    geometry = np.zeros((n, len(GEOMETRY))) if geometry is None else np.asarray(geometry)
    where = {
        name: ("record", geometry[:, j].astype(np.int64 if j < 4 else np.float64))
        for j, name in enumerate(GEOMETRY)
    }
    ds = xr.Dataset(
        {name: (("record", "y", "x"), arrays[name]) for name in pixels(tuple(has))}
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
    for name in pixels(tuple(has)):
        ds[name].attrs.update(long_name=IMAGE_LONG_NAME if name == "image" else long_name(name))
    return ds


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
