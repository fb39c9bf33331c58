"""The compact form of records: the source's integer pixels with their rescale, and
all contour kinds of a record in one bit array.

A record's float32 image is ``widen(pixels, slope, intercept)``: the integers times
the slope plus the intercept, computed in float64 and rounded once to float32, which
is how DICOM's modality rescale (and nibabel's scaling) is computed. Every record is
kept compact only where that gives back the reader's float32 image bit for bit
(:func:`verified`); otherwise the float32 image itself is kept, with slope 1 and
intercept 0 (the *fallback*), which widens to itself exactly.

A dataset's pixels share one dtype: the widest integer type of its records
(:func:`common_dtype`), or float32 as soon as one record is a fallback (or no integer
type holds them all); :func:`to_dtype` brings a record's pixels to it, exactly.

Masks: bit ``k`` of ``labels`` is kind ``k`` (:func:`pack_labels`,
:func:`unpack_labels`), in the smallest unsigned type with a bit per kind
(:func:`label_dtype`).

Worker side: numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FALLBACK",
    "MAX_KINDS",
    "Compact",
    "common_dtype",
    "fits",
    "label_dtype",
    "pack_labels",
    "padding",
    "to_dtype",
    "unpack_labels",
    "verified",
    "widen",
]

#: The dtype of a fallback record, and of a dataset that holds one.
FALLBACK = np.dtype(np.float32)

#: The most contour kinds one bit array holds (uint64).
MAX_KINDS = 64


@dataclass(frozen=True)
class Compact:
    """One record's compact image: ``pixels`` (2-D, an integer dtype, or float32 for
    a fallback) and the rescale ``slope`` and ``intercept`` that widen them to the
    float32 image (:func:`widen`).

    Examples
    --------
    >>> c = Compact(np.array([[1, 2]], np.int16), 2.0, -1.0)
    >>> c.image()
    array([[1., 3.]], dtype=float32)
    >>> Compact.fallback(c.image()).pixels.dtype
    dtype('float32')
    """

    pixels: np.ndarray
    slope: float = 1.0
    intercept: float = 0.0

    @classmethod
    def fallback(cls, image: np.ndarray) -> Compact:
        """The float32 ``image`` kept as it is: slope 1, intercept 0."""
        return cls(np.asarray(image, dtype=np.float32), 1.0, 0.0)

    @property
    def is_fallback(self) -> bool:
        """Whether the pixels are float32 rather than the source's integers."""
        return self.pixels.dtype.kind == "f"

    def image(self) -> np.ndarray:
        """The float32 image: :func:`widen` of the pixels."""
        return widen(self.pixels, self.slope, self.intercept)


def widen(pixels: np.ndarray, slope, intercept, *, out: np.ndarray | None = None) -> np.ndarray:
    """The float32 image of compact ``pixels``: ``pixels * slope + intercept`` in
    float64, rounded once to float32.

    Parameters
    ----------
    pixels : numpy.ndarray
        One record ``(y, x)`` or several ``(record, y, x)``, of an integer dtype or
        float32.
    slope, intercept : float or numpy.ndarray
        A number each for one record; one value per record ``(record,)`` for several.
    out : numpy.ndarray, optional
        A float32 array of ``pixels``' shape to write into (a record's row of a
        batch), instead of a new one.

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``pixels`` (``out`` when given). Where every slope is 1
        and every intercept 0, a plain cast (exact: an integer of up to 32 bits is
        exact in float64, so rounding it once to float32 is what the float64 route
        gives).

    Raises
    ------
    ValueError
        If ``slope`` or ``intercept`` do not have one value per record.

    Examples
    --------
    >>> widen(np.array([[0, 1000]], np.uint16), 0.5, -10.0)
    array([[-10., 490.]], dtype=float32)
    >>> widen(np.array([[[1]], [[1]]], np.int16), np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    array([[[1.]],
    <BLANKLINE>
           [[3.]]], dtype=float32)
    """
    pixels = np.asarray(pixels)
    slope, intercept = np.asarray(slope, np.float64), np.asarray(intercept, np.float64)
    if pixels.ndim == 3:
        n = pixels.shape[0]
        if slope.shape not in ((), (n,)) or intercept.shape not in ((), (n,)):
            raise ValueError(
                f"slope and intercept need one value per record ({n}), got "
                f"{slope.shape} and {intercept.shape}"
            )
        slope, intercept = slope.reshape(-1, 1, 1), intercept.reshape(-1, 1, 1)
    plain = pixels.dtype.itemsize <= 4 or pixels.dtype.kind == "f"
    if plain and np.all(slope == 1.0) and np.all(intercept == 0.0):
        if out is None:
            return pixels.astype(np.float32)
        np.copyto(out, pixels, casting="unsafe")  # the same cast as astype
        return out
    wide = pixels.astype(np.float64)
    wide *= slope
    wide += intercept
    if out is None:
        return wide.astype(np.float32)
    np.copyto(out, wide, casting="same_kind")
    return out


def verified(image: np.ndarray, candidate: Compact | None) -> Compact:
    """``candidate`` where it widens to ``image`` bit for bit, else the fallback.

    Parameters
    ----------
    image : numpy.ndarray
        The record's float32 image as the reader gives it.
    candidate : Compact, optional
        The source's integer pixels and rescale; None when there are none (a float
        source, a resampled record, a custom reader).

    Returns
    -------
    Compact
        ``candidate``, or :meth:`Compact.fallback` of ``image``. Bits are compared
        (``view(np.uint32)``): ``-0.0`` is not ``0.0`` and a NaN must be the same NaN.

    Examples
    --------
    >>> image = np.array([[1.5, 0.0]], np.float32)
    >>> verified(image, Compact(np.array([[3, 0]], np.int16), 0.5, 0.0)).pixels.dtype
    dtype('int16')
    >>> verified(-image, Compact(np.array([[-3, 0]], np.int16), 0.5, 0.0)).is_fallback  # -0.0
    True
    """
    image = np.asarray(image)
    if candidate is None or candidate.pixels.shape != image.shape:
        return Compact.fallback(image)
    if candidate.is_fallback and candidate.pixels.dtype != FALLBACK:
        return Compact.fallback(image)
    if image.dtype != np.float32:
        return Compact.fallback(image)
    widened = candidate.image()
    if np.array_equal(widened.view(np.uint32), image.view(np.uint32)):
        return candidate
    return Compact.fallback(image)


def padding(compact: Compact) -> int | float | None:
    """The pixel value that widens to exactly ``0.0`` (a float32 image's padding)
    under ``compact``'s rescale, in its dtype; None where no value does.

    Examples
    --------
    >>> padding(Compact(np.zeros((1, 1), np.int16), 0.5, -3.0))
    6
    >>> padding(Compact(np.zeros((1, 1), np.uint16), 1.0, 10.0)) is None
    True
    """
    dtype = compact.pixels.dtype
    if compact.is_fallback or (compact.slope == 1.0 and compact.intercept == 0.0):
        return 0
    if compact.slope == 0 or not np.isfinite(compact.slope):
        return None
    guess = np.rint(-compact.intercept / compact.slope)
    info = np.iinfo(dtype)
    if not (np.isfinite(guess) and info.min <= guess <= info.max):
        return None
    value = dtype.type(guess)
    zero = widen(np.array([[value]], dtype), compact.slope, compact.intercept)
    return int(value) if zero.view(np.uint32)[0, 0] == 0 else None


def common_dtype(dtypes: Iterable) -> np.dtype:
    """The dtype that holds pixels of all ``dtypes``: their widest integer type, or
    float32 where one is float (a fallback) or no integer type holds them all.

    Examples
    --------
    >>> common_dtype([np.uint16, np.int16]), common_dtype([np.uint8])
    (dtype('int32'), dtype('uint8'))
    >>> common_dtype([np.uint64, np.int64]), common_dtype([np.int16, np.float32])
    (dtype('float32'), dtype('float32'))
    >>> common_dtype([])
    dtype('float32')
    """
    dtypes = [np.dtype(d) for d in dtypes]
    if not dtypes or any(d.kind not in "iu" for d in dtypes):
        return FALLBACK
    found = np.result_type(*dtypes)
    return found if found.kind in "iu" else FALLBACK


def fits(dtype, into) -> bool:
    """Whether pixels of ``dtype`` go into an array of dtype ``into`` exactly:
    ``into`` is float32 (a record widens), or an integer type that holds them.

    Examples
    --------
    >>> fits(np.int16, np.int32), fits(np.uint16, np.int16), fits(np.float32, np.int32)
    (True, False, False)
    """
    dtype, into = np.dtype(dtype), np.dtype(into)
    if into == FALLBACK:
        return True
    return dtype.kind in "iu" and into.kind in "iu" and np.can_cast(dtype, into, "safe")


def to_dtype(
    pixels: np.ndarray, slope: np.ndarray, intercept: np.ndarray, dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records ``(record, y, x)`` and their rescale in the dataset's ``dtype``:
    integers cast to a wider integer type, or widened to float32 (then slope 1 and
    intercept 0). Exact either way: the float32 images are those of the input.

    Raises
    ------
    ValueError
        If the pixels do not fit ``dtype`` (:func:`fits`).

    Examples
    --------
    >>> p, s, i = to_dtype(np.ones((1, 1, 2), np.uint8), np.array([2.0]), np.array([1.0]),
    ...                    np.float32)
    >>> p, s, i
    (array([[[3., 3.]]], dtype=float32), array([1.]), array([0.]))
    """
    dtype = np.dtype(dtype)
    slope, intercept = np.asarray(slope, np.float64), np.asarray(intercept, np.float64)
    if pixels.dtype == dtype:
        return pixels, slope, intercept
    if not fits(pixels.dtype, dtype):
        raise ValueError(f"{pixels.dtype} pixels do not fit {dtype} exactly")
    if dtype == FALLBACK:
        return widen(pixels, slope, intercept), np.ones_like(slope), np.zeros_like(intercept)
    return pixels.astype(dtype), slope, intercept


def label_dtype(n_kinds: int) -> np.dtype:
    """The unsigned type of a bit array with one bit per kind.

    Raises
    ------
    ValueError
        For more than :data:`MAX_KINDS` kinds (or a negative count).

    Examples
    --------
    >>> [label_dtype(n).name for n in (0, 8, 9, 16, 17, 33, 64)]
    ['uint8', 'uint8', 'uint16', 'uint16', 'uint32', 'uint64', 'uint64']
    >>> label_dtype(65)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 65 contour kinds: a record's labels hold at most 64 ...
    """
    if n_kinds < 0 or n_kinds > MAX_KINDS:
        raise ValueError(
            f"{n_kinds} contour kinds: a record's labels hold at most {MAX_KINDS} (one bit "
            "each); split the layout's kinds over several datasets"
        )
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if n_kinds <= 8 * np.dtype(dtype).itemsize:
            return np.dtype(dtype)
    raise AssertionError("unreachable")


def pack_labels(
    masks: Mapping[str, np.ndarray | None], kinds: Sequence[str], *, shape=None, out=None
) -> np.ndarray:
    """One bit array from a bool mask per kind: bit ``k`` set where ``kinds[k]`` is.

    Parameters
    ----------
    masks : mapping of str to bool array or None
        The masks by kind, all of one shape; a kind missing or None has no pixel.
    kinds : sequence of str
        The kinds in bit order (the dataset's ``attrs["kinds"]``).
    shape : tuple of int, optional
        The shape when no mask is given.
    out : numpy.ndarray, optional
        Zeros of ``label_dtype(len(kinds))`` to set the bits in (a record's row of a
        chunk's labels), instead of a new array.

    Returns
    -------
    numpy.ndarray
        ``label_dtype(len(kinds))``, the masks' shape (``out`` when given).

    Raises
    ------
    ValueError
        For more than 64 kinds, or no mask and no ``shape``.

    Examples
    --------
    >>> masks = {"icontour": np.array([True, False]), "ocontour": np.array([True, True])}
    >>> pack_labels(masks, ("icontour", "ocontour"))
    array([3, 2], dtype=uint8)
    """
    dtype = label_dtype(len(kinds))
    given = [m for m in (masks.get(kind) for kind in kinds) if m is not None]
    if shape is None and out is None:
        if not given:
            raise ValueError("pack_labels needs a mask or the shape")
        shape = np.shape(given[0])
    out = np.zeros(shape, dtype) if out is None else out
    for k, kind in enumerate(kinds):
        mask = masks.get(kind)
        if mask is None:
            continue
        # A bool mask is 0/1 bytes: viewed as uint8 it is bit 0 already, so one byte
        # per pixel is shifted (and only widened where the labels are wider).
        bits = np.asarray(mask, dtype=bool).view(np.uint8)
        if dtype.itemsize > 1:
            bits = bits.astype(dtype)
        np.bitwise_or(out, np.left_shift(bits, dtype.type(k)) if k else bits, out=out)
    return out


def unpack_labels(labels: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """The bool mask of each kind from a bit array: bit ``k`` is ``kinds[k]``.

    Raises
    ------
    ValueError
        For more than 64 kinds.

    Examples
    --------
    >>> unpack_labels(np.array([3, 2], np.uint8), ("icontour", "ocontour"))["icontour"]
    array([ True, False])
    """
    label_dtype(len(kinds))
    labels = np.asarray(labels)
    return {kind: bit(labels, k) for k, kind in enumerate(kinds)}


def bit(labels: np.ndarray, k: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """The bool mask of bit ``k`` of ``labels`` (written into the bool array ``out``
    when given).

    Examples
    --------
    >>> bit(np.array([1, 2, 3], np.uint8), 1)
    array([False,  True,  True])
    >>> out = np.ones(3, bool)
    >>> bit(np.array([1, 2, 3], np.uint8), 0, out=out) is out, out
    (True, array([ True, False,  True]))
    """
    labels = np.asarray(labels)
    one = labels.dtype.type(1)
    if labels.dtype.itemsize > 1:
        found = ((labels >> labels.dtype.type(k)) & one).astype(bool)
        if out is None:
            return found
        np.copyto(out, found)
        return out
    # 0 or 1 in one byte is a valid bool: at most two passes and no cast (the masks
    # are most of a batch thread's work when it widens, see benchmarks/compact.py).
    target = np.empty(labels.shape, np.uint8) if out is None else out.view(np.uint8)
    if k:
        np.right_shift(labels, labels.dtype.type(k), out=target)
        np.bitwise_and(target, one, out=target)
    else:
        np.bitwise_and(labels, one, out=target)
    return target.view(bool) if out is None else out
