"""daskmri: MRI slices (DICOM) and their contours as a chunked xarray Dataset, built with Dask.

A typical session::

    import daskmri
    table = daskmri.scan("final_data")        # every record, no pixel I/O
    ds = daskmri.load_dataset("final_data")   # image, icontour, ocontour along record
    daskmri.dropped(ds)                        # what was left out, and why
"""

from __future__ import annotations

import logging

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Library logging stays silent unless the application configures it.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Names resolve lazily (PEP 562): a worker process that unpickles a parse task
# imports daskmri.parse (numpy, pydicom) without paying for xarray and pandas.
# The pipeline, stage by stage (see the README's Development section):
# layout (scan) -> plan -> execute (run) -> sinks / store (sink) -> batches.
_EXPORTS = {
    "synth": "daskmri.synth",
    "BatchIterator": "daskmri.batches",
    "BatchSchema": "daskmri.batches",
    "dropped": "daskmri.schema",
    "load_dataset": "daskmri.dataset",
    "build": "daskmri.store",
    "BuildReport": "daskmri.store",
    "open_dataset": "daskmri.store",
    "check": "daskmri.store",
    "Freshness": "daskmri.store",
    "StoreError": "daskmri.errors",
    "StaleStoreError": "daskmri.errors",
    "StaleStoreWarning": "daskmri.errors",
    "Record": "daskmri.record",
    "read_record": "daskmri.parse",
    "polygon_mask": "daskmri.contours",
    "read_contour": "daskmri.contours",
    "read_dicom": "daskmri.dicom",
    "ContourError": "daskmri.errors",
    "DaskmriError": "daskmri.errors",
    "DicomError": "daskmri.errors",
    "LayoutError": "daskmri.errors",
    "RecordError": "daskmri.errors",
    "SERIES": "daskmri.layout",
    "SUNNYBROOK": "daskmri.layout",
    "Layout": "daskmri.layout",
    "scan": "daskmri.layout",
    "Limits": "daskmri.limits",
    "show_versions": "daskmri.versions",
    "shutdown_local_workers": "daskmri.execute",
    "WorkerStartError": "daskmri.errors",
}


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "SERIES",
    "SUNNYBROOK",
    "BatchIterator",
    "BatchSchema",
    "BuildReport",
    "ContourError",
    "DaskmriError",
    "DicomError",
    "Freshness",
    "Layout",
    "LayoutError",
    "Limits",
    "Record",
    "RecordError",
    "StaleStoreError",
    "StaleStoreWarning",
    "StoreError",
    "WorkerStartError",
    "__version__",
    "build",
    "check",
    "dropped",
    "load_dataset",
    "open_dataset",
    "polygon_mask",
    "read_contour",
    "read_dicom",
    "read_record",
    "scan",
    "show_versions",
    "shutdown_local_workers",
    "synth",
]
