"""Stage 1, scan: the records of a dataset, listed by its layout's source (no pixel
data is read here), as :func:`scan`'s table beside its problems.

Each source format is one module of :mod:`daskmri.sources`: per-slice DICOM with
contour files (:class:`~daskmri.Layout`, :mod:`~daskmri.sources.dicom_contours`), with
RTSTRUCT contours (:class:`~daskmri.RTStruct`, :mod:`~daskmri.sources.dicom_rtstruct`),
and NIfTI volumes (:class:`~daskmri.VolumeLayout`, :mod:`~daskmri.sources.volumes`).
This module picks the source from the layout's type.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from .errors import LayoutError, redact
from .filesystem import LOCAL, FileSystem, split_root
from .record import Problem, Scan
from .sources import dicom_contours, volumes
from .sources.dicom_contours import SUNNYBROOK, Layout
from .sources.volumes import VolumeLayout

__all__ = ["iter_records", "layout_from_dict", "scan"]

logger = logging.getLogger(__name__)


def iter_records(
    root: str | os.PathLike[str],
    *,
    layout: Layout | VolumeLayout | None = None,
    labels: str = "any",
    problems: list[Problem],
    fs: FileSystem = LOCAL,
) -> Iterator[dict]:
    """The rows of :func:`scan` (of the folder ``root`` on ``fs``), one dict at a
    time, in the same order, holding only one patient's file listing at a time;
    what is wrong outside any record is appended to ``problems`` as it is found.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=3, shape=(32, 32))
    >>> [row["instance"] for row in iter_records(root, problems=[])]
    [2, 3]
    """
    layout = SUNNYBROOK if layout is None else layout
    wanted = layout.label_kind(labels)
    root = fs.absolute(root)
    fs.forget_listings(root)  # a store: list what is there now, not what was cached
    if not _is_folder(fs, root):
        hint = "" if fs.local else " (nothing is stored under this prefix); check the URL"
        raise LayoutError(f"dataset root {root!r} is not a folder{hint}")
    if isinstance(layout, VolumeLayout):
        yield from volumes.iter_records(
            root, layout=layout, labels=labels, problems=problems, fs=fs
        )
        return
    yield from dicom_contours.iter_records(
        root, layout=layout, wanted=wanted, problems=problems, fs=fs
    )


def layout_from_dict(values: dict) -> Layout | VolumeLayout:
    """The layout that ``to_dict()`` gave ``values``: a :class:`Layout` or a
    :class:`~daskmri.VolumeLayout`.

    Examples
    --------
    >>> layout_from_dict(volumes.ACDC.to_dict()) == volumes.ACDC
    True
    """
    if values.get("source") == "volumes":
        return VolumeLayout.from_dict(values)
    return Layout.from_dict(values)


def _is_folder(fs: FileSystem, root: str) -> bool:
    try:
        return fs.is_folder(root)
    except Exception as exc:  # a store that refuses: credentials, endpoint, bucket
        reason = redact(" ".join(str(exc).split()) or type(exc).__name__, dict(fs.options))
        raise LayoutError(
            f"cannot list the dataset root {root!r}: {reason}; check the credentials "
            "(source_options=, or the environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) "
            "and that the bucket exists"
        ) from None  # the backend's exception may hold a credential; the reason is redacted


def scan(
    root: str | os.PathLike[str],
    layout: Layout | VolumeLayout | None = None,
    labels: str = "any",
    *,
    source_options: dict | None = None,
) -> Scan:
    """List every record (one image slice with its contours) under ``root``.

    Reads the link file and directory listings only, never pixel data, and never
    anything outside ``root``: link-file ids that would leave it and symlinks that
    point out of it are reported, not followed.

    Parameters
    ----------
    root : str or os.PathLike
        The dataset folder: a local path, or an fsspec URL (``s3://bucket/data``;
        the protocol's backend installed, e.g. ``pip install 'daskmri[s3]'``).
    layout : Layout, optional
        File names and patterns; default :data:`SUNNYBROOK`.
    labels : str
        ``"any"`` keeps slices with at least one contour, a kind's name (or alias:
        ``"i"``, ``"o"`` in the Sunnybrook layout) slices with that contour,
        ``"all"`` every slice.
    source_options : dict, optional
        For a URL: its fsspec filesystem's options (credentials, ``endpoint_url``,
        ...). Without them the backend reads its usual environment variables.

    Returns
    -------
    Scan
        ``(table, problems)``. ``table``, a pandas.DataFrame: one row per record
        sorted by ``(patient_id, instance)``, with columns
        ``patient_id``, ``original_id``, ``instance``, ``image_path``, a
        ``<kind>_path`` per contour kind (``icontour_path``, ``ocontour_path``; the
        contour file, or the RTSTRUCT file that holds the slice's contours of that
        kind; None when absent) and ``problem`` (None, or why the record cannot be
        built, e.g. a contour without its DICOM); with an RTSTRUCT layout also
        ``rtstruct``, the slice's plane and contours; ``attrs`` holds the ``root``,
        ``layout`` and ``labels``. ``problems``, a tuple of :class:`~daskmri.Problem`:
        what was found wrong outside any record (bad link rows, links leaving the
        root, unmatched file names, RTSTRUCT files and contours left out).

    With an RTSTRUCT layout the scan also reads each patient's RTSTRUCT files and
    the header (no pixels) of each of its slices, to give every contour its slice.

    Raises
    ------
    LayoutError
        If there is no link file or it lacks the layout's columns; if the root is
        not a folder, or a store refuses to list it (the message names the fix).
    ValueError
        If ``labels`` is not one of the choices.

    Examples
    --------
    >>> import tempfile
    >>> from daskmri import synth
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=6, shape=(32, 32))
    >>> table, problems = scan(root)
    >>> table[["patient_id", "instance"]].values.tolist(), problems
    ([['SYN0001', 2], ['SYN0001', 3], ['SYN0001', 4], ['SYN0001', 6]], ())
    """
    import pandas as pd  # here, not at the top: worker processes import this module

    fs, root = split_root(root, source_options)
    layout = SUNNYBROOK if layout is None else layout
    problems: list[Problem] = []
    records = list(iter_records(root, layout=layout, labels=labels, problems=problems, fs=fs))
    paths = [f"{kind}_path" for kind in layout.kinds]
    if isinstance(layout, VolumeLayout):
        ids, rt = ["patient_id", "original_id", "instance", "frame", "slice", "phase"], ["volume"]
    else:
        ids = ["patient_id", "original_id", "instance"]
        rt = [] if layout.rtstruct is None else ["rtstruct"]
    columns = [*ids, "image_path", *paths, "problem", *rt]
    table = pd.DataFrame.from_records(records, columns=columns)
    for column in ("instance", "frame", "slice"):
        if column in table:
            table[column] = table[column].astype("int64")
    for column in ("image_path", *paths, "problem", *rt):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    table.attrs = {"root": root, "layout": layout.to_dict(), "labels": labels}
    logger.info("scanned %s: %d records, %d problems", root, len(table), len(problems))
    return Scan(table, tuple(problems))
