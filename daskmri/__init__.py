"""daskmri: MRI slices (DICOM) and their contours as a chunked xarray Dataset, built with Dask.

Examples
--------
>>> import daskmri  # doctest: +SKIP
>>> table = daskmri.scan("final_data")  # doctest: +SKIP
>>> ds = daskmri.load_dataset("final_data")  # doctest: +SKIP
>>> daskmri.dropped(ds)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

# Library logging stays silent unless the application configures it.
logging.getLogger(__name__).addHandler(logging.NullHandler())

from . import synth  # noqa: E402
from .build import Record, dropped, load_dataset, read_record  # noqa: E402
from .contours import polygon_mask, read_contour  # noqa: E402
from .dicom import read_dicom  # noqa: E402
from .errors import ContourError, DaskmriError, DicomError, LayoutError, RecordError  # noqa: E402
from .layout import SERIES, SUNNYBROOK, Layout, scan  # noqa: E402
from .limits import Limits  # noqa: E402
from .versions import show_versions  # noqa: E402

__all__ = [
    "SERIES",
    "SUNNYBROOK",
    "ContourError",
    "DaskmriError",
    "DicomError",
    "Layout",
    "LayoutError",
    "Limits",
    "Record",
    "RecordError",
    "__version__",
    "dropped",
    "load_dataset",
    "polygon_mask",
    "read_contour",
    "read_dicom",
    "read_record",
    "scan",
    "show_versions",
    "synth",
]
