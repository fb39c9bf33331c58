"""Stage qc: flags on every labelled record, computed on the workers (issue 27).

The building block of the QC report. For each record, :func:`record_flags` says
whether a labelled mask is empty, touches the image border, or leaks out of the kind
that the layout says contains it (``Layout.contains``), and gives each mask's area.
:func:`flags` runs it per record chunk with Dask, on the scheduler or cluster that
holds the dataset's pixels: only one small table per chunk comes back to the client,
never the pixels. :func:`area_outliers` then marks areas far from their patient's
median.

Only numpy is imported at module level, so a worker that unpickles a chunk's task
stays light; pandas and dask are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "area_outliers",
    "chunk_flags",
    "chunk_report",
    "fill_holes",
    "flag_tasks",
    "flags",
    "record_flags",
    "report_tasks",
]

#: The coordinates that name a record, in the table's column order (those present).
IDENTITY = ("patient_id", "instance", "frame", "slice", "phase")

#: Iglewicz and Hoaglin's constant: 0.6745 * (x - median) / MAD has the standard
#: deviation 1 of a normal sample, so the threshold reads in standard deviations.
MAD_SCALE = 0.6745


def _spread_along_rows(reached: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Every background pixel whose run along its row holds a reached pixel."""
    starts = background.copy()
    starts[:, 1:] &= ~background[:, :-1]
    # Runs never span rows: a row that starts in the background starts a run there.
    run = np.cumsum(starts.ravel()) - 1
    flat = background.ravel()
    hit = np.zeros(int(run[-1]) + 1, dtype=bool)
    hit[run[flat & reached.ravel()]] = True
    return (flat & hit[np.maximum(run, 0)]).reshape(background.shape)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: background not 4-connected to the border.

    Pure numpy (scipy is not a dependency). Reached background spreads along whole
    runs of rows, then of columns, until nothing changes, so a pass costs one sweep
    of the image and the passes needed grow with the turns of the background's
    paths, not their length.

    Parameters
    ----------
    mask : numpy.ndarray
        A 2D mask (anything non-zero is foreground).

    Returns
    -------
    numpy.ndarray
        A bool array of the same shape: the mask, plus every background pixel that
        no 4-connected path of background joins to the image border.

    Raises
    ------
    ValueError
        If ``mask`` is not 2D.

    Examples
    --------
    >>> ring = np.ones((5, 5), bool)
    >>> ring[2, 2] = False
    >>> bool(fill_holes(ring)[2, 2])
    True
    >>> bool(fill_holes(~ring)[2, 2])  # the background touches the border: no hole
    True
    >>> int(fill_holes(~ring).sum())
    1
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"fill_holes takes a 2D mask, got shape {mask.shape}")
    background = ~mask
    if not background.any() or min(mask.shape) <= 2:
        return mask.copy()  # no background, or every pixel is on the border
    reached = np.zeros_like(mask)
    reached[[0, -1], :] = background[[0, -1], :]
    reached[:, [0, -1]] = background[:, [0, -1]]
    while True:
        grown = _spread_along_rows(reached, background)
        grown = _spread_along_rows(grown.T, background.T).T
        if (grown == reached).all():
            return ~reached
        reached = grown


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[[0, -1], :].any() or mask[:, [0, -1]].any()) if mask.size else False


def record_flags(
    image_shape: tuple[int, int],
    masks: Mapping[str, np.ndarray | None],
    has: Mapping[str, bool],
    contains: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """The flags and areas of one record.

    Parameters
    ----------
    image_shape : tuple of int
        The record's ``(rows, columns)``: a mask of ``None`` is all background.
    masks : dict
        Each kind's 2D bool mask (``None``: none).
    has : dict
        Whether the record is labelled for each kind (``has_<kind>``).
    contains : sequence of (str, str)
        The layout's ``(inner, outer)`` pairs: ``inner`` must lie inside ``outer``
        with its holes filled (a ring such as the myocardium encloses the cavity).

    Returns
    -------
    dict
        Per kind: ``area_<kind>`` (its pixels), ``empty_<kind>`` (labelled, but no
        pixel), ``border_<kind>`` (a pixel on the image's outer rows or columns).
        Per pair: ``leak_<inner>``, the pixels of ``inner`` outside the filled
        ``outer`` (0 unless both kinds are labelled). ``flagged``: any of these.

    Raises
    ------
    ValueError
        If a mask is not of ``image_shape``.

    Examples
    --------
    >>> outer = np.zeros((6, 6), bool); outer[1:5, 1:5] = True; outer[2:4, 2:4] = False
    >>> inner = np.zeros((6, 6), bool); inner[2:4, 2:5] = True
    >>> row = record_flags((6, 6), {"lv": inner, "myo": outer}, {"lv": True, "myo": True},
    ...                    [("lv", "myo")])
    >>> row["leak_lv"], row["area_myo"], row["empty_lv"], row["flagged"]
    (0, 12, False, False)
    """
    row: dict[str, Any] = {}
    filled = {}
    for kind, mask in masks.items():
        mask = np.zeros(image_shape, bool) if mask is None else np.asarray(mask, bool)
        if mask.shape != tuple(image_shape):
            raise ValueError(f"mask {kind!r} has shape {mask.shape}, not {tuple(image_shape)}")
        filled[kind] = mask
        row[f"area_{kind}"] = int(mask.sum())
        row[f"empty_{kind}"] = bool(has.get(kind, False)) and row[f"area_{kind}"] == 0
        row[f"border_{kind}"] = _touches_border(mask)
    for inner, outer in contains:
        leak = 0
        if has.get(inner, False) and has.get(outer, False):
            leak = int((filled[inner] & ~fill_holes(filled[outer])).sum())
        row[f"leak_{inner}"] = leak
    row["flagged"] = any(
        value
        for name, value in row.items()
        if name.startswith(("empty_", "border_")) or (name.startswith("leak_") and value > 0)
    )
    return row


def _chunk_table(identity: dict, masks: dict, has: dict, contains: list) -> Any:
    """One chunk's table: the task each worker runs (pandas only here, on the worker)."""
    import pandas as pd

    n = len(next(iter(identity.values()))) if identity else len(next(iter(has.values())))
    rows = []
    for i in range(n):
        planes = {kind: block[i] for kind, block in masks.items()}
        shape = next(iter(planes.values())).shape if planes else (0, 0)
        flags = {kind: bool(block[i]) for kind, block in has.items()}
        row = {name: np.asarray(values)[i].item() for name, values in identity.items()}
        row.update({f"has_{kind}": flags[kind] for kind in flags})
        row.update(record_flags(shape, planes, flags, contains))
        rows.append(row)
    return pd.DataFrame(rows)


def _kinds_and_contains(ds) -> tuple[list[str], list[tuple[str, str]]]:
    """The mask kinds and containment pairs, from the dataset's attributes."""
    kinds = json.loads(ds.attrs["kinds"])
    layout = json.loads(ds.attrs.get("layout", "{}"))
    return kinds, [tuple(pair) for pair in layout.get("contains", ())]


def chunk_flags(block) -> Any:
    """The flags table of an in-memory block of a daskmri dataset (one chunk, or all).

    Parameters
    ----------
    block : xarray.Dataset
        Records of a daskmri dataset, computed; its ``kinds`` and ``layout``
        attributes say the masks and which kind contains which.

    Returns
    -------
    pandas.DataFrame
        One row per record: the identity coordinates present (``patient_id``,
        ``instance``, ``frame``, ``slice``, ``phase``), ``has_<kind>``, and the
        columns of :func:`record_flags`.

    Raises
    ------
    KeyError
        If ``block`` lacks the ``kinds`` attribute of a daskmri dataset.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> ds = daskmri.load_dataset(root, scheduler="sync").compute()
    >>> chunk_flags(ds)["flagged"].tolist()
    [False, False, False]
    """
    kinds, contains = _kinds_and_contains(block)
    identity = {name: np.asarray(block[name]) for name in IDENTITY if name in block.coords}
    masks = {kind: np.asarray(block[kind]) for kind in kinds}
    has = {kind: np.asarray(block[f"has_{kind}"]) for kind in kinds}
    return _chunk_table(identity, masks, has, contains)


def _blocks(array, chunks: tuple[int, ...]) -> list:
    """``array`` cut along its first axis by ``chunks``: numpy slices, or one delayed
    block per chunk when it is a dask array (so nothing is computed here)."""
    if hasattr(array, "dask"):
        whole = {axis: -1 for axis in range(1, array.ndim)}
        blocks = array.rechunk({0: chunks, **whole}).to_delayed()
        return list(blocks.reshape(len(chunks), -1)[:, 0])
    ends = np.cumsum(chunks)
    return [array[end - size : end] for size, end in zip(chunks, ends, strict=True)]


def _chunk_inputs(ds, with_image: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    """The inputs of each record chunk's task, as numpy slices or delayed blocks:
    ``{"identity": {name: values}, "masks": {kind: block}, "has": {kind: flags}}``
    (and ``"image"``), nothing computed; and the layout's containment pairs."""
    kinds, contains = _kinds_and_contains(ds)
    chunks = ds.chunks.get("record") if ds.chunks else None
    chunks = tuple(chunks) if chunks else (ds.sizes["record"],)
    identity = [name for name in IDENTITY if name in ds.coords]
    columns = {
        **{("identity", name): ds[name].data for name in identity},
        **{("masks", kind): ds[kind].data for kind in kinds},
        **{("has", kind): ds[f"has_{kind}"].data for kind in kinds},
    }
    if with_image:
        columns[("image", "image")] = ds["image"].data
    cut = {key: _blocks(values, chunks) for key, values in columns.items()}
    inputs = []
    for i in range(len(chunks)):
        one: dict = {"identity": {}, "masks": {}, "has": {}}
        for (group, name), blocks in cut.items():
            if group == "image":
                one["image"] = blocks[i]
            else:
                one[group][name] = blocks[i]
        inputs.append(one)
    return inputs, contains


def flag_tasks(ds) -> list:
    """One ``dask.delayed`` table per record chunk of ``ds``, nothing computed yet.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> len(flag_tasks(daskmri.load_dataset(root, chunk_size=1, scheduler="sync")))
    3
    """
    import dask

    inputs, contains = _chunk_inputs(ds, with_image=False)
    # Not pure: tokenizing the arguments would hash the pixels of a numpy-backed dataset.
    task = dask.delayed(_chunk_table, pure=False)
    return [task(one["identity"], one["masks"], one["has"], contains) for one in inputs]


def chunk_report(
    identity: dict, masks: dict, has: dict, image: np.ndarray, contains: list, size: int
) -> tuple[Any, list[bytes]]:
    """One chunk's flags table and a PNG thumbnail per record: the report's worker task.

    Parameters
    ----------
    identity : dict
        The identity coordinates of the chunk's records (:data:`IDENTITY`).
    masks, has : dict
        Each kind's masks ``(records, rows, columns)`` and ``has_<kind>`` flags.
    image : numpy.ndarray
        The chunk's images, ``(records, rows, columns)``.
    contains : list of (str, str)
        The layout's containment pairs.
    size : int
        The longest side of a thumbnail (:func:`daskmri.plot.thumbnail`).

    Returns
    -------
    (pandas.DataFrame, list of bytes)
        The table of :func:`chunk_flags`, and each record's PNG file in its order:
        only these come back to the client, never the pixels.

    Raises
    ------
    ValueError
        If a mask's shape is not its image's.

    Examples
    --------
    >>> mask = np.zeros((1, 8, 8), bool); mask[0, 2:5, 2:5] = True
    >>> table, pngs = chunk_report({"instance": np.array([7])}, {"lv": mask},
    ...                            {"lv": np.array([True])}, np.zeros((1, 8, 8)), [], 160)
    >>> table["area_lv"].tolist(), pngs[0][:4]
    ([9], b'\\x89PNG')
    """
    from .plot import png_bytes, thumbnail

    table = _chunk_table(identity, masks, has, contains)
    # zlib level 1: 0.6 ms and 15 KiB per real 128x128 thumbnail, against 2.8 ms and
    # 14 KiB at the default 6 (measured on the Sunnybrook sample); it was the costliest step.
    pngs = [
        png_bytes(
            thumbnail(
                image[i],
                {kind: block[i] if bool(has[kind][i]) else None for kind, block in masks.items()},
                size=size,
            ),
            level=1,
        )
        for i in range(len(image))
    ]
    return table, pngs


def report_tasks(ds, *, size: int = 160) -> list:
    """One ``dask.delayed`` :func:`chunk_report` per record chunk of ``ds``, uncomputed.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> tasks = report_tasks(daskmri.load_dataset(root, chunk_size=2, scheduler="sync"))
    >>> len(tasks), len(tasks[0].compute()[1])
    (2, 2)
    """
    import dask

    inputs, contains = _chunk_inputs(ds, with_image=True)
    task = dask.delayed(chunk_report, pure=False, nout=2)
    return [
        task(one["identity"], one["masks"], one["has"], one["image"], contains, size)
        for one in inputs
    ]


def flags(ds) -> Any:
    """The QC flags of every record of ``ds``, computed per chunk where its pixels are.

    Each record chunk's masks are read by one task (:func:`flag_tasks`), on the
    cluster whose client holds the dataset's pixels, else on dask's current
    scheduler; only that chunk's small table comes back.

    Parameters
    ----------
    ds : xarray.Dataset
        A daskmri dataset (``load_dataset``, ``open_dataset``, or a selection).

    Returns
    -------
    pandas.DataFrame
        As :func:`chunk_flags`, for every record in order, with a fresh index.

    Raises
    ------
    KeyError
        If ``ds`` lacks the ``kinds`` attribute of a daskmri dataset.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(32, 32))
    >>> table = flags(daskmri.load_dataset(root, chunk_size=2, scheduler="sync"))
    >>> len(table), bool(table["flagged"].any())
    (3, False)
    """
    import dask
    import pandas as pd

    tasks = flag_tasks(ds)
    futures = []
    if "distributed" in sys.modules:
        from distributed import futures_of

        futures = futures_of(ds)
    if futures:
        # Pixels persisted on a cluster are only reachable through their own client,
        # which need not be the default one.
        tables = futures[0].client.compute(tasks, sync=True)
    else:
        tables = dask.compute(*tasks)
    if not tables:
        return chunk_flags(ds.isel(record=slice(0, 0)).compute())
    return pd.concat(tables, ignore_index=True)


def area_outliers(table, *, threshold: float = 3.5) -> Any:
    """``table`` with an ``outlier_<kind>`` column per kind: areas far from the patient's.

    The rule (Iglewicz and Hoaglin's modified z-score): for each patient and kind,
    over that patient's records labelled with the kind (``has_<kind>``), with median
    ``m`` and median absolute deviation ``MAD`` of ``area_<kind>``, a record is an
    outlier when ``|0.6745 * (area - m) / MAD| > threshold``. A MAD of 0 (half or
    more of the areas equal) marks no outlier, and an unlabelled record never is
    one. ``flagged`` becomes true on an outlier. The score itself is kept as
    ``zscore_<kind>`` (NaN where it is undefined), so a report can show it.

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`flags`.
    threshold : float
        The modified z-score above which an area is an outlier; 3.5 is the
        authors' recommendation.

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with the ``outlier_<kind>`` and ``zscore_<kind>`` columns.

    Raises
    ------
    KeyError
        If ``table`` lacks ``patient_id`` or a kind's ``has_``/``area_`` columns.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"patient_id": ["a"] * 5, "has_lv": [True] * 5,
    ...                       "area_lv": [100, 104, 98, 101, 400], "flagged": False})
    >>> area_outliers(table)["outlier_lv"].tolist()
    [False, False, False, False, True]
    """
    out = table.copy()
    kinds = [name[len("area_") :] for name in table.columns if name.startswith("area_")]
    for kind in kinds:
        area = out[f"area_{kind}"].astype(float).where(out[f"has_{kind}"].astype(bool))
        by_patient = area.groupby(out["patient_id"])
        median = by_patient.transform("median")
        mad = (area - median).abs().groupby(out["patient_id"]).transform("median")
        with np.errstate(divide="ignore", invalid="ignore"):
            z = MAD_SCALE * (area - median) / mad
        out[f"zscore_{kind}"] = z.where(mad > 0)
        out[f"outlier_{kind}"] = ((z.abs() > threshold) & (mad > 0)).fillna(False).astype(bool)
        if "flagged" in out:
            out["flagged"] = out["flagged"] | out[f"outlier_{kind}"]
    return out
