"""Parts of a dataset for training and validation, whole patients apiece: slices of
one patient look alike, so a patient in two parts would leak between them."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .rng import split_generator

__all__ = ["split"]

logger = logging.getLogger(__name__)


def split(ds, fractions: Sequence[float], *, by: str = "patient_id", seed: int = 0) -> tuple:
    """Split a dataset into parts by patient, no patient in two parts.

    Split ``ds`` along ``record`` into parts of about ``fractions`` of its records,
    with every value of ``by`` (every patient) in exactly one part.

    Patients are dealt largest first, in an order shuffled by ``seed`` among equals,
    each to the part furthest below its share; then single moves and swaps of
    patients between parts are made while they bring the record counts closer to
    ``fractions`` (the total distance to the targets). The parts keep the dataset's
    record order and stay lazy: nothing is computed.

    Parameters
    ----------
    ds : xarray.Dataset
        A daskmri dataset (``load_dataset`` or ``open_dataset``), or any dataset with
        a ``record`` dimension.
    fractions : sequence of float
        The share of records of each part, positive, summing to 1.
    by : str
        The variable along ``record`` whose values must not be split.
    seed : int
        Seed of the order among patients of equal size: the same seed gives the
        same parts.

    Returns
    -------
    tuple of xarray.Dataset
        One dataset per fraction; their union is ``ds``.

    Raises
    ------
    ValueError
        If ``fractions`` are not positive numbers summing to 1, or ``by`` is not a
        variable along ``record``.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset(coords={"patient_id": ("record", list("AAABBCCCCD"))})
    >>> train, val = split(ds, (0.7, 0.3), seed=0)
    >>> train.sizes["record"], val.sizes["record"]
    (7, 3)
    >>> sorted(set(train.patient_id.values) & set(val.patient_id.values))
    []
    """
    fractions = _check_fractions(fractions)
    if by not in ds.variables or ds[by].dims != ("record",):
        raise ValueError(
            f"split(by={by!r}) needs a variable along 'record'; this dataset has "
            f"{sorted(str(v) for v in ds.variables if ds[v].dims == ('record',))}"
        )
    groups, group_of = np.unique(np.asarray(ds[by].values), return_inverse=True)
    part_of = _deal(np.bincount(group_of, minlength=len(groups)), fractions, seed)
    parts = tuple(
        ds.isel(record=np.flatnonzero(part_of[group_of] == j)) for j in range(len(fractions))
    )
    empty = [j for j, part in enumerate(parts) if part.sizes["record"] == 0]
    if empty:
        logger.warning("split: parts %s are empty (%d values of %r)", empty, len(groups), by)
    return parts


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    try:
        values = np.asarray([float(f) for f in fractions])
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be a sequence of numbers, got {fractions!r}") from None
    if not len(values) or not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"fractions must be positive numbers, got {list(fractions)!r}")
    if not math.isclose(values.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"fractions must sum to 1, got {list(fractions)!r} (sum {values.sum():g}); "
            "for example (0.8, 0.2)"
        )
    return values


def _deal(sizes: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
    """The part of each group: largest groups first (ties in a seeded order), each to
    the part with the most room left below its target.

    Examples
    --------
    >>> _deal(np.array([5, 3, 2]), np.array([0.5, 0.5]), seed=0).tolist()
    [0, 1, 1]
    """
    targets = fractions * sizes.sum()
    shuffled = split_generator(seed).permutation(len(sizes))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    filled = np.zeros(len(fractions))
    part_of = np.empty(len(sizes), dtype=np.int64)
    for g in order:
        j = int(np.argmax(targets - filled))
        part_of[g] = j
        filled[j] += sizes[g]
    while _improve(sizes, part_of, targets):
        pass
    return part_of


def _improve(sizes: np.ndarray, part_of: np.ndarray, targets: np.ndarray) -> bool:
    """Make the one move or swap of groups between two parts that brings the parts'
    totals closest to ``targets``, if any helps; whether one was made.

    Examples
    --------
    >>> part_of = np.array([0, 1, 0, 1, 0])  # greedy: 7 against 5
    >>> _improve(np.array([3, 3, 2, 2, 2]), part_of, np.array([6.0, 6.0])), part_of.tolist()
    (True, [1, 1, 0, 0, 0])
    """
    filled = np.bincount(part_of, weights=sizes, minlength=len(targets))
    best, change = 1e-9, None
    for a in range(len(targets)):
        for b in range(len(targets)):
            if a == b:
                continue
            ga, gb = np.flatnonzero(part_of == a), np.flatnonzero(part_of == b)
            # Moving d records from a to b: a move (d = size) or a swap (d = difference).
            deltas = np.concatenate([sizes[ga], (sizes[ga][:, None] - sizes[gb][None, :]).ravel()])
            now = abs(filled[a] - targets[a]) + abs(filled[b] - targets[b])
            gain = (
                now
                - np.abs(filled[a] - deltas - targets[a])
                - np.abs(filled[b] + deltas - targets[b])
            )
            k = int(np.argmax(gain)) if len(gain) else 0
            if len(gain) and gain[k] > best:
                best, change = gain[k], (a, b, ga, gb, k)
    if change is None:
        return False
    a, b, ga, gb, k = change
    if k < len(ga):
        part_of[ga[k]] = b
    else:
        i, j = divmod(k - len(ga), len(gb))
        part_of[ga[i]], part_of[gb[j]] = b, a
    return True
