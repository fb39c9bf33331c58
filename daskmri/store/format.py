"""The format of a store: its arrays, their dtypes and chunks, its attributes; making
one (:func:`create`), growing it (:func:`resize`), naming its slots
(:func:`write_slots`) and removing what daskmri made of it (:func:`remove`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import numpy as np
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.sync import sync

from ..compact import label_dtype
from ..errors import StoreError
from ..fit import GEOMETRY
from ..plan import record_key
from ..record import Record
from .spec import StoreSpec, at_once, made_by_daskmri, what_is_there, writer

__all__ = [
    "COMPRESSORS",
    "DEFAULT_COMPRESSOR",
    "FORMAT",
    "create",
    "pixels_dtype",
    "read_attrs",
    "remove",
    "retype",
]

#: Bumped when the layout of a store changes incompatibly. 2: original_id in the
#: record fingerprints, the ``planned`` and ``build_id`` attributes. 3: the
#: ``geometry`` of each slot (where its source slice sits in the frame). 4 (0.2.0):
#: the ``kinds`` attribute and each done marker's ``size`` always there, the layout
#: hashed as ``to_dict``, and each slot's ``frame``, ``slice`` and ``phase`` (volume
#: planes). 5: the compact records: ``pixels`` in the source's integer type (or
#: float32) with each slot's ``slope`` and ``intercept``, and one ``labels`` bit array
#: instead of ``image`` and a bool array per kind (see :mod:`daskmri.compact`). An
#: older store is refused, not read by guesses.
FORMAT = 5

#: What each older format lacks, for the message that refuses it.
OLDER = {
    4: "float32 images and a bool array per kind",
    3: "no kinds attribute, float32 images and a bool array per kind",
}

PENDING, OK, DROPPED, RETIRED = 0, 1, 2, 3
STATUS_NAMES = {PENDING: "pending", OK: "ok", DROPPED: "dropped", RETIRED: "retired"}

MARKER_BATCH = 4096
#: Slots per chunk of the per-slot tables: 16,384 keeps them to a few hundred objects for a
#: million records, while the client gathers a new store's identities a table chunk at a
#: time (about 200 bytes a record in Python): 131,072 made the client's peak memory grow
#: from 108 to 116 MiB between 100k and 400k records, this 85 to 92 (benchmarks/scale.py).
TABLE_CHUNK = 1 << 14

#: Compressors measured by ``benchmarks/scale.py`` and ``benchmarks/compare.py``: the
#: default, blosc-lz4, encodes and decodes a real chunk faster than blosc-zstd, for a
#: larger store (the figures: the docs' Performance page).
COMPRESSORS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
DEFAULT_COMPRESSOR = "blosc-lz4"


def codecs(compressor: str) -> dict:
    """The zarr codecs for ``compressor``."""
    # blosc-zstd is the small store. Bit shuffle puts the always-zero high bits of
    # integer pixels in planes of their own, and 1 MiB blocks give zstd room: on the
    # real sample's int16 pixels 41.3 KB a record, against 43.4 with byte shuffle and
    # blosc's own (small) blocks, encoding 1.6x and decoding 1.6x faster than those
    # too (benchmarks/compact.py --compressor). Byte shuffle stays the default's,
    # where lz4 decodes 4x faster still.
    if compressor == "blosc-zstd":
        codec = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", blocksize=1 << 20)
        return {"compressors": [codec]}
    if compressor == "blosc-lz4":
        return {"compressors": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]}
    if compressor == "zstd":
        return {"compressors": [ZstdCodec(level=3)]}
    if compressor == "none":
        return {"compressors": None}
    raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")


def kinds_in(attrs: dict) -> tuple[str, ...]:
    """The contour kinds of a store, from its attributes.

    Examples
    --------
    >>> kinds_in({"kinds": '["icontour", "scar"]'})
    ('icontour', 'scar')
    """
    return tuple(json.loads(attrs["kinds"]))


def pixel_names(kinds: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``(record, y, x)`` arrays of a store (the same whatever its kinds: every
    kind is a bit of ``labels``).

    Examples
    --------
    >>> pixel_names(("icontour", "scar"))
    ('pixels', 'labels')
    """
    return ("pixels", "labels")


#: The per-slot arrays the chunk tasks write (chunked as the pixels), besides them.
RESCALE = ("slope", "intercept")


def pixels_dtype(attrs: dict) -> np.dtype:
    """The dtype of a store's ``pixels``, from its attributes.

    Examples
    --------
    >>> pixels_dtype({"pixels_dtype": "int16"})
    dtype('int16')
    """
    return np.dtype(attrs["pixels_dtype"])


def per_slot(kinds: Sequence[str]) -> tuple[tuple[str, object, object], ...]:
    """The per-slot arrays of a store with these contour kinds: name, dtype, fill."""
    return (
        ("status", "int8", PENDING),
        *((f"has_{kind}", "bool", False) for kind in kinds),
        ("instance", "int64", 0),
        ("key", "uint64", 0),
        ("fingerprint", "uint64", 0),
        ("patient_id", str, ""),
        ("original_id", str, ""),
        ("frame", "int64", 0),
        ("slice", "int64", 0),
        ("phase", str, ""),
    )


def entries(kinds: Sequence[str]) -> tuple[str, ...]:
    """What a store is made of, besides its group's metadata: :func:`remove`
    deletes these and nothing else."""
    slot_names = (name for name, _, _ in per_slot(kinds))
    return (*pixel_names(kinds), *RESCALE, *slot_names, "geometry", "done")


def create(
    spec: StoreSpec,
    *,
    chunk_size: int,
    shape: tuple[int, int],
    compressor: str,
    attrs: dict,
) -> None:
    """Make an empty store (no slots yet) with ``complete`` false; slots are added
    by :func:`resize` and :func:`write_slots`. The contour kinds are those of
    ``attrs["kinds"]``, the pixels' dtype ``attrs["pixels_dtype"]``."""
    # Never mode="w": zarr would empty the folder first. The attributes go in the
    # group's first metadata: a build killed from here on finds a daskmri store that
    # is not `planned` yet, and starts again.
    import zarr.api.asynchronous as za

    arrays = _arrays(chunk_size, shape, compressor, kinds_in(attrs), pixels_dtype(attrs))

    async def every() -> None:
        group = await za.create_group(
            store=spec.url,
            overwrite=False,
            zarr_format=3,
            attributes=attrs | {"complete": False, "planned": False, "format": FORMAT},
            **spec.options(),
        )
        # All at once: on an object store each array's creation is a few round trips.
        await asyncio.gather(*(group.create_array(**a) for a in arrays))

    sync(every())


def pixels_array(chunk_size: int, shape: tuple[int, int], compressor: str, dtype) -> dict:
    """The arguments of a store's ``pixels`` array (of ``dtype``)."""
    rows, columns = max(1, shape[0]), max(1, shape[1])
    return dict(
        name="pixels",
        shape=(0, *shape),
        chunks=(chunk_size, rows, columns),
        dtype=np.dtype(dtype).name,
        fill_value=0,
        dimension_names=("record", "y", "x"),
        **codecs(compressor),
    )


def _arrays(chunk_size: int, shape: tuple[int, int], compressor: str, kinds, dtype) -> list[dict]:
    """The arguments of every array of a new store."""
    labels = pixels_array(chunk_size, shape, compressor, label_dtype(len(kinds)))
    arrays = [pixels_array(chunk_size, shape, compressor, dtype), labels | {"name": "labels"}]
    # Written by the chunk tasks, so chunked as the pixels: no two tasks ever write the
    # same object. Slope 1 and intercept 0 are what a slot never written widens with.
    arrays += [
        dict(name=name, shape=(0,), chunks=(chunk_size,), dtype="float64", fill_value=fill)
        | {"dimension_names": ("record",)}
        for name, fill in zip(RESCALE, (1.0, 0.0), strict=True)
    ]
    arrays += [
        dict(name=name, shape=(0,), chunks=(TABLE_CHUNK,), dtype=dtype, fill_value=fill)
        | {"dimension_names": ("record",)}
        for name, dtype, fill in per_slot(kinds)
    ]
    # Written by the chunk tasks, so chunked as the pixels: no two tasks ever write the
    # same object. One row of daskmri.fit.GEOMETRY values per slot.
    geometry = (chunk_size, len(GEOMETRY))
    arrays.append(
        dict(name="geometry", shape=(0, len(GEOMETRY)), chunks=geometry, dtype="float64")
        | {"fill_value": 0.0, "dimension_names": ("record", "geometry")}
    )
    # One object per chunk: each task writes its own marker, so no two tasks ever
    # write the same object.
    arrays.append(
        dict(name="done", shape=(0,), chunks=(1,), dtype=str, fill_value="")
        | {"dimension_names": ("chunk",)}
    )
    return arrays


def resize(spec: StoreSpec, n_slots: int) -> None:
    """Grow (or shrink) every per-slot array to ``n_slots`` slots, all at once."""
    attrs = dict(spec.group("r").attrs)
    chunk_size = int(attrs["chunk_size"])
    kinds = kinds_in(attrs)
    rows = {name: n_slots for name in (*pixel_names(kinds), *RESCALE, "geometry")}
    rows |= {name: n_slots for name, _, _ in per_slot(kinds)}
    rows["done"] = -(-n_slots // chunk_size)
    at_once(spec, {name: _resizer(n) for name, n in rows.items()})


def _resizer(n: int):
    async def resize(array) -> None:
        await array.resize((n, *array.shape[1:]))

    return resize


def write_slots(
    spec: StoreSpec, start: int, records: Sequence[Record], fingerprints: Sequence[int]
) -> None:
    """Write planned records' identities into slots ``start ..`` (client side), the
    arrays at once (a volume plane's frame, slice and phase too)."""
    if records:
        write_values(spec, start, slot_values(records, fingerprints))


def slot_values(records: Sequence[Record], fingerprints: Sequence[int]) -> dict[str, np.ndarray]:
    """The per-slot identity values of ``records`` (what :func:`write_slots` writes),
    by array name.

    Examples
    --------
    >>> values = slot_values([Record("P1", "O1", 3, "a.dcm")], [7])
    >>> values["patient_id"].tolist(), values["instance"].tolist(), values["fingerprint"].tolist()
    (['P1'], [3], [7])
    """
    values = {
        "patient_id": np.array([r.patient_id for r in records], dtype=object),
        "original_id": np.array([r.original_id for r in records], dtype=object),
        "instance": np.array([r.instance for r in records], dtype=np.int64),
        "key": np.array([record_key(*r.key) for r in records], np.uint64),
        "fingerprint": np.asarray(fingerprints, dtype=np.uint64),
    }
    # Written for slices too (0, 0, ""): every store holds the same objects.
    planes = [r.volume for r in records]
    values["frame"] = np.array([0 if p is None else p.frame for p in planes], dtype=np.int64)
    values["slice"] = np.array([0 if p is None else p.slice for p in planes], dtype=np.int64)
    values["phase"] = np.array(["" if p is None else p.phase for p in planes], dtype=object)
    return values


def write_values(spec: StoreSpec, start: int, values: dict[str, np.ndarray]) -> None:
    """Write :func:`slot_values` (of any slots' records) into slots ``start ..``."""
    stop = start + len(values["key"])
    # write_empty: a table of fill values (a slice store's frame, slice and phase) is still
    # written, so every store holds the same objects.
    at_once(
        spec, {name: writer(slice(start, stop), v, write_empty=True) for name, v in values.items()}
    )


def read_attrs(spec: StoreSpec) -> dict:
    attrs = dict(spec.group("r").attrs)
    if not made_by_daskmri(attrs):
        raise StoreError(
            f"{spec.shown!r} is not a daskmri store; build one with daskmri.build(root, store) "
            "at a path that does not exist yet"
        )
    if attrs["format"] != FORMAT:
        held = OLDER.get(attrs["format"])
        held = f": {held}" if held else ""
        raise StoreError(
            f"{spec.shown!r} was made by another version of daskmri (store format "
            f"{attrs.get('format')}{held}, this version reads {FORMAT}: compact pixels and "
            "a label bit array); rebuild it with daskmri.build(root, store, mode='overwrite')"
        )
    return attrs


def remove(spec: StoreSpec) -> None:
    """Delete what daskmri made of the store (``mode="overwrite"``): its arrays and
    its group's metadata, never anything else in its folder. Does nothing unless
    a daskmri store is there (see :func:`~daskmri.store.claim`)."""
    if what_is_there(spec) != "daskmri":
        return
    fs, path = spec.filesystem()
    # First say it is incomplete: a deletion cut short must not leave arrays whose
    # chunks are gone under a group that still claims to be complete. The group's
    # metadata goes last, so what is left is still known as a daskmri store.
    # Not `planned` either: a build that finds a removal cut short starts again.
    kinds: tuple[str, ...] = ()
    with contextlib.suppress(Exception):
        group = spec.group("r+")
        group.attrs.update({"complete": False, "planned": False})
        # A store of another format may not record its kinds: each has a has_<kind>.
        found = [name[4:] for name in group.array_keys() if name.startswith("has_")]
        kinds = kinds_in(dict(group.attrs)) if "kinds" in group.attrs else tuple(found)
    base = path.rstrip("/")
    # And the pixel arrays of older formats (image, one per kind), to rebuild them.
    names = (*entries(kinds), *(n for n in ("image", *kinds) if n not in entries(kinds)))
    # Which arrays are there: their metadata read together (a byte of each), not one
    # request after another; then removed together.
    found = fs.cat_ranges([f"{base}/{name}/zarr.json" for name in names], 0, 1, on_error="return")
    ours = [f"{base}/{n}" for n, got in zip(names, found, strict=True) if isinstance(got, bytes)]
    if ours:
        fs.rm(ours, recursive=True)
    fs.rm(f"{base}/zarr.json")


def retype(spec: StoreSpec, dtype) -> None:
    """Give the store's ``pixels`` the wider ``dtype`` (a record that the one it was
    made with does not hold): every chunk marker is cleared first, so every chunk is
    parsed again into the new array; then ``pixels`` is made again, empty, in
    ``dtype``. Only daskmri's own array is replaced. A build killed in between finds
    no marker, so it parses every chunk again and meets the same need."""
    group = spec.group("r+")
    attrs = dict(group.attrs)
    n_slots = group["status"].shape[0]
    chunk_size = int(attrs["chunk_size"])
    group.attrs.update({"complete": False})
    done = spec.array("done")
    done[:] = np.full(done.shape, "", dtype=object)
    fs, path = spec.filesystem()
    fs.rm(f"{path.rstrip('/')}/pixels", recursive=True)
    shape = (int(attrs["shape"][0]), int(attrs["shape"][1]))
    made = pixels_array(chunk_size, shape, attrs.get("compressor", DEFAULT_COMPRESSOR), dtype)
    spec.group("r+").create_array(**(made | {"shape": (n_slots, *shape)}))
    spec.group("r+").attrs.update({"pixels_dtype": np.dtype(dtype).name})
