"""daskmri: MRI slices (DICOM with contours, NIfTI volumes with label maps) as a chunked
xarray Dataset of images and masks, built with Dask.

A typical session::

    import daskmri
    table, problems = daskmri.scan("final_data")  # every record, no pixel I/O
    ds = daskmri.load_dataset("final_data")   # image and a mask per contour kind, along record
    daskmri.dropped(ds)                        # what was left out, and why
"""

from __future__ import annotations

import logging

from ._lazy import lazy_exports

__version__ = "0.3.0"

# Library logging stays silent unless the application configures it.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Names resolve lazily (PEP 562): a worker process that unpickles a parse task
# imports daskmri.parse (numpy, pydicom) without paying for xarray and pandas.
# The pipeline, stage by stage (see docs/architecture.md):
# layout (scan) -> plan -> execute (run) -> sinks / store (sink) -> batches.
_EXPORTS = {
    "daskmri.synth": ("synth",),
    "daskmri.batches": ("BatchIterator", "BatchSchema"),
    "daskmri.batches.splitting": ("split",),
    "daskmri.schema": ("dropped",),
    "daskmri.dataset": ("load_dataset",),
    "daskmri.reporting": ("report", "ReportSummary"),
    "daskmri.store": ("build", "BuildReport", "open_dataset", "check", "Freshness"),
    "daskmri.errors": (
        "StoreError",
        "StaleStoreError",
        "StaleStoreWarning",
        "ContourError",
        "DaskmriError",
        "DicomError",
        "LayoutError",
        "RecordError",
        "RTStructError",
        "VolumeError",
        "WorkerStartError",
    ),
    "daskmri.record": ("Problem", "Record", "Scan", "VolumePlane"),
    "daskmri.parse": ("read_record",),
    "daskmri.contours": ("polygon_mask", "read_contour"),
    "daskmri.dicom": ("read_dicom",),
    "daskmri.layout": ("scan",),
    "daskmri.sources.dicom_contours": ("SERIES", "SUNNYBROOK", "ContourKind", "Layout"),
    "daskmri.sources.dicom_rtstruct": ("RTStruct",),
    "daskmri.sources.volumes": ("ACDC", "MNMS", "MSD_HEART", "Phases", "VolumeLayout"),
    "daskmri.limits": ("Limits",),
    "daskmri.fit": ("to_source",),
    "daskmri.versions": ("show_versions",),
    "daskmri.execute": ("shutdown_local_workers",),
}


__getattr__, __dir__, _NAMES = lazy_exports(globals(), _EXPORTS)

__all__ = [*_NAMES, "__version__"]
