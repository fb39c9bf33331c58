"""The Zarr store: the durable form of a dataset, written by the workers chunk by
chunk, resumable after a crash, and checked against its inputs.

Layout of a store (a Zarr v3 group)::

    image     float32 (slot, y, x)   chunks (chunk_size, y, x)   written by the chunk tasks
    icontour  bool    (slot, y, x)   chunks (chunk_size, y, x)   written by the chunk tasks
    ocontour  bool    (slot, y, x)   chunks (chunk_size, y, x)   written by the chunk tasks
    done      str     (chunk,)       chunks (1,)                 a task's marker, written last
    status    int8    (slot,)        pending / ok / dropped / retired, written by the client
    has_icontour, has_ocontour, patient_id, original_id, instance, fingerprint  (slot,)

There is one slot per planned record, so every chunk task knows its region before
it runs and a retried task rewrites exactly that region: no record can be doubled
or lost. A record that fails leaves its slot as fill values (zeros, which compress
to nothing) and its reason in the chunk's ``done`` marker. The marker is written
after the pixels, and the group's ``complete`` attribute is set only after every
marker and the per-slot tables, so an unfinished store is never mistaken for a
complete one. :func:`open_dataset` returns the ``ok`` slots.

This module is imported by worker processes (:func:`write_partition`), so xarray
and pandas are imported only inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StaleStoreWarning, StoreError
from .parse import Parsed, Record, parse_chunk

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["Freshness", "StoreSpec", "check", "open_dataset"]

logger = logging.getLogger(__name__)

#: Bumped when the layout of a store changes incompatibly.
FORMAT = 1

PENDING, OK, DROPPED, RETIRED = 0, 1, 2, 3
STATUS_NAMES = {PENDING: "pending", OK: "ok", DROPPED: "dropped", RETIRED: "retired"}

PIXELS = ("image", "icontour", "ocontour")
#: Per-slot tables are small; a large chunk keeps them to a few objects in the store.
TABLE_CHUNK = 1 << 17

#: Compressors measured by ``benchmarks/scale.py``; the default won on the real sample.
COMPRESSORS = ("zstd", "lz4", "none")
DEFAULT_COMPRESSOR = "zstd"


@dataclass(frozen=True)
class StoreSpec:
    """Where a store lives: a local path or an fsspec URL that zarr accepts,
    plus fsspec ``storage_options``. Small and picklable: each chunk task gets one
    and opens the store itself, so pixels never pass through the client."""

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, store: str | os.PathLike[str], storage_options: dict | None = None) -> StoreSpec:
        url = os.fspath(store)
        # A file:// URL is a local path; zarr's local store creates folders as needed,
        # where fsspec's local filesystem would not.
        url = url.removeprefix("file://")
        if "://" not in url:
            url = os.path.abspath(url)
        return cls(url, tuple(sorted((storage_options or {}).items())))

    def _options(self) -> dict:
        # zarr only accepts storage_options for URLs.
        return {"storage_options": dict(self.storage_options)} if "://" in self.url else {}

    def exists(self) -> bool:
        import zarr

        try:
            zarr.open_group(self.url, mode="r", **self._options())
        except (
            FileNotFoundError,
            zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError,
        ):
            return False
        return True

    def group(self, mode: str = "r"):
        import zarr

        try:
            return zarr.open_group(self.url, mode=mode, **self._options())
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(
                f"no Zarr store at {self.url!r}; make one with daskmri.build(root, store)"
            ) from exc

    def array(self, name: str, mode: str = "r+"):
        import zarr

        return zarr.open_array(self.url, path=name, mode=mode, **self._options())

    def remove(self) -> None:
        """Delete the whole store (``mode="overwrite"``)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _codecs(compressor: str) -> dict:
    from zarr.codecs import BloscCodec, ZstdCodec

    if compressor == "zstd":
        return {"compressors": [ZstdCodec(level=3)]}
    if compressor == "lz4":
        return {"compressors": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]}
    if compressor == "none":
        return {"compressors": None}
    raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")


# -- fingerprints ---------------------------------------------------------------


def _stat(path: str | None, root: str) -> str:
    if path is None:
        return "-"
    try:
        st = os.stat(path)
    except OSError:
        return f"{os.path.relpath(path, root)}:missing"
    return f"{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns}"


def record_fingerprints(records: Sequence[Record], root: str | os.PathLike[str]) -> np.ndarray:
    """One 64-bit fingerprint per record: path (relative to ``root``), size and
    modification time of each of its files. A touched, replaced or removed file
    changes it; moving the whole root does not.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> from daskmri.dataset import plan_chunks
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(16, 16))
    >>> records = plan_chunks(daskmri.scan(root)).chunks[0]
    >>> fingerprints = record_fingerprints(records, root)
    >>> fingerprints.dtype, len(set(fingerprints)) == len(records)
    (dtype('uint64'), True)
    """
    root = os.fspath(root)
    out = np.empty(len(records), dtype=np.uint64)
    for k, r in enumerate(records):
        text = "|".join(
            (_stat(r.dicom_path, root), _stat(r.icontour_path, root), _stat(r.ocontour_path, root))
        )
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        out[k] = int.from_bytes(digest, "little")
    return out


def input_fingerprint(
    *,
    keys: Sequence[tuple[str, int]],
    fingerprints: np.ndarray,
    settings: dict,
    problems: Sequence[dict],
    link_stat: str,
) -> str:
    """Fingerprint of everything a build reads: every record's files, the link
    file, the problems the scan found, and the settings (layout, labels, ...)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(link_stat.encode())
    h.update(json.dumps(sorted(json.dumps(p, sort_keys=True) for p in problems)).encode())
    for (patient, instance), fp in zip(keys, fingerprints.tolist(), strict=True):
        h.update(f"{patient}\0{instance}\0{fp}\n".encode())
    return h.hexdigest()


# -- creating and writing -------------------------------------------------------


def create(
    spec: StoreSpec,
    *,
    n_slots: int,
    chunk_size: int,
    shape: tuple[int, int],
    compressor: str,
    attrs: dict,
) -> None:
    """Make an empty store: every array at its full size, filled with nothing yet,
    and ``complete`` false."""
    import zarr

    codecs = _codecs(compressor)
    group = zarr.open_group(spec.url, mode="w", zarr_format=3, **spec._options())
    rows, columns = shape
    n_chunks = -(-n_slots // chunk_size)
    for name, dtype, fill in (
        ("image", "float32", 0.0),
        ("icontour", "bool", False),
        ("ocontour", "bool", False),
    ):
        group.create_array(
            name,
            shape=(n_slots, rows, columns),
            chunks=(chunk_size, rows, columns),
            dtype=dtype,
            fill_value=fill,
            dimension_names=("record", "y", "x"),
            **codecs,
        )
    table_chunk = max(1, min(TABLE_CHUNK, n_slots))
    for name, dtype, fill in (
        ("status", "int8", PENDING),
        ("has_icontour", "bool", False),
        ("has_ocontour", "bool", False),
        ("instance", "int64", 0),
        ("fingerprint", "uint64", 0),
        ("patient_id", str, ""),
        ("original_id", str, ""),
    ):
        group.create_array(
            name,
            shape=(n_slots,),
            chunks=(table_chunk,),
            dtype=dtype,
            fill_value=fill,
            dimension_names=("record",),
        )
    # One object per chunk: each task writes its own marker, so no two tasks ever
    # write the same object.
    group.create_array(
        "done", shape=(n_chunks,), chunks=(1,), dtype=str, fill_value="", dimension_names=("chunk",)
    )
    group.attrs.update(attrs | {"complete": False, "format": FORMAT})


def write_slots(
    spec: StoreSpec, start: int, records: Sequence[Record], fingerprints: np.ndarray
) -> None:
    """Write the planned records' identities into slots ``start ..`` (client side)."""
    stop = start + len(records)
    if stop == start:
        return
    spec.array("patient_id")[start:stop] = np.array([r.patient_id for r in records], dtype=object)
    spec.array("original_id")[start:stop] = np.array([r.original_id for r in records], dtype=object)
    spec.array("instance")[start:stop] = np.array([r.instance for r in records], dtype=np.int64)
    spec.array("fingerprint")[start:stop] = fingerprints


def write_partition(
    items: list[tuple[int, Record]],
    shape: tuple[int, int],
    reader: Callable[[Record], Parsed],
    spec: StoreSpec,
    chunk_size: int,
) -> list[dict]:
    """One chunk task: parse the records and write them into their slots, then the
    chunk's ``done`` marker. Rerunning it rewrites the same objects with the same
    bytes, so a retry is harmless. Returns the marker (no pixels)."""
    records = [record for _, record in items]
    start = items[0][0]
    stop = start + len(records)
    result = parse_chunk(records, shape=shape, reader=reader, compact=False)
    for name in PIXELS:
        spec.array(name)[start:stop] = getattr(result, name)
    has_i = np.zeros(len(records), dtype=bool)
    has_o = np.zeros(len(records), dtype=bool)
    has_i[result.kept], has_o[result.kept] = result.has_icontour, result.has_ocontour
    marker = {
        "chunk": start // chunk_size,
        "kept": result.kept.tolist(),
        "has_icontour": has_i.tolist(),
        "has_ocontour": has_o.tolist(),
        # The slot of each dropped record, so a later update can retire it.
        "dropped": [
            row | {"slot": start + records.index(r)}
            for row, r in zip(result.dropped, _dropped_records(records, result.kept), strict=True)
        ],
    }
    # Last: the marker says the pixels above are in place.
    spec.array("done")[marker["chunk"]] = json.dumps(marker)
    return [marker]


def _dropped_records(records: Sequence[Record], kept: np.ndarray) -> list[Record]:
    keep = set(kept.tolist())
    return [r for k, r in enumerate(records) if k not in keep]


# -- reading the state ----------------------------------------------------------


@dataclass(frozen=True)
class StoreState:
    """What a store holds, read back by the client (no pixels)."""

    attrs: dict
    patient_id: np.ndarray
    original_id: np.ndarray
    instance: np.ndarray
    fingerprint: np.ndarray
    status: np.ndarray
    has_icontour: np.ndarray
    has_ocontour: np.ndarray
    markers: dict[int, dict]

    @property
    def n_slots(self) -> int:
        return len(self.status)

    @property
    def chunk_size(self) -> int:
        return int(self.attrs["chunk_size"])


def read_state(spec: StoreSpec, *, markers: bool = True) -> StoreState:
    """Read a store's per-slot tables and, with ``markers``, every chunk marker,
    folding the markers into ``status``/``has_*`` (a crashed build may have markers
    the client never folded in)."""
    group = spec.group("r")
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT or "chunk_size" not in attrs:
        raise StoreError(
            f"{spec.url!r} is not a daskmri store (format {attrs.get('format')!r}); "
            "build one with daskmri.build(root, store), or pass mode='overwrite' to replace it"
        )
    status = np.asarray(group["status"][:], dtype=np.int8)
    has_i = np.asarray(group["has_icontour"][:], dtype=bool)
    has_o = np.asarray(group["has_ocontour"][:], dtype=bool)
    found: dict[int, dict] = {}
    if markers:
        chunk_size = int(attrs["chunk_size"])
        for k, text in enumerate(group["done"][:].tolist()):
            if not text:
                continue
            marker = json.loads(text)
            found[k] = marker
            start = k * chunk_size
            n = len(marker["has_icontour"])
            region = slice(start, start + n)
            fresh = status[region] != RETIRED
            values = np.full(n, DROPPED, dtype=np.int8)
            values[marker["kept"]] = OK
            status[region] = np.where(fresh, values, RETIRED)
            has_i[region] = marker["has_icontour"]
            has_o[region] = marker["has_ocontour"]
    return StoreState(
        attrs=attrs,
        patient_id=np.asarray(group["patient_id"][:], dtype=object),
        original_id=np.asarray(group["original_id"][:], dtype=object),
        instance=np.asarray(group["instance"][:], dtype=np.int64),
        fingerprint=np.asarray(group["fingerprint"][:], dtype=np.uint64),
        status=status,
        has_icontour=has_i,
        has_ocontour=has_o,
        markers=found,
    )


def dropped_rows(state: StoreState) -> list[dict]:
    """The scan's drops plus every dropped slot that is still current."""
    rows = list(json.loads(state.attrs.get("scan_dropped", "[]")))
    for marker in state.markers.values():
        for row in marker["dropped"]:
            if state.status[row["slot"]] == DROPPED:
                rows.append({k: v for k, v in row.items() if k != "slot"})
    return rows


# -- opening --------------------------------------------------------------------


def _select(array, keep_per_block: list[np.ndarray]):
    """The ``keep`` slots of each block of ``array``, one output chunk per store
    chunk: chunks stay aligned with the store, which dask's fancy indexing does not
    guarantee (it regroups the selected slots into chunks of its own)."""
    import operator

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = "daskmri-select-" + tokenize(array.name, [k.tobytes() for k in keep_per_block])
    graph: dict = {}
    sizes: list[int] = []
    for block, keep in enumerate(keep_per_block):
        if len(keep) == 0:
            continue
        source = (array.name, block, 0, 0)
        out = (name, len(sizes), 0, 0)
        if len(keep) == array.chunks[0][block]:
            graph[out] = (operator.getitem, source, (slice(None),))
        else:
            graph[out] = (operator.getitem, source, (keep,))
        sizes.append(len(keep))
    if not sizes:
        return da.zeros((0, *array.shape[1:]), dtype=array.dtype, chunks=-1)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[array])
    return da.Array(hlg, name, chunks=((*sizes,), *array.chunks[1:]), dtype=array.dtype)


def open_dataset(
    store: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open a store made by :func:`daskmri.build` as the daskmri dataset, lazily.

    Parameters
    ----------
    store : str or os.PathLike
        Local path or fsspec URL of the store.
    root : str or os.PathLike, optional
        The dataset folder. When given, the store is checked against it and a
        :class:`~daskmri.errors.StaleStoreWarning` says what changed since the build.
    storage_options : dict, optional
        Passed to fsspec for URLs.

    Returns
    -------
    xarray.Dataset
        The same variables, coordinates and attributes as
        :func:`daskmri.load_dataset`, dask-backed, one ``record`` chunk per store
        chunk (less the records that were dropped from it). Reading a chunk reads
        one object per variable from the store.

    Raises
    ------
    StoreError
        If there is no store there, it is not a daskmri store, or its build never
        finished (run the same ``daskmri.build`` again to finish it).

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=9, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> _ = daskmri.build(root, store, chunk_size=4, scheduler="sync")
    >>> ds = daskmri.open_dataset(store)
    >>> ds.sizes["record"], ds.image.chunks[0]
    (6, (4, 2))
    """
    import dask.array as da
    import xarray as xr

    spec = StoreSpec.of(store, storage_options)
    state = read_state(spec, markers=False)
    attrs = state.attrs
    if not attrs.get("complete"):
        raise StoreError(
            f"the build of {spec.url!r} never finished, so it may lack records; run the same "
            "daskmri.build(...) (or `daskmri build`) again to finish it: complete chunks are "
            "kept, the rest are parsed"
        )
    chunk_size = int(attrs["chunk_size"])
    ok = state.status == OK
    starts = range(0, state.n_slots, chunk_size)
    keep_per_block = [np.flatnonzero(ok[s : s + chunk_size]) for s in starts]
    group = spec.group("r")
    arrays = {
        name: _select(da.from_zarr(group[name], chunks=group[name].chunks), keep_per_block)
        for name in PIXELS
    }
    ds = xr.Dataset(
        {name: (("record", "y", "x"), array) for name, array in arrays.items()}
        | {
            "has_icontour": ("record", state.has_icontour[ok]),
            "has_ocontour": ("record", state.has_ocontour[ok]),
        },
        coords={
            "patient_id": ("record", state.patient_id[ok].astype(str)),
            "original_id": ("record", state.original_id[ok].astype(str)),
            "instance": ("record", state.instance[ok]),
        },
        attrs={
            key: attrs[key]
            for key in (
                "title",
                "source",
                "layout",
                "labels",
                "chunk_size",
                "created_by",
                "created",
                "input_fingerprint",
                "compressor",
            )
            if key in attrs
        }
        | {"dropped": attrs.get("dropped", "[]"), "store": spec.url},
    )
    _describe(ds)
    if root is not None:
        freshness = check(store, root, storage_options=storage_options)
        if not freshness.fresh:
            warnings.warn(str(freshness), StaleStoreWarning, stacklevel=2)
    return ds


def _describe(ds: xr.Dataset) -> None:
    ds["image"].attrs.update(long_name="pixel value after the DICOM modality rescale")
    ds["icontour"].attrs.update(long_name="inside the inner (i) contour")
    ds["ocontour"].attrs.update(long_name="inside the outer (o) contour")


# -- freshness ------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """How a store compares with the files it was built from.

    ``changed``, ``added`` and ``removed`` list ``(patient_id, instance)`` keys;
    ``other`` is true when something outside the records changed (the link file,
    a file the scan reported as a problem, the layout).
    """

    store: str
    root: str
    complete: bool
    changed: tuple[tuple[str, int], ...] = ()
    added: tuple[tuple[str, int], ...] = ()
    removed: tuple[tuple[str, int], ...] = ()
    other: bool = False

    @property
    def fresh(self) -> bool:
        return self.complete and not (self.changed or self.added or self.removed or self.other)

    def __str__(self) -> str:
        if self.fresh:
            return f"{self.store} is up to date with {self.root}"
        parts = []
        if not self.complete:
            parts.append("its build never finished")
        for label, keys in (
            ("changed", self.changed),
            ("added", self.added),
            ("removed", self.removed),
        ):
            if keys:
                shown = ", ".join(f"{p}/{i}" for p, i in keys[:5])
                more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} record(s) {label} ({shown}{more})")
        if self.other:
            parts.append("the link file, the layout or a file outside the records changed")
        return (
            f"{self.store} is stale against {self.root}: {'; '.join(parts)}. "
            "Bring it up to date with daskmri.build(..., mode='update') "
            "(or `daskmri build ROOT --out STORE --mode update`), "
            "which re-parses only those records"
        )


def check(
    store: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    storage_options: dict | None = None,
) -> Freshness:
    """Compare a store with its dataset folder (by default the folder it was built from).

    The folder is scanned again with the store's layout and labels, and every
    file's size and modification time is compared with the fingerprints kept in
    the store. No pixel is read.

    Returns
    -------
    Freshness
        ``fresh`` is true when nothing changed and the build finished; ``str()``
        of it says what changed and how to fix it.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> _ = daskmri.build(root, store, scheduler="sync")
    >>> daskmri.check(store).fresh
    True
    >>> (root / "dicoms" / "SYN0001" / "2.dcm").touch()
    >>> daskmri.check(store).changed
    (('SYN0001', 2),)
    """
    from .dataset import _plan_inputs
    from .layout import Layout

    spec = StoreSpec.of(store, storage_options)
    state = read_state(spec)
    attrs = state.attrs
    root = attrs["source"] if root is None else os.fspath(root)
    inputs = _plan_inputs(
        root,
        layout=Layout.from_dict(json.loads(attrs["layout"])),
        labels=attrs["labels"],
        chunk_size=int(attrs["chunk_size"]),
    )
    diff = reconcile(state, inputs.keys, inputs.fingerprints)
    current = state.status != RETIRED
    stored = {
        (p, int(i)): int(f)
        for p, i, f in zip(
            state.patient_id[current],
            state.instance[current],
            state.fingerprint[current],
            strict=True,
        )
    }
    changed = tuple(k for k in diff.added if k in stored)
    added = tuple(k for k in diff.added if k not in stored)
    new_keys = set(inputs.keys)
    removed = tuple(sorted({k for k in stored if k not in new_keys}))
    return Freshness(
        store=spec.url,
        root=os.fspath(root),
        complete=bool(attrs.get("complete")),
        changed=changed,
        added=added,
        removed=removed,
        other=inputs.fingerprint != attrs.get("input_fingerprint")
        and not (changed or added or removed),
    )


# -- reconciling a store with a new plan ----------------------------------------


@dataclass(frozen=True)
class Reconciled:
    """How to bring a store to a plan: ``reuse[i]`` is the slot already holding (or
    planned to hold) new record ``i``, or -1; ``added`` are the keys with no slot;
    ``retire`` the slots no record wants any more; ``rerun`` the chunks whose task
    must run (no marker yet)."""

    reuse: np.ndarray
    added: tuple[tuple[str, int], ...]
    retire: np.ndarray
    rerun: np.ndarray

    @property
    def unchanged(self) -> bool:
        return not self.added and len(self.retire) == 0


def reconcile(
    state: StoreState, keys: Sequence[tuple[str, int]], fingerprints: np.ndarray
) -> Reconciled:
    """Match each planned record (key and fingerprint) to a slot of the store."""
    chunk_size = state.chunk_size
    slot_of: dict[tuple[str, int, int], int] = {}
    done = np.zeros(state.n_slots, dtype=bool)
    for k, marker in state.markers.items():
        done[k * chunk_size : k * chunk_size + len(marker["has_icontour"])] = True
    # Prefer slots whose chunk is done, so that a record is never parsed twice.
    order = np.lexsort((~done,))
    for slot in order.tolist():
        if state.status[slot] == RETIRED:
            continue
        key = (state.patient_id[slot], int(state.instance[slot]), int(state.fingerprint[slot]))
        slot_of.setdefault(key, slot)
    reuse = np.full(len(keys), -1, dtype=np.int64)
    added = []
    for i, ((patient, instance), fp) in enumerate(zip(keys, fingerprints.tolist(), strict=True)):
        slot = slot_of.get((patient, int(instance), int(fp)), -1)
        reuse[i] = slot
        if slot < 0:
            added.append((patient, int(instance)))
    wanted = np.zeros(state.n_slots, dtype=bool)
    wanted[reuse[reuse >= 0]] = True
    retire = np.flatnonzero(~wanted & (state.status != RETIRED))
    n_chunks = -(-state.n_slots // chunk_size)
    undone = [k for k in range(n_chunks) if k not in state.markers]
    # A chunk none of whose slots is wanted any more need not run at all.
    rerun = [k for k in undone if wanted[k * chunk_size : (k + 1) * chunk_size].any()]
    return Reconciled(
        reuse=reuse,
        added=tuple(added),
        retire=retire,
        rerun=np.array(rerun, dtype=np.int64),
    )


def read_dropped(
    store: str | os.PathLike[str], *, storage_options: dict | None = None
) -> pd.DataFrame:
    """:func:`daskmri.dropped` of a store, without opening its dataset."""
    from .dataset import dropped_table

    attrs = StoreSpec.of(store, storage_options).group("r").attrs
    return dropped_table(json.loads(attrs.get("dropped", "[]")))
