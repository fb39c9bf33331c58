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

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DaskmriError, StaleStoreWarning, StoreError
from .parse import Parsed, Record, parse_chunk

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["Freshness", "StoreSpec", "check", "claim", "open_dataset"]

logger = logging.getLogger(__name__)

#: Bumped when the layout of a store changes incompatibly. 2: original_id in the
#: record fingerprints, the ``planned`` and ``build_id`` attributes.
FORMAT = 2

PENDING, OK, DROPPED, RETIRED = 0, 1, 2, 3
STATUS_NAMES = {PENDING: "pending", OK: "ok", DROPPED: "dropped", RETIRED: "retired"}

PIXELS = ("image", "icontour", "ocontour")
MARKER_BATCH = 4096
#: Per-slot tables are small; a large chunk keeps them to a few objects in the store.
TABLE_CHUNK = 1 << 17

#: Compressors measured by ``benchmarks/scale.py``; the default won on the real sample.
COMPRESSORS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
DEFAULT_COMPRESSOR = "blosc-zstd"


def _zarr():
    """zarr, or an error that says why it is missing: zarr 3 needs Python 3.11, so on
    Python 3.10 daskmri installs without it and everything but the store works."""
    try:
        import zarr
    except ImportError:
        import sys

        raise DaskmriError(
            "the Zarr store (build, open_dataset, check) needs zarr>=3.0.8, which is not "
            f"installed; zarr 3 needs Python 3.11 or newer (this is {sys.version.split()[0]}). "
            "load_dataset and BatchIterator work without it"
        ) from None
    return zarr


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
        zarr = _zarr()

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
        zarr = _zarr()

        try:
            return zarr.open_group(self.url, mode=mode, **self._options())
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(
                f"no Zarr store at {self.url!r}; make one with daskmri.build(root, store)"
            ) from exc

    def array(self, name: str, mode: str = "r+"):
        zarr = _zarr()

        return zarr.open_array(self.url, path=name, mode=mode, **self._options())

    def filesystem(self):
        """The fsspec filesystem and the path in it.

        Raises
        ------
        StoreError
            If fsspec cannot open the URL (an unknown protocol, a backend such as s3fs
            that is not installed).
        """
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        except (ImportError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            raise StoreError(
                f"cannot open the store {self.url!r}: {reason}; check the URL, and install "
                "the fsspec backend for its protocol (s3fs for s3://, gcsfs for gs://, ...)"
            ) from None

    def remove(self) -> None:
        """Delete what daskmri made of the store (``mode="overwrite"``): its arrays and
        its group's metadata, never anything else in its folder. Does nothing unless
        a daskmri store is there (see :func:`claim`)."""
        if what_is_there(self) != "daskmri":
            return
        fs, path = self.filesystem()
        # First say it is incomplete: a deletion cut short must not leave arrays whose
        # chunks are gone under a group that still claims to be complete. The group's
        # metadata goes last, so what is left is still known as a daskmri store.
        # Not `planned` either: a build that finds a removal cut short starts again.
        with contextlib.suppress(Exception):
            self.group("r+").attrs.update({"complete": False, "planned": False})
        for name in ENTRIES:
            entry = f"{path.rstrip('/')}/{name}"
            if fs.isfile(f"{entry}/zarr.json"):
                fs.rm(entry, recursive=True)
        fs.rm(f"{path.rstrip('/')}/zarr.json")


def what_is_there(spec: StoreSpec) -> str:
    """What the store's path holds: ``"absent"``, ``"empty"`` (a folder with
    nothing in it), ``"daskmri"`` (a store daskmri made, of any format), ``"file"``,
    ``"zarr"`` (a Zarr node daskmri did not make) or ``"other"`` (a folder of other
    things). Reads one small metadata object at most."""
    fs, path = spec.filesystem()
    if not fs.exists(path):
        return "absent"
    if not fs.isdir(path):
        return "file"
    if not fs.ls(path, detail=False):
        return "empty"
    metadata = f"{path.rstrip('/')}/zarr.json"
    if not fs.isfile(metadata):
        return "other"
    try:
        node = json.loads(fs.cat_file(metadata))
    except (OSError, ValueError):
        return "other"
    if not isinstance(node, dict) or node.get("node_type") != "group":
        return "zarr"
    return "daskmri" if made_by_daskmri(node.get("attributes")) else "zarr"


def made_by_daskmri(attrs: Any) -> bool:
    """Whether a Zarr group's attributes are those of a store daskmri made (of any
    format). Every such store says so in ``created_by``: a format number and a chunk
    size alone could be anyone's."""
    if not isinstance(attrs, dict):
        return False
    signed = str(attrs.get("created_by", "")).startswith("daskmri ")
    return signed and isinstance(attrs.get("format"), int) and "chunk_size" in attrs


def claim(spec: StoreSpec, *, root: str | os.PathLike[str] | None = None) -> str:
    """Check, before anything is written, that daskmri may write a store at ``spec``:
    the path is absent, an empty folder or a daskmri store, and it neither is, holds
    nor lies inside the dataset folder ``root``. Returns :func:`what_is_there`.

    Raises
    ------
    StoreError
        Naming the path, what is there, and the fix. Every ``mode`` is refused
        alike: ``"overwrite"`` replaces only a daskmri store.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> claim(StoreSpec.of(folder / "new.zarr")), claim(StoreSpec.of(folder))
    ('absent', 'empty')
    >>> _ = (folder / "thesis.txt").write_text("years of work")
    >>> claim(StoreSpec.of(folder))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.StoreError: ... holds files that daskmri did not make ...
    """
    if root is not None:
        fs, path = spec.filesystem()
        if getattr(fs, "local_file", False):  # a path, file://, local://, ...
            refuse_inside_dataset(path, root, what="the store path")
    there = what_is_there(spec)
    fix = "pass a path that does not exist yet (or an empty folder) for the store"
    if there == "file":
        raise StoreError(f"{spec.url!r} is a file, not a daskmri store; {fix}")
    if there == "zarr":
        raise StoreError(
            f"{spec.url!r} is a Zarr store that daskmri did not make, and daskmri never "
            f"overwrites what it did not make (not even with mode='overwrite'); {fix}"
        )
    if there == "other":
        fs, path = spec.filesystem()
        names = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise StoreError(
            f"{spec.url!r} holds files that daskmri did not make ({shown}), and daskmri "
            f"never deletes or overwrites them (not even with mode='overwrite'); {fix}"
        )
    return there


def refuse_inside_dataset(
    path: str | os.PathLike[str], root: str | os.PathLike[str], *, what: str = "the path"
) -> None:
    """Refuse to write at ``path`` when it is the dataset folder ``root``, holds it, or
    lies inside it (links resolved).

    Raises
    ------
    StoreError
        Saying which, and to write outside the dataset folder.
    """
    path, root = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(root))
    if path == root or _inside(root, path):
        raise StoreError(
            f"{what} {path!r} is (or holds) the dataset folder {root!r}; writing "
            "there would destroy the dataset. Write outside the dataset folder"
        )
    if _inside(path, root):
        raise StoreError(
            f"{what} {path!r} lies inside the dataset folder {root!r}, which "
            "daskmri reads; write outside the dataset folder"
        )


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder


def _codecs(compressor: str) -> dict:
    _zarr()
    from zarr.codecs import BloscCodec, ZstdCodec

    # Byte shuffle groups the float32 bytes by significance before compressing:
    # on the real sample it gained ~15% ratio and ~2x decode speed over plain zstd.
    if compressor == "blosc-zstd":
        return {"compressors": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]}
    if compressor == "blosc-lz4":
        return {"compressors": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]}
    if compressor == "zstd":
        return {"compressors": [ZstdCodec(level=3)]}
    if compressor == "none":
        return {"compressors": None}
    raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")


# -- fingerprints ---------------------------------------------------------------


def _relative(path: str, root: str) -> str:
    # Scanned paths start with the root; os.path.relpath is 10x slower for the same answer.
    prefix = root.rstrip(os.sep) + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)


def _stat(path: str | None, root: str) -> str:
    if path is None:
        return "-"
    try:
        st = os.stat(path)
    except OSError:
        return f"{_relative(path, root)}:missing"
    return f"{_relative(path, root)}:{st.st_size}:{st.st_mtime_ns}"


def _hash64(text: str) -> int:
    # Never 0: a fingerprint of 0 marks a slot whose identity was never written.
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1


def record_key(patient_id: str, instance: int) -> int:
    """A record's identity as one 64-bit number (its patient and instance)."""
    return _hash64(f"{patient_id}\0{int(instance)}")


def record_fingerprint(record: Record, root: str) -> int:
    """A record's identity (both ids and the instance) and the path (relative to
    ``root``), size and modification time of each of its files, as one 64-bit
    number. A touched, replaced or removed file, or a new pairing in the link file,
    changes it; moving the whole root does not.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(16, 16))
    >>> from daskmri.dataset import iter_plan
    >>> record = next(iter_plan(root, problems=[]))
    >>> before = record_fingerprint(record, str(root))
    >>> import os; os.utime(record.dicom_path, ns=(0, 0))
    >>> record_fingerprint(record, str(root)) != before
    True
    """
    files = "|".join(
        _stat(path, root)
        for path in (record.dicom_path, record.icontour_path, record.ocontour_path)
    )
    ids = f"{record.patient_id}\0{record.original_id}\0{record.instance}"
    return _hash64(f"{ids}\0{files}")


class InputHash:
    """The fingerprint of everything a build reads, fed one record at a time."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def add(self, fingerprint: int) -> None:
        self._h.update(fingerprint.to_bytes(8, "little"))

    def hexdigest(self, *, settings: dict, problems: Sequence[dict], link_stat: str) -> str:
        h = self._h.copy()
        h.update(json.dumps(settings, sort_keys=True).encode())
        h.update(link_stat.encode())
        h.update(json.dumps(sorted(json.dumps(p, sort_keys=True) for p in problems)).encode())
        return h.hexdigest()


# -- creating and writing -------------------------------------------------------

PER_SLOT = (
    ("status", "int8", PENDING),
    ("has_icontour", "bool", False),
    ("has_ocontour", "bool", False),
    ("instance", "int64", 0),
    ("key", "uint64", 0),
    ("fingerprint", "uint64", 0),
    ("patient_id", str, ""),
    ("original_id", str, ""),
)

#: What a store is made of, besides its group's metadata: :func:`StoreSpec.remove`
#: deletes these and nothing else.
ENTRIES = (*PIXELS, *(name for name, _, _ in PER_SLOT), "done")


def create(
    spec: StoreSpec,
    *,
    chunk_size: int,
    shape: tuple[int, int],
    compressor: str,
    attrs: dict,
) -> None:
    """Make an empty store (no slots yet) with ``complete`` false; slots are added
    by :func:`append_slots`."""
    zarr = _zarr()

    codecs = _codecs(compressor)
    # Never mode="w": zarr would empty the folder first. The attributes go in the
    # group's first metadata: a build killed from here on finds a daskmri store that
    # is not `planned` yet, and starts again.
    group = zarr.create_group(
        spec.url,
        overwrite=False,
        zarr_format=3,
        attributes=attrs | {"complete": False, "planned": False, "format": FORMAT},
        **spec._options(),
    )
    rows, columns = max(1, shape[0]), max(1, shape[1])
    for name, dtype, fill in (
        ("image", "float32", 0.0),
        ("icontour", "bool", False),
        ("ocontour", "bool", False),
    ):
        group.create_array(
            name,
            shape=(0, *shape),
            chunks=(chunk_size, rows, columns),
            dtype=dtype,
            fill_value=fill,
            dimension_names=("record", "y", "x"),
            **codecs,
        )
    for name, dtype, fill in PER_SLOT:
        group.create_array(
            name,
            shape=(0,),
            chunks=(TABLE_CHUNK,),
            dtype=dtype,
            fill_value=fill,
            dimension_names=("record",),
        )
    # One object per chunk: each task writes its own marker, so no two tasks ever
    # write the same object.
    group.create_array(
        "done", shape=(0,), chunks=(1,), dtype=str, fill_value="", dimension_names=("chunk",)
    )


def resize(spec: StoreSpec, n_slots: int) -> None:
    """Grow (or shrink) every per-slot array to ``n_slots`` slots."""
    group = spec.group("r+")
    chunk_size = int(group.attrs["chunk_size"])
    for name in PIXELS:
        array = group[name]
        array.resize((n_slots, *array.shape[1:]))
    for name, _, _ in PER_SLOT:
        group[name].resize((n_slots,))
    group["done"].resize((-(-n_slots // chunk_size),))


def write_slots(
    spec: StoreSpec, start: int, records: Sequence[Record], fingerprints: Sequence[int]
) -> None:
    """Write planned records' identities into slots ``start ..`` (client side)."""
    stop = start + len(records)
    if stop == start:
        return
    spec.array("patient_id")[start:stop] = np.array([r.patient_id for r in records], dtype=object)
    spec.array("original_id")[start:stop] = np.array([r.original_id for r in records], dtype=object)
    spec.array("instance")[start:stop] = np.array([r.instance for r in records], dtype=np.int64)
    spec.array("key")[start:stop] = np.array(
        [record_key(r.patient_id, r.instance) for r in records], dtype=np.uint64
    )
    spec.array("fingerprint")[start:stop] = np.asarray(fingerprints, dtype=np.uint64)


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
    """What a store holds, read back by the client: compact per-slot arrays (no
    pixels, and the string ids only when asked for)."""

    attrs: dict
    key: np.ndarray
    fingerprint: np.ndarray
    status: np.ndarray
    has_icontour: np.ndarray
    has_ocontour: np.ndarray
    done: np.ndarray
    dropped: dict[int, list[dict]]
    patient_id: np.ndarray | None = None
    original_id: np.ndarray | None = None
    instance: np.ndarray | None = None

    @property
    def n_slots(self) -> int:
        return len(self.status)

    @property
    def chunk_size(self) -> int:
        return int(self.attrs["chunk_size"])


def read_attrs(spec: StoreSpec) -> dict:
    attrs = dict(spec.group("r").attrs)
    if not made_by_daskmri(attrs):
        raise StoreError(
            f"{spec.url!r} is not a daskmri store; build one with daskmri.build(root, store) "
            "at a path that does not exist yet"
        )
    if attrs["format"] != FORMAT:
        raise StoreError(
            f"{spec.url!r} was made by another version of daskmri (store format "
            f"{attrs['format']}, this version reads {FORMAT}); rebuild it with "
            "daskmri.build(..., mode='overwrite')"
        )
    return attrs


def repair(spec: StoreSpec) -> None:
    """Give every per-slot array the same length: a build killed while growing them
    leaves some longer than others. The extra slots have no identity, so the next
    build retires them."""
    group = spec.group("r")
    lengths = {name: group[name].shape[0] for name in (*PIXELS, *(n for n, _, _ in PER_SLOT))}
    if len(set(lengths.values())) > 1:
        logger.warning("per-slot arrays of %s have lengths %s; evening them", spec.url, lengths)
        resize(spec, max(lengths.values()))


def read_state(spec: StoreSpec, *, markers: bool = True, names: bool = False) -> StoreState:
    """Read a store's per-slot tables and, with ``markers``, every chunk marker,
    folding the markers into ``status``/``has_*`` (a killed build may have left
    markers the client never folded in). Markers are read one at a time, so memory
    stays at a few bytes per slot."""
    attrs = read_attrs(spec)
    group = spec.group("r")
    status = np.asarray(group["status"][:], dtype=np.int8)
    has_i = np.asarray(group["has_icontour"][:], dtype=bool)
    has_o = np.asarray(group["has_ocontour"][:], dtype=bool)
    chunk_size = int(attrs["chunk_size"])
    done = np.zeros(-(-len(status) // chunk_size), dtype=bool)
    dropped: dict[int, list[dict]] = {}
    if markers:
        # In batches: a million records' markers hold ~20 MB of JSON text.
        for lo in range(0, len(done), MARKER_BATCH):
            texts = group["done"][lo : lo + MARKER_BATCH]
            for j in np.flatnonzero(texts != ""):
                k = lo + int(j)
                marker = json.loads(texts[j])
                done[k] = True
                if marker["dropped"]:
                    dropped[k] = marker["dropped"]
                start = k * chunk_size
                n = len(marker["has_icontour"])
                region = slice(start, start + n)
                values = np.full(n, DROPPED, dtype=np.int8)
                values[marker["kept"]] = OK
                status[region] = np.where(status[region] == RETIRED, RETIRED, values)
                has_i[region] = marker["has_icontour"]
                has_o[region] = marker["has_ocontour"]
    extra = {}
    if names:
        extra = {
            "patient_id": np.asarray(group["patient_id"][:], dtype=object),
            "original_id": np.asarray(group["original_id"][:], dtype=object),
            "instance": np.asarray(group["instance"][:], dtype=np.int64),
        }
    return StoreState(
        attrs=attrs,
        key=np.asarray(group["key"][:], dtype=np.uint64),
        fingerprint=np.asarray(group["fingerprint"][:], dtype=np.uint64),
        status=status,
        has_icontour=has_i,
        has_ocontour=has_o,
        done=done,
        dropped=dropped,
        **extra,
    )


def dropped_rows(state: StoreState, scan_dropped: Sequence[dict]) -> list[dict]:
    """The scan's drops plus every dropped slot that is still current."""
    rows = list(scan_dropped)
    for chunk_rows in state.dropped.values():
        for row in chunk_rows:
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
    from dask.base import tokenize

    spec = StoreSpec.of(store, storage_options)
    state = read_state(spec, markers=False, names=True)
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
        # Named by the build, not only by the path: a store rebuilt in place must not
        # hit data a cluster still holds from before.
        name: _select(
            da.from_zarr(
                group[name],
                chunks=group[name].chunks,
                name=f"daskmri-{name}-{attrs.get('build_id', '')}-{tokenize(spec.url)}",
            ),
            keep_per_block,
        )
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
    state = read_state(spec, markers=False, names=True)
    attrs = state.attrs
    root = attrs["source"] if root is None else os.fspath(root)
    inputs = _plan_inputs(
        root,
        layout=Layout.from_dict(json.loads(attrs["layout"])),
        labels=attrs["labels"],
        names=True,
    )
    current = (state.status != RETIRED) & (state.fingerprint != 0)
    same = np.isin(inputs.fingerprints, state.fingerprint[current])
    known = np.isin(inputs.keys, state.key[current])
    names = inputs.names or ()
    changed = tuple(names[i] for i in np.flatnonzero(~same & known))
    added = tuple(names[i] for i in np.flatnonzero(~known))
    gone = np.flatnonzero(current & ~np.isin(state.key, inputs.keys))
    removed = tuple((str(state.patient_id[k]), int(state.instance[k])) for k in gone)
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
    planned to hold) planned record ``i``, or -1 when it has none; ``retire`` the
    slots no record wants any more; ``rerun`` the chunks holding wanted slots that
    have no marker yet (their task must run)."""

    reuse: np.ndarray
    retire: np.ndarray
    rerun: np.ndarray

    @property
    def added(self) -> int:
        return int((self.reuse < 0).sum())


def reconcile(state: StoreState, fingerprints: np.ndarray) -> Reconciled:
    """Match each planned record (by fingerprint: identity and file stats) to a slot.

    Examples
    --------
    A slot whose chunk is done is preferred to a pending one for the same record,
    so that no record is parsed twice:

    >>> state = StoreState(
    ...     attrs={"chunk_size": 2}, key=np.zeros(4, np.uint64),
    ...     fingerprint=np.array([7, 8, 7, 9], np.uint64), status=np.zeros(4, np.int8),
    ...     has_icontour=None, has_ocontour=None, done=np.array([False, True]), dropped={},
    ... )
    >>> plan = reconcile(state, np.array([7, 9, 5], np.uint64))
    >>> plan.reuse.tolist(), plan.retire.tolist(), plan.rerun.tolist()
    ([2, 3, -1], [0, 1], [])
    """
    chunk_size = state.chunk_size
    slot_done = np.repeat(state.done, chunk_size)[: state.n_slots]
    slots = np.flatnonzero((state.status != RETIRED) & (state.fingerprint != 0))
    fps = state.fingerprint[slots]
    order = np.lexsort((~slot_done[slots], fps))  # by fingerprint, done slots first
    slots, fps = slots[order], fps[order]
    first = np.ones(len(fps), dtype=bool)
    first[1:] = fps[1:] != fps[:-1]
    unique_fps, unique_slots = fps[first], slots[first]
    fingerprints = np.asarray(fingerprints, dtype=np.uint64)
    reuse = np.full(len(fingerprints), -1, dtype=np.int64)
    if len(unique_fps):
        pos = np.minimum(np.searchsorted(unique_fps, fingerprints), len(unique_fps) - 1)
        hit = unique_fps[pos] == fingerprints
        reuse[hit] = unique_slots[pos[hit]]
    wanted = np.zeros(state.n_slots, dtype=bool)
    wanted[reuse[reuse >= 0]] = True
    wanted_chunks = np.zeros(len(state.done), dtype=bool)
    wanted_chunks[reuse[reuse >= 0] // chunk_size] = True
    return Reconciled(
        reuse=reuse,
        retire=np.flatnonzero(~wanted & (state.status != RETIRED)),
        rerun=np.flatnonzero(wanted_chunks & ~state.done),
    )


def read_dropped(
    store: str | os.PathLike[str], *, storage_options: dict | None = None
) -> pd.DataFrame:
    """:func:`daskmri.dropped` of a store, without opening its dataset."""
    from .dataset import dropped_table

    attrs = StoreSpec.of(store, storage_options).group("r").attrs
    return dropped_table(json.loads(attrs.get("dropped", "[]")))
