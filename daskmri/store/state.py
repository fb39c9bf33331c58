"""What a store holds, read back by the client (:func:`read_state`), and how to
bring it to a new plan (:func:`reconcile`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .format import (
    DROPPED,
    MARKER_BATCH,
    OK,
    PENDING,
    RESCALE,
    RETIRED,
    TABLE_CHUNK,
    kinds_in,
    per_slot,
    pixel_names,
    read_attrs,
    resize,
)
from .spec import StoreSpec, at_once, writer

#: The per-slot arrays of a volume plane's coordinates.
PLANES = ("frame", "slice", "phase")

__all__ = [
    "Folded",
    "Reconciled",
    "SlotColumn",
    "StoreState",
    "dropped_rows",
    "fold_store",
    "read_state",
    "reconcile",
    "repair",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreState:
    """What a store holds, read back by the client: compact per-slot arrays (no
    pixels, and the string ids only when asked for)."""

    attrs: dict
    key: np.ndarray
    fingerprint: np.ndarray
    status: np.ndarray
    #: Which slots have each contour kind.
    has: dict[str, np.ndarray] | None
    done: np.ndarray
    dropped: dict[int, list[dict]]
    patient_id: np.ndarray | None = None
    original_id: np.ndarray | None = None
    instance: np.ndarray | None = None
    #: The volume planes' ``frame``, ``slice`` and ``phase`` (with ``names``).
    planes: dict[str, np.ndarray] | None = None
    #: The pixel dtypes that chunks needed and the store does not hold (their
    #: markers say ``retype``; those chunks are not done).
    retype: frozenset[str] = frozenset()

    @property
    def n_slots(self) -> int:
        return len(self.status)

    @property
    def chunk_size(self) -> int:
        return int(self.attrs["chunk_size"])


def repair(spec: StoreSpec) -> None:
    """Give every per-slot array the same length: a build killed while growing them
    leaves some longer than others. The extra slots have no identity, so the next
    build retires them."""
    group = spec.group("r")
    kinds = kinds_in(dict(group.attrs))
    names = (*pixel_names(kinds), *RESCALE, *(n for n, _, _ in per_slot(kinds)), "geometry")
    lengths = {name: group[name].shape[0] for name in names}
    if len(set(lengths.values())) > 1:
        logger.warning("per-slot arrays of %s have lengths %s; evening them", spec.shown, lengths)
        resize(spec, max(lengths.values()))


def read_state(spec: StoreSpec, *, markers: bool = True, names: bool = False) -> StoreState:
    """Read a store's per-slot tables and, with ``markers``, every chunk marker,
    folding the markers into ``status``/``has_*`` (a killed build may have left
    markers the client never folded in). Markers are read one at a time, so memory
    stays at a few bytes per slot."""
    attrs = read_attrs(spec)
    group = spec.group("r")
    kinds = kinds_in(attrs)
    wanted = ["status", "key", "fingerprint", *(f"has_{kind}" for kind in kinds)]
    wanted += ["patient_id", "original_id", "instance", *PLANES] if names else []
    tables = at_once(spec, {name: _whole for name in wanted}, mode="r")
    status = np.asarray(tables["status"], dtype=np.int8)
    has = {kind: np.asarray(tables[f"has_{kind}"], dtype=bool) for kind in kinds}
    chunk_size = int(attrs["chunk_size"])
    done = np.zeros(-(-len(status) // chunk_size), dtype=bool)
    dropped: dict[int, list[dict]] = {}
    retype: set[str] = set()
    if markers:
        # In batches: a million records' markers hold ~20 MB of JSON text.
        for lo in range(0, len(done), MARKER_BATCH):
            texts = group["done"][lo : lo + MARKER_BATCH]
            for j in np.flatnonzero(texts != ""):
                k = lo + int(j)
                marker = json.loads(texts[j])
                if "retype" in marker:  # parsed, but its pixels did not fit: not done
                    retype.add(marker["retype"])
                    continue
                done[k] = True
                if marker["dropped"]:
                    dropped[k] = marker["dropped"]
                _fold(marker, k * chunk_size, status, has)
    extra = {}
    if names:
        extra = {
            "patient_id": np.asarray(tables["patient_id"], dtype=object),
            "original_id": np.asarray(tables["original_id"], dtype=object),
            "instance": np.asarray(tables["instance"], dtype=np.int64),
            "planes": {name: np.asarray(tables[name]) for name in PLANES},
        }
    return StoreState(
        attrs=attrs,
        key=np.asarray(tables["key"], dtype=np.uint64),
        fingerprint=np.asarray(tables["fingerprint"], dtype=np.uint64),
        status=status,
        has=has,
        done=done,
        dropped=dropped,
        retype=frozenset(retype),
        **extra,
    )


async def _whole(array):
    return await array.getitem(slice(None))


def _fold(marker: dict, start: int, status: np.ndarray, has: dict[str, np.ndarray]) -> None:
    """A chunk's marker into the per-slot ``status`` and ``has`` arrays."""
    n = int(marker["size"])
    region = slice(start, start + n)
    values = np.full(n, DROPPED, dtype=np.int8)
    values[marker["kept"]] = OK
    status[region] = np.where(status[region] == RETIRED, RETIRED, values)
    for kind, flags in has.items():
        flags[region] = marker[f"has_{kind}"]


def dropped_rows(state: StoreState, scan_dropped: Sequence[dict]) -> list[dict]:
    """The scan's drops plus every dropped slot that is still current."""
    rows = list(scan_dropped)
    for chunk_rows in state.dropped.values():
        for row in chunk_rows:
            if state.status[row["slot"]] == DROPPED:
                rows.append({k: v for k, v in row.items() if k != "slot"})
    return rows


# -- block by block: a client whose memory does not grow with the store -----------


def block_slots(chunk_size: int) -> int:
    """Slots read at once by :func:`fold_store` and :class:`SlotColumn`: whole record
    chunks, about one chunk of the per-slot tables (:data:`~daskmri.store.format.TABLE_CHUNK`).

    Examples
    --------
    >>> block_slots(64), block_slots(5) % 5, block_slots(1 << 20)
    (16384, 0, 1048576)
    """
    return chunk_size * max(1, TABLE_CHUNK // chunk_size)


class SlotColumn:
    """One per-slot table of a store (``key``, ``fingerprint``, ...), read a block at
    a time as slots are asked for in increasing order: a few hundred KB whatever the
    store's size.

    Examples
    --------
    >>> import tempfile, zarr
    >>> spec = StoreSpec.of(tempfile.mkdtemp() + "/s.zarr")
    >>> z = zarr.create_array(spec.url, shape=(5,), dtype="uint64", fill_value=0)
    >>> z[:] = [10, 11, 12, 13, 14]
    >>> column = SlotColumn(spec, "", block=2)
    >>> [column[slot] for slot in (0, 3, 4)]
    [10, 13, 14]
    """

    def __init__(self, spec: StoreSpec, name: str, *, block: int) -> None:
        self.spec, self.name, self.block = spec, name, block
        self.lo, self.values = 0, np.zeros(0)

    def __getitem__(self, slot: int) -> int:
        if not self.lo <= slot < self.lo + len(self.values):
            self.lo = slot - slot % self.block
            region = slice(self.lo, self.lo + self.block)
            self.values = at_once(self.spec, {self.name: _part(region)}, mode="r")[self.name]
        return int(self.values[slot - self.lo])


def _part(region: slice):
    async def read(array):
        return await array.getitem(region)

    return read


@dataclass(frozen=True)
class Folded:
    """What :func:`fold_store` found: the records kept (``ok``), the dropped rows still
    current, the chunks with a marker, the first chunks (up to ten) that hold a
    wanted slot but no marker (a build that did not finish), and the pixel dtypes
    that chunks needed (``retype``)."""

    ok: int
    dropped: list[dict]
    done: int
    missing: list[int]
    #: The pixel dtypes that chunks needed and the store does not hold (their markers
    #: say ``retype``; those chunks are not done, so their slots stay pending).
    retype: frozenset[str] = frozenset()


def fold_store(spec: StoreSpec, *, retire: np.ndarray | None = None, write: bool = True) -> Folded:
    """Fold every chunk's marker into the store's ``status`` and ``has_*`` tables, one
    block of slots at a time (:func:`block_slots`), retiring the slots ``retire``
    (sorted) and the padding (slots no record ever took), and, with ``write``, write
    them back. The client holds one block, never a table: its memory does not grow
    with the store.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> _ = daskmri.build(root, store, chunk_size=2, scheduler="sync")
    >>> folded = fold_store(StoreSpec.of(store), write=False)
    >>> folded.ok, folded.done, folded.missing, folded.retype
    (3, 2, [], frozenset())
    """
    attrs = read_attrs(spec)
    kinds, chunk_size = kinds_in(attrs), int(attrs["chunk_size"])
    retire = np.zeros(0, dtype=np.int64) if retire is None else np.asarray(retire)
    n_slots = spec.group("r")["status"].shape[0]
    step = block_slots(chunk_size)
    ok, done, rows, missing, retype = 0, 0, [], [], set()
    for lo in range(0, n_slots, step):
        region = slice(lo, min(lo + step, n_slots))
        names = ["status", "fingerprint", *(f"has_{kind}" for kind in kinds)]
        tables = at_once(spec, {name: _part(region) for name in names}, mode="r")
        status = np.asarray(tables["status"], dtype=np.int8)
        has = {kind: np.asarray(tables[f"has_{kind}"], dtype=bool) for kind in kinds}
        dropped: list[dict] = []
        done += _fold_block(spec, lo, chunk_size, status, has, dropped, retype)
        status[retire[np.searchsorted(retire, lo) : np.searchsorted(retire, region.stop)] - lo] = (
            RETIRED
        )
        status[np.asarray(tables["fingerprint"]) == 0] = RETIRED
        pending = np.flatnonzero(status == PENDING)
        missing += sorted({(lo + int(j)) // chunk_size for j in pending[: 10 * chunk_size]})
        rows += [row for row in dropped if status[row["slot"] - lo] == DROPPED]
        ok += int((status == OK).sum())
        if write:
            values = {"status": status} | {f"has_{kind}": has[kind] for kind in kinds}
            at_once(spec, {name: writer(region, v) for name, v in values.items()})
    rows = [{k: v for k, v in row.items() if k != "slot"} for row in rows]
    return Folded(ok=ok, dropped=rows, done=done, missing=missing[:10], retype=frozenset(retype))


def _fold_block(
    spec: StoreSpec,
    lo: int,
    chunk_size: int,
    status: np.ndarray,
    has: dict[str, np.ndarray],
    dropped: list[dict],
    retype: set[str],
) -> int:
    """The markers of the chunks of the block of slots from ``lo`` (a chunk's first
    slot) into its ``status`` and ``has``; their dropped rows into ``dropped``, the
    dtypes of those whose pixels did not fit into ``retype``. Returns how many chunks
    have a marker that says they are done."""
    done = spec.group("r")["done"]
    first, last = lo // chunk_size, -(-(lo + len(status)) // chunk_size)
    found = 0
    for k0 in range(first, last, MARKER_BATCH):
        texts = done[k0 : min(k0 + MARKER_BATCH, last)]
        for j in np.flatnonzero(texts != ""):
            marker = json.loads(texts[j])
            if "retype" in marker:  # parsed, but its pixels did not fit: not done
                retype.add(marker["retype"])
                continue
            found += 1
            dropped += marker["dropped"]
            _fold(marker, (k0 + int(j)) * chunk_size - lo, status, has)
    return found


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
    ...     has=None, done=np.array([False, True]), dropped={},
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
    # Padding (fingerprint 0: slots no record ever took) is not retired here but by the
    # build's end, so that a new store reports no retired records.
    named = state.fingerprint != 0
    return Reconciled(
        reuse=reuse,
        retire=np.flatnonzero(~wanted & (state.status != RETIRED) & named),
        rerun=np.flatnonzero(wanted_chunks & ~state.done),
    )
