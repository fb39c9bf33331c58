"""The compact form of records: integer pixels with their rescale, and every contour
kind of a record in one bit array (numpy only: the worker side imports it).

A dataset holds ``pixels`` (the source's integer dtype, or float32), ``slope`` and
``intercept`` (float64, one per record) and ``labels`` (bit ``k`` is kind ``k`` in the
order of ``ds.attrs["kinds"]``); the float32 ``image`` and the bool masks are derived
from them with :func:`widen` and :func:`unpack_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["label_dtype", "pack_labels", "unpack_labels", "widen"]

#: The unsigned types a bit array may have, narrowest first.
LABEL_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def widen(pixels: np.ndarray, slope: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """The float32 image of compact records: ``pixels * slope + intercept``, in float64.

    The DICOM rule: float64 arithmetic, then one cast to float32. Float32 pixels with
    every slope 1 and intercept 0 (the float32 fallback) are copied as they are, so
    that even ``-0.0`` and NaN payloads come back unchanged.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(record, y, x)``, integer or float32.
    slope, intercept : numpy.ndarray
        ``(record,)`` float64: each record's rescale.

    Returns
    -------
    numpy.ndarray
        ``(record, y, x)`` float32, a new array.

    Raises
    ------
    ValueError
        If ``slope`` or ``intercept`` does not have one value per record.

    Examples
    --------
    >>> pixels = np.array([[[0, 3]], [[0, 3]]], dtype=np.int16)
    >>> widen(pixels, np.array([1.0, 0.5]), np.array([0.0, -1024.0]))
    array([[[    0. ,     3. ]],
    <BLANKLINE>
           [[-1024. , -1022.5]]], dtype=float32)
    """
    slope, intercept = np.asarray(slope), np.asarray(intercept)
    if slope.shape != (len(pixels),) or intercept.shape != (len(pixels),):
        raise ValueError(
            f"slope {slope.shape} and intercept {intercept.shape} need one value per record "
            f"of pixels {pixels.shape}; pass the records' own rescale"
        )
    if pixels.dtype == np.float32 and (slope == 1).all() and (intercept == 0).all():
        return pixels.copy()
    wide = pixels.astype(np.float64) * slope[:, None, None] + intercept[:, None, None]
    return wide.astype(np.float32)


def label_dtype(n: int) -> np.dtype:
    """The unsigned type of a bit array for ``n`` kinds: uint8 up to 8, up to uint64.

    Parameters
    ----------
    n : int
        Kinds.

    Returns
    -------
    numpy.dtype
        The narrowest of uint8, uint16, uint32, uint64 with ``n`` bits.

    Raises
    ------
    ValueError
        If ``n`` is over 64.

    Examples
    --------
    >>> label_dtype(2), label_dtype(9), label_dtype(64)
    (dtype('uint8'), dtype('uint16'), dtype('uint64'))
    """
    for dtype in LABEL_DTYPES:
        if n <= np.dtype(dtype).itemsize * 8:
            return np.dtype(dtype)
    raise ValueError(f"{n} kinds do not fit one bit array (at most 64); keep fewer kinds")


def pack_labels(masks: Mapping[str, np.ndarray], kinds: Sequence[str]) -> np.ndarray:
    """One bit array from bool masks: bit ``k`` is ``masks[kinds[k]]``.

    Parameters
    ----------
    masks : mapping of str to numpy.ndarray
        Each kind's bool mask, all of one shape.
    kinds : sequence of str
        The bit order.

    Returns
    -------
    numpy.ndarray
        The masks' shape, of :func:`label_dtype` ``(len(kinds))``.

    Raises
    ------
    KeyError
        If a kind has no mask.
    ValueError
        If there are no kinds, or over 64.

    Examples
    --------
    >>> masks = {"i": np.array([True, False, True]), "o": np.array([True, True, False])}
    >>> pack_labels(masks, ("i", "o"))
    array([3, 2, 1], dtype=uint8)
    """
    if not kinds:
        raise ValueError("no kinds to pack: give at least one kind's mask")
    dtype = label_dtype(len(kinds))
    out = np.zeros(np.shape(masks[kinds[0]]), dtype=dtype)
    for k, kind in enumerate(kinds):
        out |= np.asarray(masks[kind], dtype=bool).astype(dtype) << dtype.type(k)
    return out


def unpack_labels(labels: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Each kind's bool mask from a bit array: ``masks[kinds[k]]`` is bit ``k``.

    Parameters
    ----------
    labels : numpy.ndarray
        An unsigned bit array.
    kinds : sequence of str
        The bit order.

    Returns
    -------
    dict of str to numpy.ndarray
        Bool arrays of ``labels``' shape, in the order of ``kinds``.

    Raises
    ------
    ValueError
        If ``labels`` has fewer bits than there are kinds.

    Examples
    --------
    >>> unpack_labels(np.array([3, 2, 1], dtype=np.uint8), ("i", "o"))
    {'i': array([ True, False,  True]), 'o': array([ True,  True, False])}
    """
    labels = np.asarray(labels)
    if len(kinds) > labels.dtype.itemsize * 8:
        raise ValueError(
            f"{len(kinds)} kinds but labels are {labels.dtype} ({labels.dtype.itemsize * 8} "
            "bits); pass the kinds the labels were packed with (ds.attrs['kinds'])"
        )
    one = labels.dtype.type(1)
    return {kind: ((labels >> labels.dtype.type(k)) & one) != 0 for k, kind in enumerate(kinds)}
