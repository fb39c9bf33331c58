"""Pictures of images with their contours, so a person can check the masks.

:func:`overlay` and :func:`write_png` need only numpy (the CLI demo uses them; the
PNG writer is daskmri's own, in ``_png.py``, so that the demo needs no extra);
helpers that draw with matplotlib import it lazily and name the ``plot`` extra
when it is missing.
"""

from __future__ import annotations

import numpy as np

from ._png import write_png, written_by_daskmri

__all__ = ["overlay", "overlay_grid", "show", "write_png", "written_by_daskmri"]

INNER_RGB = (255, 64, 64)
OUTER_RGB = (64, 255, 96)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay(
    image: np.ndarray, icontour: np.ndarray | None = None, ocontour: np.ndarray | None = None
) -> np.ndarray:
    """Grey image with the outlines of the inner (red) and outer (green) masks.

    The grey scale spans the 1st to 99th percentile, so one bright pixel does
    not darken the picture.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
    >>> rgb = overlay(np.arange(25.0).reshape(5, 5), icontour=mask)
    >>> rgb.shape, rgb[1, 1].tolist(), bool(rgb[2, 2, 0] == rgb[2, 2, 1])
    ((5, 5, 3), [255, 64, 64], True)
    """
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    for mask, colour in ((ocontour, OUTER_RGB), (icontour, INNER_RGB)):
        if mask is not None:
            rgb[_outline(np.asarray(mask, dtype=bool))] = colour
    return rgb


def overlay_grid(ds, records=None, *, columns: int = 4) -> np.ndarray:
    """Tile :func:`overlay` pictures of several records of a daskmri dataset.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`daskmri.load_dataset`.
    records : sequence of int, optional
        Positions along ``record``; default the first 8.
    columns : int
        Pictures per row.

    Returns
    -------
    numpy.ndarray
        uint8 RGB mosaic with a 2-pixel black gap between pictures.
    """
    if records is None:
        records = range(min(8, ds.sizes["record"]))
    records = list(records)
    if not records:
        raise ValueError("no records to draw")
    sub = ds[["image", "icontour", "ocontour", "has_icontour", "has_ocontour"]].isel(record=records)
    sub = sub.compute()
    tiles = [
        overlay(
            sub.image.values[k],
            sub.icontour.values[k] if sub.has_icontour.values[k] else None,
            sub.ocontour.values[k] if sub.has_ocontour.values[k] else None,
        )
        for k in range(len(records))
    ]
    height, width, _ = tiles[0].shape
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    gap = 2
    mosaic = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        mosaic[
            r * (height + gap) : r * (height + gap) + height,
            c * (width + gap) : c * (width + gap) + width,
        ] = tile
    return mosaic


def show(data, records=None, *, columns: int = 4, size: float = 2.5):
    """Overlays for a notebook: image, i-contour (red) and o-contour (green) outlines.

    Parameters
    ----------
    data : xarray.Dataset or dict
        A daskmri dataset, or a batch from :class:`daskmri.BatchIterator`.
    records : sequence of int, optional
        Which records (positions); default the first 8.
    columns : int
        Pictures per row.
    size : float
        Inches per picture.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    MissingExtraError
        Without matplotlib (``pip install 'daskmri[plot]'``).

    Examples
    --------
    >>> import numpy as np
    >>> batch = {"image": np.zeros((2, 8, 8), np.float32), "icontour": np.ones((2, 8, 8), bool),
    ...          "ocontour": np.zeros((2, 8, 8), bool), "patient_id": np.array(["P", "P"]),
    ...          "instance": np.array([1, 2])}
    >>> fig = show(batch)  # doctest: +SKIP
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import MissingExtraError

        raise MissingExtraError("matplotlib", "plot", "daskmri.plot.show") from None
    if isinstance(data, dict):
        n = len(data["image"])
        get = {k: np.asarray(v) for k, v in data.items()}
    else:
        n = data.sizes["record"]
        get = None
    records = list(range(min(8, n)) if records is None else records)
    if not records:
        raise ValueError("no records to draw")
    if get is None:
        sub = data[["image", "icontour", "ocontour", "has_icontour", "has_ocontour"]]
        sub = sub.isel(record=records).compute()
        get = {name: sub[name].values for name in sub.variables}
        rows_of = range(len(records))
    else:
        rows_of = records
    columns = max(1, min(columns, len(records)))
    nrows = -(-len(records) // columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(size * columns, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, rows_of, strict=False):
        inner, outer = get["icontour"][k], get["ocontour"][k]
        if "has_icontour" in get:
            inner = inner if get["has_icontour"][k] else None
            outer = outer if get["has_ocontour"][k] else None
        ax.imshow(overlay(get["image"][k], inner, outer))
        ax.set_title(f"{get['patient_id'][k]} / {get['instance'][k]}", fontsize=8)
    fig.tight_layout()
    return fig
