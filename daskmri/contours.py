"""Read one hand-drawn contour (a polygon text file) and rasterise it to a mask.

A contour file holds one ``x y`` pair per line, in pixel units (x = column,
y = row), tracing a closed polygon. :func:`polygon_mask` follows the dataset's
mask rule: pixel ``(r, c)`` is inside when the point ``(x=c, y=r)`` lies inside
the polygon by the even-odd rule.
"""

from __future__ import annotations

import io
import os

import numpy as np

from .errors import ContourError
from .filesystem import LOCAL, FileSystem
from .limits import DEFAULT_LIMITS, Limits, read_bounded

__all__ = ["SNAP", "check_points", "polygon_mask", "read_contour"]

#: Coordinates are snapped to multiples of 1/SNAP pixel before rasterising (see
#: :func:`polygon_mask`).
SNAP = 1024

# Points may sit this far (in pixels) outside the image: hand-drawn outlines
# often touch the border, but anything further out is a wrong file or wrong image.
_EDGE_MARGIN = 1.0


def read_contour(
    path: str | os.PathLike[str],
    *,
    shape: tuple[int, int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    fs: FileSystem = LOCAL,
) -> np.ndarray:
    """Read a contour file into an ``(N, 2)`` float64 array of ``(x, y)`` points.

    Blank lines, surrounding whitespace, tabs, CRLF line endings and a UTF-8 BOM
    are accepted. Every other line must hold exactly two finite numbers.

    Parameters
    ----------
    path : str or os.PathLike
        The contour file.
    shape : (rows, columns), optional
        The image the contour belongs to. When given, every point must lie within
        one pixel of the image.
    limits : Limits
        ``max_file_bytes`` and ``max_contour_points`` bound what is read.
    fs : FileSystem
        Where ``path`` is (:data:`~daskmri.filesystem.LOCAL` by default; a
        record's ``fs`` for a dataset at a URL).

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` float64, column 0 is x (column), column 1 is y (row).

    Raises
    ------
    ContourError
        If the file is missing, too large, not UTF-8 text, has a line that is not
        two numbers, has fewer than 3 points or too many, or has non-finite or
        out-of-image coordinates. The message names the file and the line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.txt"
    >>> _ = p.write_text("1.5 2\\n4 2\\n4 6\\n")
    >>> read_contour(p)
    array([[1.5, 2. ],
           [4. , 2. ],
           [4. , 6. ]])
    """
    path = os.fspath(path)
    raw = read_bounded(
        path,
        limits,
        error=ContourError,
        name="contour file",
        expected="a contour text file",
        fs=fs,
    )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ContourError(
            path, f"not UTF-8 text (bad byte at offset {exc.start}); expected 'x y' lines"
        ) from None
    return parse_contour(text, path=path, shape=shape, limits=limits)


def parse_contour(
    text: str,
    *,
    path: str = "<string>",
    shape: tuple[int, int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Parse contour text; see :func:`read_contour` for the rules.

    Examples
    --------
    >>> parse_contour("0 0\\r\\n\\t3 0\\n\\n3 3\\n").shape
    (3, 2)
    """
    if not text.strip():
        points = np.empty((0, 2))
    else:
        try:
            # numpy's C tokenizer: checks that every line has the same number of
            # numbers and converts them, several times faster than Python's float().
            points = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2, comments=None)
        except ValueError:
            _raise_bad_line(text, path)
        if points.shape[1] != 2:
            _raise_bad_line(text, path)
    if len(points) > limits.max_contour_points:
        raise ContourError(
            path,
            f"{len(points)} points, over Limits.max_contour_points={limits.max_contour_points}",
        )
    if len(points) == 0:
        raise ContourError(path, "empty contour (no 'x y' lines); a polygon needs at least 3")
    if len(points) < 3:
        raise ContourError(
            path, f"only {len(points)} point(s); a polygon needs at least 3 'x y' lines"
        )
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        x, y = points[bad]
        raise ContourError(path, f"non-finite coordinate {x:g} {y:g} (point {bad + 1})")
    if shape is not None:
        check_points(points, path=path, shape=shape)
    return points


def check_points(points: np.ndarray, *, path: str, shape: tuple[int, int]) -> np.ndarray:
    """``points`` (``(N, 2)`` of ``(x, y)``), checked to lie within one pixel of an
    image of ``shape``.

    Raises
    ------
    ContourError
        Naming the first point outside, the image size and ``path``.

    Examples
    --------
    >>> check_points(np.array([[0.0, 0.0], [9.0, 3.0]]), path="c.txt", shape=(2, 4))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.ContourError: c.txt: point 2 (x=9, y=3) lies outside the 2x4 image: ...
    """
    height, width = shape
    lo = -_EDGE_MARGIN
    outside = (
        (points[:, 0] < lo)
        | (points[:, 0] > width - 1 + _EDGE_MARGIN)
        | (points[:, 1] < lo)
        | (points[:, 1] > height - 1 + _EDGE_MARGIN)
    )
    if outside.any():
        bad = int(np.argmax(outside))
        x, y = points[bad]
        raise ContourError(
            path,
            f"point {bad + 1} (x={x:g}, y={y:g}) lies outside the {height}x{width} image: "
            "is this contour linked to the right DICOM?",
        )
    return points


def _raise_bad_line(text: str, path: str) -> None:
    # Slow path, only on failure: find the first offending line to name it.
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            float(fields[0]), float(fields[1])
        except ValueError:
            shown = line.strip()
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ContourError(
                path, f"line {number} is {shown!r}, expected two numbers 'x y'"
            ) from None
    raise ContourError(path, "cannot parse contour lines as 'x y' numbers")  # pragma: no cover


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a closed polygon by the even-odd rule at integer pixel positions.

    Pixel ``(r, c)`` is True when the point ``(x=c, y=r)`` lies inside the polygon.
    The polygon closes itself (last point back to the first). A pixel centre exactly
    on an edge is inside when a point a hair to its right and below is (half-open,
    as PNPOLY).

    Coordinates are first rounded to multiples of 1/1024 pixel (:data:`SNAP`).
    Contours that trace pixel centres put thousands of centres exactly on edges,
    where the half-open rule decides; the same polygon brought back from patient
    space (an RTSTRUCT) lands about 1e-8 px off the grid, which would flip those
    ties. Snapped, both give the same mask; text coordinates with up to 10 binary
    digits after the point (0.5, 0.25, ...) are unchanged. The work is a
    scanline fill: crossings of every edge with every row are computed at once,
    then a cumulative sum over columns gives each pixel's crossing parity, so the
    cost is ``O(rows * (edges + columns))`` with no Python loop over pixels.

    Parameters
    ----------
    points : array_like, shape (N, 2)
        Polygon vertices as ``(x, y)`` = (column, row).
    shape : (rows, columns)
        Shape of the output mask.

    Returns
    -------
    numpy.ndarray
        Boolean mask of ``shape``.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]])
    >>> polygon_mask(square, (4, 4)).astype(int)
    array([[0, 0, 0, 0],
           [0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    height, width = (int(n) for n in shape)
    mask = np.zeros((height, width), dtype=bool)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    # rint is what np.round does with no decimals (half to even), without its wrapper.
    pts = np.rint(pts * SNAP) / SNAP
    if len(pts) < 3 or height == 0 or width == 0:
        return mask
    x0, y0 = pts[:, 0], pts[:, 1]
    # The next vertex of each (np.roll is several times slower for short arrays).
    x1, y1 = np.concatenate((x0[1:], x0[:1])), np.concatenate((y0[1:], y0[:1]))
    # The arrays here are small (a few hundred values), so the cost is the number of
    # numpy calls: np.clip is spelled np.maximum + np.minimum (the same values, NaN
    # included, without np.clip's Python wrapper), and like values share one call.
    # Pixels left of ceil(min x) or right of ceil(max x) are outside, so the work is
    # confined to the polygon's bounding box (a heart is a small part of the image).
    c0, c1 = _clip(np.ceil((x0.min(), x0.max())), width)
    box = c1 - c0
    if box == 0:
        return mask
    # PNPOLY's half-open rule: an edge crosses row r when exactly one end is above r,
    # so a vertex on a scanline counts once. For integer r that is ceil(low) <= r <
    # ceil(high): enumerate only those rows per edge instead of testing every row.
    first, stop = _clip(np.ceil((np.minimum(y0, y1), np.maximum(y0, y1))), height)
    spans = stop - first
    edge = np.repeat(np.arange(len(pts)), spans)
    if edge.size == 0:
        return mask
    r0 = int(first.min())
    r1 = int(stop.max())
    # Row of each crossing, counted from r0: its edge's first row, plus its place
    # among that edge's crossings.
    row = np.arange(edge.size) + (first - r0 - (np.cumsum(spans) - spans))[edge]
    xa, xb, ya, yb = x0[edge], x1[edge], y0[edge], y1[edge]
    x_cross = xa + (xb - xa) * (row + r0 - ya) / (yb - ya)
    # A crossing toggles pixel c when c < x_cross, i.e. for c < ceil(x_cross).
    col_stop = np.minimum(np.maximum(np.ceil(x_cross), c0), c1).astype(np.intp) - c0
    toggles = np.bincount(row * (box + 1) + col_stop, minlength=(r1 - r0) * (box + 1))
    # Pixel parity = parity of crossings with col_stop <= c, because every row of a
    # closed polygon has an even number of crossings. For the same reason the running
    # sum carried over from earlier rows is even, so one flat (fast, contiguous)
    # cumsum serves all rows at once.
    parity = np.cumsum(toggles).reshape(r1 - r0, box + 1)[:, :box]
    mask[r0:r1, c0:c1] = parity & 1  # assigned to bool: odd is True
    return mask


def _clip(values: np.ndarray, top: int) -> np.ndarray:
    """``values`` clipped to ``[0, top]``, as pixel indices."""
    return np.minimum(np.maximum(values, 0), top).astype(np.intp)
