"""The Zarr store: the durable form of a dataset, written by the workers chunk by
chunk, resumable after a crash, and checked against its inputs.

Layout of a store (a Zarr v3 group)::

    image     float32 (slot, y, x)   chunks (chunk_size, y, x)   written by the chunk tasks
    <kind>    bool    (slot, y, x)   chunks (chunk_size, y, x)   one per contour kind
                                                                 (the layout's kinds)
    done      str     (chunk,)       chunks (1,)                 a task's marker, written last
    status    int8    (slot,)        pending / ok / dropped / retired, written by the client
    has_<kind>, patient_id, original_id, instance, fingerprint  (slot,)

The kinds are the group's ``kinds`` attribute (a JSON list). A store of another
``format`` attribute (one made by daskmri 0.1) is refused, with the rebuild to run.

There is one slot per planned record, so every chunk task knows its region before
it runs and a retried task rewrites exactly that region: no record can be doubled
or lost. A record that fails leaves its slot as fill values (zeros, which compress
to nothing) and its reason in the chunk's ``done`` marker. The marker is written
after the pixels, and the group's ``complete`` attribute is set only after every
marker and the per-slot tables, so an unfinished store is never mistaken for a
complete one. :func:`open_dataset` returns the ``ok`` slots.

The package, by what each file holds:

=================  ==============================================================
``spec.py``        where a store lives; whether daskmri may write there
``format.py``      the arrays and attributes; create, resize, name slots, remove
``regions.py``     the sink: a chunk task writes its region, then its marker
``state.py``       what a store holds, read back; reconciling it with a new plan
``builder.py``     :func:`build`: the pipeline with this sink; resume and update
``freshness.py``   :func:`check`: the store against its folder's files
``reading.py``     :func:`open_dataset`, :func:`read_dropped`
``backend.py``     the xarray backend: ``xr.open_dataset(store, engine="daskmri")``
=================  ==============================================================

Worker processes import :mod:`daskmri.store.regions`, so no file here imports
xarray or pandas at the top.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# Lazy (PEP 562): a worker process imports daskmri.store.regions to run a chunk task,
# and should not import the builder (and the executors) with it.
_EXPORTS = {
    "daskmri.store.builder": ("MODES", "BuildReport", "build"),
    "daskmri.store.format": (
        "COMPRESSORS",
        "DEFAULT_COMPRESSOR",
        "DROPPED",
        "FORMAT",
        "OK",
        "PENDING",
        "RETIRED",
        "create",
        "read_attrs",
        "remove",
    ),
    "daskmri.store.freshness": ("AS_BUILT", "Freshness", "check"),
    "daskmri.store.reading": ("open_dataset", "read_dropped"),
    "daskmri.store.regions": ("ZarrRegions", "write_partition"),
    "daskmri.store.spec": (
        "StoreSpec",
        "claim",
        "made_by_daskmri",
        "refuse_inside_dataset",
        "what_is_there",
    ),
    "daskmri.store.state": ("StoreState", "read_state", "reconcile"),
}
__getattr__, __dir__, _NAMES = lazy_exports(globals(), _EXPORTS)

__all__ = _NAMES
