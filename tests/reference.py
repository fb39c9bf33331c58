"""Independent references for the tests (nothing here uses daskmri's rasteriser)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def snap(points: np.ndarray) -> np.ndarray:
    """The mask rule's first step, written out: coordinates to multiples of 1/1024 px."""
    return np.round(np.asarray(points, dtype=np.float64) * 1024) / 1024


def pnpoly_exact(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Even-odd inside test at integer pixel positions in exact rational arithmetic.

    Slow (pure Python), for small shapes only. Pixel (r, c) tests the point
    (x=c, y=r), as DESIGN.md's mask rule says.
    """
    verts = [(Fraction(float(x)), Fraction(float(y))) for x, y in points]
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    n = len(verts)
    edges = [(verts[i - 1], verts[i]) for i in range(n)]
    for r in range(height):
        crossings = []
        for (xa, ya), (xb, yb) in edges:
            if (ya > r) != (yb > r):
                crossings.append(xa + (xb - xa) * (r - ya) / (yb - ya))
        for c in range(width):
            mask[r, c] = sum(1 for x in crossings if c < x) % 2 == 1
    return mask


def matplotlib_mask(
    points: np.ndarray, shape: tuple[int, int], *, tie_break: bool = True
) -> np.ndarray:
    """Pixel-centre reference from matplotlib's Path.contains_points.

    Real contours trace pixel edges, so many pixel centres lie exactly on the
    polygon, where "inside" is a convention. DESIGN.md's rule (even-odd,
    half-open) puts such a point inside exactly when a point nudged right by a
    tiny dx and down by a far tinier dy is inside; ``tie_break`` applies that
    nudge, so matplotlib decides only points that are unambiguous.
    """
    from matplotlib.path import Path

    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)
    if tie_break:
        centres += (1e-6, 1e-11)
    return Path(points).contains_points(centres).reshape(shape)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
