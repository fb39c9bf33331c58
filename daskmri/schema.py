"""The dataset's schema: its variables, coordinates and attributes, made in one
place for a dataset held in memory (:func:`daskmri.load_dataset`) and one read
from a store (:func:`daskmri.open_dataset`), so that the two are the same."""

from __future__ import annotations

import datetime
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .fit import GEOMETRY
from .record import dropped_table
from .settings import Parsing, Source

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["PIXELS", "dropped", "now", "provenance", "to_dataset"]

#: The pixel variables, on ``(record, y, x)``, and their dtypes.
PIXELS = {"image": np.float32, "icontour": np.bool_, "ocontour": np.bool_}

LONG_NAMES = {
    "image": "pixel value after the DICOM modality rescale",
    "icontour": "inside the inner (i) contour",
    "ocontour": "inside the outer (o) contour",
}


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
        "source": os.path.abspath(source.root),
        "layout": json.dumps(source.layout.to_dict()),
        "labels": source.labels,
        "chunk_size": parsing.chunk_size,
        "created_by": f"daskmri {__version__}",
        "created": now(),
    } | fitted


def to_dataset(
    arrays: dict,
    *,
    has_icontour: np.ndarray,
    has_ocontour: np.ndarray,
    patient_id: np.ndarray,
    original_id: np.ndarray,
    instance: np.ndarray,
    attrs: dict,
    geometry: np.ndarray | None = None,
) -> xr.Dataset:
    """The daskmri dataset from its pixel ``arrays`` (``image``, ``icontour``,
    ``ocontour``, each ``(record, y, x)``) and its per-record tables; ``geometry``
    holds one row of :data:`daskmri.fit.GEOMETRY` values per record."""
    import xarray as xr

    n = len(instance)
    geometry = np.zeros((n, len(GEOMETRY))) if geometry is None else np.asarray(geometry)
    where = {
        name: ("record", geometry[:, j].astype(np.int64 if j < 4 else np.float64))
        for j, name in enumerate(GEOMETRY)
    }
    ds = xr.Dataset(
        {name: (("record", "y", "x"), arrays[name]) for name in PIXELS}
        | {"has_icontour": ("record", has_icontour), "has_ocontour": ("record", has_ocontour)},
        coords={
            "patient_id": ("record", np.array(patient_id, dtype=str)),
            "original_id": ("record", np.array(original_id, dtype=str)),
            "instance": ("record", np.asarray(instance, dtype=np.int64)),
        }
        | where,
        attrs=attrs,
    )
    for name, long_name in LONG_NAMES.items():
        ds[name].attrs.update(long_name=long_name)
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
