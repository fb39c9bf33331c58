"""Slices of any size and pixel spacing in one frame: where a source slice sits in
the dataset's frame (:class:`Geometry`), its image resampled and placed
(:func:`fit_image`), its contours mapped the same way (so that masks are
rasterised in the frame by the mask rule, never shifted or interpolated), and
:func:`to_source`, which maps an array in the frame back onto the source slice.

Placement (``fit="pad_or_crop"``): the slice, resampled first when a target
``spacing`` is given, is centred in the frame: source pixel (0, 0) lands at
``(row_offset, column_offset) = ((rows - h) // 2, (columns - w) // 2)``, negative
where the slice is cropped; padding is 0.

Resampling (``spacing=``): pixel edges are aligned, so the source's field of view
maps onto the same physical extent. With ``s = source_spacing / target_spacing``
per axis, the resampled slice has ``round(n * s)`` pixels, and a source coordinate
``x`` becomes ``(x + 0.5) * s - 0.5``. The image is interpolated linearly (edge
pixels repeated at the border).

Worker side: numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RecordError

__all__ = [
    "FITS",
    "GEOMETRY",
    "Geometry",
    "check_resampled",
    "fit_compact",
    "fit_image",
    "fit_mask",
    "paste",
    "place",
    "place_in_frame",
    "shape_error",
    "to_source",
]

#: The ways a slice meets the frame: ``"drop"`` a slice of another size, or
#: ``"pad_or_crop"`` it into the frame, centred.
FITS = ("drop", "pad_or_crop")

#: The per-record coordinates that say where the source slice sits in the frame.
GEOMETRY = (
    "source_rows",
    "source_columns",
    "row_offset",
    "column_offset",
    "row_scale",
    "column_scale",
    "source_row_spacing",
    "source_column_spacing",
)


@dataclass(frozen=True)
class Geometry:
    """Where one source slice sits in the dataset's frame (see the module notes)."""

    source_rows: int
    source_columns: int
    row_offset: int = 0
    column_offset: int = 0
    row_scale: float = 1.0
    column_scale: float = 1.0
    source_row_spacing: float = math.nan
    source_column_spacing: float = math.nan

    @classmethod
    def of(cls, values: Any) -> Geometry:
        """From the eight :data:`GEOMETRY` values, in order."""
        v = [float(x) for x in values]
        return cls(int(v[0]), int(v[1]), int(v[2]), int(v[3]), *v[4:])

    def row(self) -> tuple[float, ...]:
        """The eight values, in :data:`GEOMETRY` order."""
        # Not dataclasses.astuple: it deep-copies each field, a cost per record that
        # shows in a profile of benchmarks/fit.py, for eight numbers.
        return tuple(float(getattr(self, name)) for name in GEOMETRY)

    @property
    def scaled(self) -> bool:
        return (self.row_scale, self.column_scale) != (1.0, 1.0)

    @property
    def scaled_shape(self) -> tuple[int, int]:
        """The source slice's size after resampling (its own size without it)."""
        return (
            round(self.source_rows * self.row_scale),
            round(self.source_columns * self.column_scale),
        )

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Contour points ``(x, y)`` in source pixels, in frame pixels."""
        points = np.asarray(points, dtype=np.float64)
        if self.scaled:
            scale = np.array([self.column_scale, self.row_scale])
            points = (points + 0.5) * scale - 0.5
        return points + np.array([self.column_offset, self.row_offset], dtype=np.float64)


def place(
    source_shape: tuple[int, int],
    frame: tuple[int, int],
    *,
    spacing: tuple[float, float] | None = None,
    target: tuple[float, float] | None = None,
) -> Geometry:
    """The geometry of a slice of ``source_shape`` (pixel ``spacing`` in mm, or None)
    centred in ``frame``, resampled first to ``target`` spacing when given.

    Raises
    ------
    ValueError
        When ``target`` is given and ``spacing`` is None.

    Examples
    --------
    >>> g = place((200, 300), (256, 256))
    >>> g.row_offset, g.column_offset
    (28, -22)
    >>> place((100, 100), (256, 256), spacing=(2.0, 2.0), target=(1.0, 1.0)).scaled_shape
    (200, 200)
    """
    # round() halves to even, as Python does: 5 px x 0.5 -> 2, 7 px x 0.5 -> 4.
    rows, columns = int(source_shape[0]), int(source_shape[1])
    spacing_mm = (math.nan, math.nan) if spacing is None else tuple(map(float, spacing))
    scale = (1.0, 1.0)
    if target is not None:
        if spacing is None:
            raise ValueError("the slice has no PixelSpacing, so it cannot be resampled")
        scale = (spacing_mm[0] / float(target[0]), spacing_mm[1] / float(target[1]))
    h, w = round(rows * scale[0]), round(columns * scale[1])
    offsets = ((int(frame[0]) - h) // 2, (int(frame[1]) - w) // 2)
    return Geometry(rows, columns, *offsets, *scale, *spacing_mm)


def paste(
    array: np.ndarray, row_offset: int, column_offset: int, frame, *, fill: Any = 0
) -> np.ndarray:
    """``array`` in a new ``frame``-sized array of its dtype, its pixel (0, 0) at
    ``(row_offset, column_offset)``; what falls outside is cut, the rest is ``fill``.

    Examples
    --------
    >>> paste(np.ones((2, 2), int), 1, -1, (3, 3))
    array([[0, 0, 0],
           [1, 0, 0],
           [1, 0, 0]])
    """
    frame = tuple(int(n) for n in frame)
    out = np.zeros(frame, array.dtype) if fill == 0 else np.full(frame, fill, array.dtype)
    (fr, sr), (fc, sc) = (
        _overlap(row_offset, array.shape[0], out.shape[0]),
        _overlap(column_offset, array.shape[1], out.shape[1]),
    )
    out[fr, fc] = array[sr, sc]
    return out


def _overlap(offset: int, size: int, frame: int) -> tuple[slice, slice]:
    """The frame and source slices where a source of ``size`` at ``offset`` overlaps."""
    lo, hi = max(0, offset), min(frame, offset + size)
    hi = max(lo, hi)
    return slice(lo, hi), slice(lo - offset, hi - offset)


def _axis(where: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Linear interpolation along one axis of ``n`` pixels at coordinates ``where``
    (pixel centres at 0 .. n - 1; beyond them the edge pixel repeats): the two
    neighbours and the weight of the second."""
    where = np.clip(where, 0, n - 1)
    low = np.floor(where).astype(np.intp)
    return low, np.minimum(low + 1, n - 1), where - low


def _interpolate(data: np.ndarray, rows: tuple, columns: tuple) -> np.ndarray:
    """``data`` (float) interpolated at the :func:`_axis` rows, then columns."""
    (r0, r1, wr), (c0, c1, wc) = rows, columns
    top = data[r0]
    data = top + (data[r1] - top) * wr.astype(data.dtype)[:, None]
    # Along rows again, transposed: gathering whole rows is far faster than columns.
    data = np.ascontiguousarray(data.T)
    left = data[c0]
    data = left + (data[c1] - left) * wc.astype(data.dtype)[:, None]
    return np.ascontiguousarray(data.T)


def resample(
    image: np.ndarray, geometry: Geometry, rows: slice = slice(None), columns: slice = slice(None)
) -> np.ndarray:
    """``image`` resampled linearly to ``geometry.scaled_shape`` (float32); only the
    output ``rows`` and ``columns`` asked for are computed."""

    def centres(n_out: int, scale: float, part: slice) -> np.ndarray:
        # Target pixel centre i sits at source coordinate (i + 0.5) / scale - 0.5.
        return ((np.arange(n_out) + 0.5) / scale - 0.5)[part]

    n_rows, n_columns = geometry.scaled_shape
    along_rows = _axis(centres(n_rows, geometry.row_scale, rows), image.shape[0])
    along_columns = _axis(centres(n_columns, geometry.column_scale, columns), image.shape[1])
    return _interpolate(np.asarray(image, dtype=np.float32), along_rows, along_columns)


def fit_image(image: np.ndarray, geometry: Geometry, frame: tuple[int, int]) -> np.ndarray:
    """The source ``image`` in the frame: resampled if ``geometry`` says so (only
    the part that lands in the frame), then placed."""
    if not geometry.scaled:
        return paste(image, geometry.row_offset, geometry.column_offset, frame)
    (fr, sr), (fc, sc) = (
        _overlap(geometry.row_offset, geometry.scaled_shape[0], int(frame[0])),
        _overlap(geometry.column_offset, geometry.scaled_shape[1], int(frame[1])),
    )
    out = np.zeros(tuple(int(n) for n in frame), dtype=np.float32)
    out[fr, fc] = resample(image, geometry, sr, sc)
    return out


def fit_compact(compact: Any, image: np.ndarray, geometry: Geometry, frame) -> Any:
    """A slice's compact form (:class:`daskmri.compact.Compact`) placed in the frame
    as :func:`fit_image` placed its float32 ``image``: None where it cannot be (a
    resampled slice is float32; padding needs an integer that widens to exactly 0.0),
    else checked against ``image`` bit for bit (:func:`daskmri.compact.verified`).

    Examples
    --------
    >>> from daskmri.compact import Compact
    >>> c = Compact(np.array([[12]], np.int16), 0.5, -3.0)
    >>> g = place((1, 1), (1, 3))
    >>> fit_compact(c, fit_image(c.image(), g, (1, 3)), g, (1, 3)).pixels
    array([[ 6, 12,  6]], dtype=int16)
    """
    from .compact import padding, verified

    if compact is None or geometry.scaled:
        return None
    fill = padding(compact)
    if fill is None:
        return None
    pixels = paste(compact.pixels, geometry.row_offset, geometry.column_offset, frame, fill=fill)
    found = verified(image, type(compact)(pixels, compact.slope, compact.intercept))
    return None if found.is_fallback else found


def place_in_frame(path: str, source, frame, source_spacing, fit: str, spacing) -> Geometry:
    """Where a slice (or plane) of size ``source`` goes in the ``frame``: :func:`place`,
    resampled from ``source_spacing`` to ``spacing`` when given.

    Raises
    ------
    RecordError
        When it cannot go there: no spacing to resample from, an unusable spacing, or
        another size with ``fit="drop"``.

    Examples
    --------
    >>> place_in_frame("/d/1.dcm", (4, 4), (4, 4), None, "drop", None).scaled_shape
    (4, 4)
    """
    if spacing is not None and source_spacing is None:
        raise RecordError(path, "no PixelSpacing, so the slice cannot be resampled to spacing=")
    try:
        geometry = place(source, frame, spacing=source_spacing, target=spacing)
    except (OverflowError, ValueError) as exc:  # a PixelSpacing such as 1e308
        raise RecordError(
            path, f"PixelSpacing {source_spacing} cannot be resampled to spacing={spacing}"
        ) from exc
    if fit == "drop" and geometry.scaled_shape != tuple(frame):
        raise shape_error(path, geometry.scaled_shape, frame, resampled=spacing is not None)
    return geometry


def check_resampled(path: str, geometry: Geometry, source_spacing, limits) -> None:
    """Raise RecordError when resampling would make a slice larger than
    ``limits.max_pixels``: a spacing such as 1e-6 mm is a damaged file, not a request."""
    if geometry.scaled and not 0 < np.prod(geometry.scaled_shape) <= limits.max_pixels:
        raise RecordError(
            path,
            f"PixelSpacing {source_spacing} would resample the slice to "
            f"{'x'.join(map(str, geometry.scaled_shape))} pixels (Limits.max_pixels="
            f"{limits.max_pixels}); is the spacing right?",
        )


def shape_error(
    path: str | None, got: tuple[int, ...], want: tuple[int, int], *, resampled: bool = False
) -> RecordError:
    """The RecordError of an image whose size is not the frame's.

    Examples
    --------
    >>> print(shape_error("/d/1.dcm", (3, 4), (4, 4)).reason)  # doctest: +ELLIPSIS
    image is 3x4 but this dataset's images are 4x4; pass fit='pad_or_crop' ...
    """
    what = "resampled image" if resampled else "image"
    return RecordError(
        path or "",
        f"{what} is {'x'.join(map(str, got))} but this dataset's images are "
        f"{want[0]}x{want[1]}; pass fit='pad_or_crop' to centre every slice in the frame "
        "(or build differently sized series separately)",
    )


def fit_mask(mask: np.ndarray, geometry: Geometry, frame: tuple[int, int]) -> np.ndarray:
    """A source ``mask`` (a label map's kind) in the frame: resampled by the nearest
    source pixel if ``geometry`` says so, then placed; never a value in between.

    Examples
    --------
    >>> mask = np.array([[True, False], [False, True]])
    >>> fit_mask(mask, place((2, 2), (4, 4), spacing=(1.0, 1.0), target=(0.5, 0.5)), (4, 4))
    ... # doctest: +NORMALIZE_WHITESPACE
    array([[ True,  True, False, False],
           [ True,  True, False, False],
           [False, False,  True,  True],
           [False, False,  True,  True]])
    """
    if geometry.scaled:
        n_rows, n_columns = geometry.scaled_shape
        rows = (np.arange(n_rows) + 0.5) / geometry.row_scale - 0.5
        columns = (np.arange(n_columns) + 0.5) / geometry.column_scale - 0.5
        mask = _nearest(np.asarray(mask), rows, columns)
    return paste(mask, geometry.row_offset, geometry.column_offset, frame)


def to_source(array: Any, record: Any) -> np.ndarray:
    """Map an array in the dataset's frame back onto its source slice's pixel grid.

    Map ``array`` (a mask or a predicted map in the dataset's frame) back onto the
    pixel grid of the source slice of ``record`` (a one-record selection of the
    dataset, ``ds.isel(record=k)``, or anything with its coordinates).

    Without resampling this is exact: the frame pixels the slice was placed in, and
    0 (False) where the slice was cropped away. With ``spacing=``, each source pixel
    centre is mapped into the frame (the inverse of the build's mapping) and the
    value is read by linear interpolation for floats, by the nearest pixel for
    booleans and integers (labels); 0 (False) outside the frame.

    Examples
    --------
    >>> import xarray as xr
    >>> geometry = dict(zip(GEOMETRY, place((2, 4), (4, 2)).row()))
    >>> record = xr.Dataset(coords=geometry)
    >>> frame = np.arange(8).reshape(4, 2)
    >>> to_source(frame, record)
    array([[0, 2, 3, 0],
           [0, 4, 5, 0]])
    """
    geometry = Geometry.of([np.asarray(record[name]).item() for name in GEOMETRY])
    array = np.asarray(array)
    source = (geometry.source_rows, geometry.source_columns)
    if not geometry.scaled:
        return paste(array, -geometry.row_offset, -geometry.column_offset, source)
    rows = (np.arange(source[0]) + 0.5) * geometry.row_scale - 0.5 + geometry.row_offset
    cols = (np.arange(source[1]) + 0.5) * geometry.column_scale - 0.5 + geometry.column_offset
    if not np.issubdtype(array.dtype, np.floating):
        return _nearest(array, rows, cols)  # masks and labels: never a value in between
    return _linear(array, rows, cols)


def _nearest(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    r, c = np.floor(rows + 0.5).astype(np.intp), np.floor(cols + 0.5).astype(np.intp)
    inside = ((r >= 0) & (r < array.shape[0]))[:, None] & ((c >= 0) & (c < array.shape[1]))
    out = array[np.clip(r, 0, array.shape[0] - 1)][:, np.clip(c, 0, array.shape[1] - 1)]
    return np.where(inside, out, np.zeros((), array.dtype))


def _linear(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    def inside(where: np.ndarray, n: int) -> np.ndarray:
        return (where >= -0.5) & (where <= n - 0.5)

    data = np.asarray(array, dtype=np.float64)
    data = _interpolate(data, _axis(rows, array.shape[0]), _axis(cols, array.shape[1]))
    seen = inside(rows, array.shape[0])[:, None] & inside(cols, array.shape[1])
    return np.where(seen, data, 0).astype(array.dtype)
