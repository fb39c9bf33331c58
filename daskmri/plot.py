"""Pictures of images with their contours, so a person can check the masks.

:func:`overlay` and :func:`write_png` need only numpy (the CLI demo uses them; the
PNG writer is daskmri's own, in ``_png.py``, so that the demo needs no extra);
helpers that draw with matplotlib import it lazily and name the ``plot`` extra
when it is missing.
"""

from __future__ import annotations

import numpy as np

from ._png import png_bytes, write_png, written_by_daskmri

__all__ = [
    "overlay",
    "overlay_grid",
    "png_bytes",
    "show",
    "thumbnail",
    "write_png",
    "written_by_daskmri",
]

#: The outline colour of each mask, in the order given (then again): red, green,
#: blue, yellow, magenta, cyan.
PALETTE = (
    (255, 64, 64),
    (64, 255, 96),
    (80, 160, 255),
    (255, 220, 0),
    (255, 0, 255),
    (0, 230, 230),
)
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay(
    image: np.ndarray, *masks: np.ndarray | dict[str, np.ndarray | None] | None
) -> np.ndarray:
    """A grey image with the outlines of its masks, as an RGB array.

    Grey image with the outlines of its masks, each kind in the colour of its
    place (:data:`PALETTE`: red, green, blue, yellow, magenta, cyan, then again);
    earlier masks are drawn over later ones.

    The grey scale spans the 1st to 99th percentile, so one bright pixel does
    not darken the picture.

    Parameters
    ----------
    image : numpy.ndarray
        One 2D image.
    *masks : numpy.ndarray or None, or one dict of str to numpy.ndarray or None
        The masks in order (None: that kind has none here), or one dict from kind
        name to mask, in its order (e.g. the layout's kinds).

    Raises
    ------
    TypeError
        If a dict is given with other masks.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
    >>> rgb = overlay(np.arange(25.0).reshape(5, 5), mask)
    >>> rgb.shape, rgb[1, 1].tolist(), bool(rgb[2, 2, 0] == rgb[2, 2, 1])
    ((5, 5, 3), [255, 64, 64], True)
    >>> overlay(np.zeros((5, 5)), {"lv": None, "myo": mask})[1, 1].tolist()
    [64, 255, 96]
    """
    if any(isinstance(mask, dict) for mask in masks):
        if len(masks) != 1:
            raise TypeError("overlay takes the masks one by one, or one dict of them")
        masks = tuple(masks[0].values())
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    colours = [PALETTE[k % len(PALETTE)] for k in range(len(masks))]
    for mask, colour in reversed(list(zip(masks, colours, strict=True))):
        if mask is not None:
            rgb[_outline(np.asarray(mask, dtype=bool))] = colour
    return rgb


def shrink_factor(shape: tuple[int, ...], size: int) -> int:
    """The whole factor that brings the longer side of ``shape`` to ``size`` or less.

    Examples
    --------
    >>> shrink_factor((256, 216), 160), shrink_factor((64, 64), 160)
    (2, 1)
    """
    return max(1, -(-max(shape) // size))


def _blocks_of(plane: np.ndarray, factor: int, fill) -> np.ndarray:
    """``plane`` padded to a multiple of ``factor``, as ``(rows, factor, columns, factor)``."""
    rows, columns = -(-plane.shape[0] // factor), -(-plane.shape[1] // factor)
    pad = ((0, rows * factor - plane.shape[0]), (0, columns * factor - plane.shape[1]))
    padded = np.pad(plane, pad, mode="edge") if fill is None else np.pad(plane, pad)
    return padded.reshape(rows, factor, columns, factor)


def thumbnail(
    image: np.ndarray, masks: dict[str, np.ndarray | None], *, size: int = 160
) -> np.ndarray:
    """A small :func:`overlay` of one record: the image shrunk, each kind's outline on it.

    The image is shrunk by a whole factor (:func:`shrink_factor`) to at most
    ``size`` pixels on its longer side: each block of ``factor x factor`` pixels
    becomes their mean (the last blocks padded with the edge's values), and a
    mask's block is inside when any of its pixels is, so that a thin structure
    stays visible. The outlines are drawn on the shrunk masks, one pixel wide.

    Parameters
    ----------
    image : numpy.ndarray
        One 2D image.
    masks : dict of str to numpy.ndarray or None
        Each kind's mask (None: none), in the layout's order, as :func:`overlay`.
    size : int
        The longest side of the thumbnail, in pixels.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.

    Raises
    ------
    ValueError
        If ``image`` is not 2D.

    Examples
    --------
    >>> mask = np.zeros((8, 8), bool); mask[2:6, 2:6] = True
    >>> rgb = thumbnail(np.zeros((8, 8)), {"lv": mask}, size=4)
    >>> rgb.shape, rgb[1, 1].tolist()
    ((4, 4, 3), [255, 64, 64])
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"thumbnail takes a 2D image, got shape {image.shape}")
    factor = shrink_factor(image.shape, size)
    if factor > 1:
        image = _blocks_of(image, factor, None).mean(axis=(1, 3))
        masks = {
            kind: None if mask is None else _blocks_of(np.asarray(mask, bool), factor, 0)
            for kind, mask in masks.items()
        }
        masks = {kind: None if m is None else m.any(axis=(1, 3)) for kind, m in masks.items()}
    return overlay(image, masks)


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
    from .schema import kinds_of

    kinds = kinds_of(ds)
    sub = ds[["image", *kinds, *(f"has_{kind}" for kind in kinds)]].isel(record=records)
    get = {name: sub[name].values for name in sub.data_vars}
    tiles = [overlay(get["image"][k], *_masks(get, kinds, k)) for k in range(len(records))]
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


def _masks(get: dict, kinds, k: int) -> list[np.ndarray | None]:
    """Record ``k``'s mask of each kind, None where ``has_<kind>`` says it has none."""
    return [
        get[kind][k] if get.get(f"has_{kind}", np.ones(k + 1, bool))[k] else None for kind in kinds
    ]


def show(data, records=None, *, columns: int = 4, size: float = 2.5):
    """Draw records or a batch with their contours, as a matplotlib figure.

    Overlays for a notebook: the image and the outline of each contour kind,
    in the colours of :func:`overlay` (the first kind red, the second green, ...).

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
    except ImportError as exc:  # chained: matplotlib may be there but broken
        from .errors import MissingExtraError

        raise MissingExtraError("matplotlib", "plot", "daskmri.plot.show") from exc
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
        from .schema import kinds_of

        kinds = kinds_of(data)
        names = ["image", *kinds, *(f"has_{kind}" for kind in kinds), "patient_id", "instance"]
        sub = data[names].isel(record=records).compute()
        get = {name: sub[name].values for name in sub.variables}
        rows_of = range(len(records))
    else:
        kinds = [k for k, v in get.items() if k != "image" and v.dtype == bool and v.ndim == 3]
        rows_of = records
    columns = max(1, min(columns, len(records)))
    nrows = -(-len(records) // columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(size * columns, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, rows_of, strict=False):
        ax.imshow(overlay(get["image"][k], *_masks(get, kinds, k)))
        ax.set_title(f"{get['patient_id'][k]} / {get['instance'][k]}", fontsize=8)
    fig.tight_layout()
    return fig
