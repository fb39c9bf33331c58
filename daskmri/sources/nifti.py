"""NIfTI volumes and label maps as the 2D planes the scanner acquired (issue 25, Part 2).

Pure functions, numpy and nibabel only: the orientation of the planes from the affine
(:func:`plane_orientation`), the reordering itself (:func:`to_planes`), the grid check
of a label map against its image (:func:`same_grid`) and the bounded read of one volume
(:func:`read_volume`). Nothing here lists files or builds records: the source interface
of issue 25, Part 1, will call these.

The convention
--------------
The acquired slice axis stays the slice axis: planes are never cut across. Within a
plane, rows and columns are chosen and flipped from the affine (nibabel's RAS+ world,
through :func:`nibabel.orientations.io_orientation`, which names each voxel axis's
closest world axis) so that every index runs toward patient Left, Posterior or
Inferior (L, P, I), and the columns take the in-plane world axis that comes first in
L-R, A-P, S-I order. That is how a radiologist looks at a DICOM image (patient's right
on the screen's left, anterior or head at the top)::

                 column index ->  toward patient Left (axial, coronal)
                                  or Posterior (sagittal)
          +---------------------------+
      row | R (A)               L (P) |    axial:    rows toward P, slices toward I
    index |       plane [s, r, c]     |    coronal:  rows toward I, slices toward P
        | |                           |    sagittal: rows toward I, slices toward L
        v +---------------------------+    (columns toward P on a sagittal plane)
     toward patient Posterior (axial) or Inferior (coronal, sagittal)

An oblique plane, such as a cardiac short axis, follows the plane it is closest to.
Slices are numbered the same way: slice 0 is the one farthest toward patient Right,
Anterior or Superior along the slice axis's closest world axis. So the same physical
volume stored in another voxel order (any axis flipped, the in-plane axes swapped, each
with the affine to match) gives identical planes, spacing and slice numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import VolumeError, one_line
from ..filesystem import LOCAL, FileSystem
from ..limits import DEFAULT_LIMITS, Limits, read_bounded

__all__ = [
    "DIRECTION_TOLERANCE",
    "MAX_HEADER_BYTES",
    "MM_TOLERANCE",
    "PlaneOrientation",
    "Volume",
    "gunzip",
    "header_of",
    "integer_labels",
    "open_image",
    "plane_affine",
    "plane_orientation",
    "read_frames",
    "read_raw_frames",
    "read_volume",
    "same_grid",
    "scaled",
    "to_planes",
]

#: The most bytes before the voxels (the header and its extensions) a file may declare.
MAX_HEADER_BYTES = 16 * 2**20

#: Largest difference in voxel size or origin (mm) for two grids to be the same.
MM_TOLERANCE = 1e-3
#: Largest difference in a direction cosine (unitless) for two grids to be the same.
DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PlaneOrientation:
    """How a volume's voxel axes become ``(slices, rows, columns)``, and their spacing.

    Parameters
    ----------
    slice_axis : int
        The voxel axis (0, 1 or 2) that is kept as the slice axis.
    transpose : bool
        False: rows are the lower-numbered of the two in-plane voxel axes and columns
        the higher; True: the other way round.
    flip_slices, flip_rows, flip_columns : bool
        Whether that output axis is reversed (after the axes are chosen).
    slice_mm, row_mm, column_mm : float
        The spacing along each output axis, from the affine's column norms, permuted
        along with the axes: ``row_mm`` is the distance between two rows.

    Examples
    --------
    >>> orientation = PlaneOrientation(2, True, False, False, False, 5.0, 3.0, 2.0)
    >>> orientation.row_axis, orientation.column_axis
    (1, 0)
    """

    slice_axis: int
    transpose: bool
    flip_slices: bool
    flip_rows: bool
    flip_columns: bool
    slice_mm: float
    row_mm: float
    column_mm: float

    @property
    def row_axis(self) -> int:
        """The voxel axis that becomes the rows."""
        low, high = (axis for axis in range(3) if axis != self.slice_axis)
        return high if self.transpose else low

    @property
    def column_axis(self) -> int:
        """The voxel axis that becomes the columns."""
        low, high = (axis for axis in range(3) if axis != self.slice_axis)
        return low if self.transpose else high

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """``(row_mm, column_mm)``, in the order of DICOM's PixelSpacing."""
        return (self.row_mm, self.column_mm)


def _checked_affine(affine: Any) -> np.ndarray:
    """``affine`` as a float 4x4 array; ValueError unless finite with a full-rank 3x3."""
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"an affine must be 4x4, not {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the affine holds NaN or inf")
    # A rank-deficient affine gives a voxel axis no direction: no orientation to follow.
    if np.linalg.matrix_rank(matrix[:3, :3]) < 3:
        raise ValueError("the affine is singular (a voxel axis without direction)")
    return matrix


def plane_orientation(affine: Any, *, slice_axis: int = 2) -> PlaneOrientation:
    """The flips and transpose that bring each acquired plane to the module's convention.

    Rows, columns and slices each run toward patient Left, Posterior or Inferior; the
    columns take the in-plane world axis that comes first in L-R, A-P, S-I order (see
    the module docstring for the picture). ``slice_axis`` stays the slice axis.

    Parameters
    ----------
    affine : array_like
        The 4x4 voxel-to-world (RAS+, mm) affine, as nibabel gives it.
    slice_axis : int
        The acquired slice axis among the voxel axes 0, 1, 2 (NIfTI's ``z`` by default).

    Returns
    -------
    PlaneOrientation
        The transform, and the spacing of the reordered axes.

    Raises
    ------
    ValueError
        If the affine is not 4x4, holds NaN or inf, or is singular, or ``slice_axis``
        is not 0, 1 or 2.

    Examples
    --------
    A RAS+ volume with 2 x 3 x 5 mm voxels: every axis is flipped, and the in-plane axes
    are swapped (x runs toward Right, so it becomes the columns), spacing included.

    >>> import numpy as np
    >>> o = plane_orientation(np.diag([2.0, 3.0, 5.0, 1.0]))
    >>> o.transpose, o.flip_slices, o.flip_rows, o.flip_columns
    (True, True, True, True)
    >>> o.pixel_spacing, o.slice_mm
    ((3.0, 2.0), 5.0)
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, not {slice_axis!r}")
    from nibabel.orientations import io_orientation

    matrix = _checked_affine(affine)
    ornt = io_orientation(matrix)  # per voxel axis: closest world axis, and +1 toward R/A/S
    world = ornt[:, 0].astype(int)
    toward_ras = ornt[:, 1] > 0
    low, high = (axis for axis in range(3) if axis != slice_axis)
    # Columns take the world axis that comes first in R-L, A-P, S-I order.
    row, column = (low, high) if world[low] > world[high] else (high, low)
    zooms = np.sqrt(np.sum(matrix[:3, :3] ** 2, axis=0))
    return PlaneOrientation(
        slice_axis=slice_axis,
        transpose=row != low,
        # Every index runs toward L, P or I: flip the axes that run toward R, A or S.
        flip_slices=bool(toward_ras[slice_axis]),
        flip_rows=bool(toward_ras[row]),
        flip_columns=bool(toward_ras[column]),
        slice_mm=float(zooms[slice_axis]),
        row_mm=float(zooms[row]),
        column_mm=float(zooms[column]),
    )


def to_planes(array: Any, orientation: PlaneOrientation) -> np.ndarray:
    """A volume's voxels as ``(frames, slices, rows, columns)`` in the convention.

    Parameters
    ----------
    array : array_like
        A 3D ``(x, y, z)`` or 4D ``(x, y, z, t)`` array, in the file's voxel order.
    orientation : PlaneOrientation
        From :func:`plane_orientation` on the same file's affine.

    Returns
    -------
    numpy.ndarray
        A view of ``array`` where it is a numpy array (same dtype); a 3D volume has one
        frame.

    Raises
    ------
    ValueError
        If ``array`` is not 3D or 4D.

    Examples
    --------
    >>> import numpy as np
    >>> volume = np.arange(24).reshape(2, 3, 4)  # x, y, z
    >>> planes = to_planes(volume, plane_orientation(np.eye(4)))
    >>> planes.shape  # frames, slices (z), rows (y), columns (x)
    (1, 4, 3, 2)
    >>> int(planes[0, 0, 0, 0]) == int(volume[1, 2, 3])  # every axis runs toward L, P, I
    True
    """
    volume = np.asanyarray(array)
    if volume.ndim not in (3, 4):
        raise ValueError(f"a volume must be 3D or 4D, not {volume.ndim}D {volume.shape}")
    if volume.ndim == 3:
        volume = volume[..., np.newaxis]
    o = orientation
    planes = volume.transpose(3, o.slice_axis, o.row_axis, o.column_axis)
    flips = (o.flip_slices, o.flip_rows, o.flip_columns)
    return planes[(slice(None), *(slice(None, None, -1 if f else 1) for f in flips))]


def plane_affine(affine: Any, shape: Sequence[int], orientation: PlaneOrientation) -> np.ndarray:
    """The affine of the planes: ``(slice, row, column, 1)`` indices to world (RAS+, mm).

    Parameters
    ----------
    affine : array_like
        The file's 4x4 affine.
    shape : sequence of int
        The file's shape (at least its three spatial axes).
    orientation : PlaneOrientation
        From :func:`plane_orientation` on ``affine``.

    Returns
    -------
    numpy.ndarray
        4x4; the same for every voxel order of one physical volume.

    Raises
    ------
    ValueError
        If the affine is not a finite, non-singular 4x4.

    Examples
    --------
    >>> import numpy as np
    >>> eye = np.eye(4)
    >>> plane_affine(eye, (2, 3, 4), plane_orientation(eye))[:3, 3].tolist()  # planes[0, 0, 0]
    [1.0, 2.0, 3.0]
    """
    matrix = _checked_affine(affine)
    o = orientation
    to_voxels = np.zeros((4, 4))  # (slice, row, column, 1) -> (x, y, z, 1)
    to_voxels[3, 3] = 1.0
    axes = (o.slice_axis, o.row_axis, o.column_axis)
    flips = (o.flip_slices, o.flip_rows, o.flip_columns)
    for out, (axis, flip) in enumerate(zip(axes, flips, strict=True)):
        to_voxels[axis, out] = -1.0 if flip else 1.0
        to_voxels[axis, 3] = shape[axis] - 1 if flip else 0.0
    return matrix @ to_voxels


def _grid(grid: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(affine, shape)`` of an ``(affine, shape)`` pair, a nibabel image or header."""
    if isinstance(grid, tuple) and len(grid) == 2:
        affine, shape = grid
    elif hasattr(grid, "get_best_affine"):  # a nibabel header
        affine, shape = grid.get_best_affine(), grid.get_data_shape()
    else:
        affine, shape = grid.affine, grid.shape
    return np.asarray(affine, dtype=np.float64), tuple(int(n) for n in shape)


def _decompose(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel sizes (mm), direction cosines (unit columns) and origin (mm) of an affine."""
    zooms = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    return zooms, affine[:3, :3] / np.where(zooms == 0, 1.0, zooms), affine[:3, 3]


def same_grid(image: Any, label: Any) -> str | None:
    """None when ``label`` lies on the grid of ``image``, else a one-line reason.

    The same grid means the same shape (frames included) and affines equal within
    :data:`MM_TOLERANCE` (1e-3 mm) in voxel size and origin and
    :data:`DIRECTION_TOLERANCE` (1e-4) in each direction cosine: rounding in a
    converter is accepted, a flip or a shift of a voxel is not.

    Parameters
    ----------
    image, label : nibabel image, nibabel header, or ``(affine, shape)`` pair
        The two grids.

    Returns
    -------
    str or None
        The first difference found, in words, or None.

    Raises
    ------
    ValueError
        If an affine is not 4x4.

    Examples
    --------
    >>> import numpy as np
    >>> same_grid((np.eye(4), (4, 4, 2)), (np.eye(4) + 1e-6, (4, 4, 2))) is None
    True
    >>> same_grid((np.eye(4), (4, 4, 2)), (np.diag([-1.0, 1, 1, 1]), (4, 4, 2)))
    'the direction of voxel axis 0 differs by 2 (tolerance 0.0001)'
    """
    (affine, shape), (other, other_shape) = _grid(image), _grid(label)
    if affine.shape != (4, 4) or other.shape != (4, 4):
        raise ValueError(f"affines must be 4x4, not {affine.shape} and {other.shape}")
    if shape[:3] != other_shape[:3]:
        return f"the shape {other_shape} differs from the image's {shape}"
    frames, other_frames = (s[3] if len(s) > 3 else 1 for s in (shape, other_shape))
    if frames != other_frames or len(shape) > 4 or len(other_shape) > 4:
        return f"{other_frames} frame(s) {other_shape}, the image {frames} {shape}"
    if not (np.all(np.isfinite(affine)) and np.all(np.isfinite(other))):
        return "an affine holds NaN or inf"
    checks = zip(
        ("voxel size", "direction", "origin"),
        _decompose(affine),
        _decompose(other),
        (MM_TOLERANCE, DIRECTION_TOLERANCE, MM_TOLERANCE),
        strict=True,
    )
    for name, mine, theirs, tolerance in checks:
        difference = np.abs(np.asarray(mine) - np.asarray(theirs))
        if name == "direction" and np.any(difference > tolerance):
            axis = int(np.argmax(difference.max(axis=0)))
            worst = float(difference[:, axis].max())
            return (
                f"the direction of voxel axis {axis} differs by {worst:.3g} "
                f"(tolerance {tolerance:g})"
            )
        if np.any(difference > tolerance):
            return (
                f"the {name} {np.round(theirs, 4).tolist()} mm differs from the image's "
                f"{np.round(mine, 4).tolist()} mm (tolerance {tolerance:g} mm)"
            )
    return None


@dataclass(frozen=True, eq=False)
class Volume:
    """One NIfTI volume read as planes, with its label map.

    Parameters
    ----------
    images : numpy.ndarray
        float32 ``(frames, slices, rows, columns)``: nibabel's scaled values.
    labels : numpy.ndarray or None
        int32, the same shape, or None without a label map.
    orientation : PlaneOrientation
        How the file's voxel axes became the planes, and their spacing.
    affine : numpy.ndarray
        The planes' 4x4 affine, ``(slice, row, column)`` to world (:func:`plane_affine`).
    """

    images: np.ndarray
    labels: np.ndarray | None
    orientation: PlaneOrientation
    affine: np.ndarray


def _data_errors() -> tuple[type[BaseException], ...]:
    """What nibabel, gzip and zlib raise on a damaged or unreadable file."""
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    return (ImageFileError, HeaderDataError, EOFError, zlib.error, ValueError, OSError)


def _raise_unless_data(exc: BaseException) -> None:
    """Re-raise what is the infrastructure's fault, not the file's (errors.py's policy)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        raise exc


def gunzip(raw: bytes, path: str, at_most: int) -> bytes:
    """The first ``at_most`` bytes of the gzip stream ``raw``: never more, whatever the
    stream would expand to, so that memory follows a size that was checked first.

    Raises
    ------
    daskmri.errors.VolumeError
        If the stream is damaged before that point.
    """
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return inflate.decompress(raw, at_most)
    except zlib.error as exc:
        raise VolumeError(path, f"damaged gzip stream: {one_line(exc)}") from exc


def header_of(head: bytes, path: str) -> Any:
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (a file's first bytes).

    Raises
    ------
    daskmri.errors.VolumeError
        If ``head`` is shorter than a header or holds no NIfTI magic.
    """
    import nibabel

    if len(head) < nibabel.Nifti1Header.template_dtype.itemsize:
        raise VolumeError(path, f"truncated: {len(head)} bytes, shorter than a NIfTI header")
    for kind in (nibabel.Nifti1Header, nibabel.Nifti2Header):
        size = kind.template_dtype.itemsize
        if len(head) < size:
            continue
        try:
            header = kind(head[:size], check=False)
            magic = bytes(header["magic"].item())
        except _data_errors() as exc:
            _raise_unless_data(exc)
            continue
        if header.sizeof_hdr in (348, 540) and magic in (b"n+1", b"n+2", b"ni1", b"ni2"):
            if magic in (b"ni1", b"ni2"):
                raise VolumeError(path, "a NIfTI pair (.hdr/.img): only single .nii files are read")
            return header
    raise VolumeError(path, f"not a NIfTI file (no NIfTI magic in its first {len(head)} bytes)")


def open_image(path: str, *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL) -> Any:
    """The nibabel image at ``path`` on ``fs``, its header checked before the voxels
    are unpacked: the file's size and the declared voxels against ``limits``, 3D or 4D,
    a finite affine. The file is read whole (it is one unit of work); its voxels stay
    packed until :func:`read_frames`.

    Raises
    ------
    daskmri.errors.VolumeError
        For a missing, damaged, truncated or oversized file, in one line.

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel
    >>> path = os.path.join(tempfile.mkdtemp(), "v.nii.gz")
    >>> nibabel.save(nibabel.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.eye(4)), path)
    >>> open_image(path).shape
    (4, 3, 2)
    >>> open_image(path, limits=Limits(max_voxels=10))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.VolumeError: ...: the header declares 24 voxels (4, 3, 2), over ...=10
    """
    import nibabel

    raw = read_bounded(
        path, limits, error=VolumeError, name="NIfTI file", expected="a NIfTI file", fs=fs
    )
    max_voxels = limits.max_voxels
    gzipped = raw[:2] == b"\x1f\x8b"
    head = gunzip(raw, path, 1024) if gzipped else raw[:1024]
    header = header_of(head, path)
    shape, offset, itemsize = _declared(header, path, max_voxels)
    if offset > MAX_HEADER_BYTES:
        # Unpacked before the voxels: a gzip stream could otherwise make a worker
        # allocate whatever a header claims, whatever Limits say.
        raise VolumeError(
            path, f"the header puts the voxels {offset} bytes in, over {MAX_HEADER_BYTES}"
        )
    need = offset + int(np.prod(shape)) * itemsize
    data = gunzip(raw, path, need) if gzipped else raw
    if len(data) < need:
        raise VolumeError(path, f"truncated: {len(data)} of the {need} bytes its header declares")
    kind = nibabel.Nifti1Image if header.sizeof_hdr == 348 else nibabel.Nifti2Image
    try:
        image = kind.from_bytes(data[:need])
        affine = np.asarray(image.affine, dtype=np.float64)
    except _data_errors() as exc:
        _raise_unless_data(exc)
        raise VolumeError(path, f"cannot read the NIfTI header: {one_line(exc)}") from exc
    if not np.all(np.isfinite(affine)):
        raise VolumeError(path, "the affine holds NaN or inf")
    return image


def _declared(header: Any, path: str, max_voxels: int) -> tuple[tuple[int, ...], int, int]:
    """The shape, voxel offset and bytes a voxel that ``header`` declares, checked."""
    try:
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = np.dtype(header.get_data_dtype()).itemsize
        offset = int(header.get_data_offset())
    except _data_errors() as exc:
        _raise_unless_data(exc)
        raise VolumeError(path, f"cannot read the NIfTI header: {one_line(exc)}") from exc
    if len(shape) not in (3, 4):
        raise VolumeError(path, f"a {len(shape)}D image {shape}: only 3D and 4D volumes are read")
    voxels = int(np.prod(shape, dtype=object))  # exact: a header may declare 2**15 ** 4
    if voxels == 0:
        raise VolumeError(path, f"the header declares no voxels {shape}")
    if voxels > max_voxels:
        raise VolumeError(
            path,
            f"the header declares {voxels} voxels {shape}, over Limits.max_voxels={max_voxels}",
        )
    return shape, offset, itemsize


def read_frames(image: Any, path: str, frames: Sequence[int] | None = None) -> np.ndarray:
    """The voxels of ``image``, ``(x, y, z, frames)``, of the given ``frames`` of a 4D
    image (all of them for None, or for a 3D image, which is one frame).

    The values are nibabel's scaled ones (``scl_slope``, ``scl_inter``) computed in
    float64, as ``get_fdata()`` computes them, for an image whose data type is a float
    or carries a scaling; otherwise the stored integers, unscaled and exact.

    Raises
    ------
    daskmri.errors.VolumeError
        When the voxels cannot be read.
    """
    raw, slope, inter = read_raw_frames(image, path, frames)
    return scaled(raw, slope, inter)


def scaled(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """nibabel's values of stored voxels ``raw`` with the scaling ``slope`` and
    ``inter`` (:func:`read_raw_frames`): float64 for a float type or a scaling, else
    the integers as they are."""
    from nibabel.volumeutils import apply_read_scaling

    if raw.dtype.kind == "f" or slope != 1 or inter != 0:
        return apply_read_scaling(raw, np.float64(slope), np.float64(inter))
    return np.array(raw)


def read_raw_frames(
    image: Any, path: str, frames: Sequence[int] | None = None
) -> tuple[np.ndarray, float, float]:
    """The stored voxels of ``image`` (as :func:`read_frames`, unscaled) and the
    scaling nibabel applies to them: ``(raw, scl_slope, scl_inter)``, 1 and 0 where
    the header has none.

    Raises
    ------
    daskmri.errors.VolumeError
        When the voxels cannot be read.
    """
    proxy = image.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled())
        raw = raw[..., None] if raw.ndim == 3 else raw
        raw = raw if frames is None else raw[..., list(frames)]
        return raw, float(proxy.slope), float(proxy.inter)
    except _data_errors() as exc:
        _raise_unless_data(exc)
        raise VolumeError(path, f"cannot read the voxels: {one_line(exc)}") from exc


def _voxels(image: Any, path: str, dtype: Any = None) -> np.ndarray:
    """All voxels of ``image`` as ``(x, y, z[, t])`` in ``dtype``."""
    values = read_frames(image, path)
    values = values[..., 0] if len(image.shape) == 3 else values
    return values if dtype is None else values.astype(dtype)


def integer_labels(values: np.ndarray, path: str) -> np.ndarray:
    """Label values as integers: stored integers as they are, float ones checked whole
    and given as int64.

    Raises
    ------
    daskmri.errors.VolumeError
        If a value is not a finite whole number, or lies beyond 2**62.
    """
    if values.dtype.kind in "iub":
        return values
    bad = ~np.isfinite(values) | (values != np.round(values))
    if np.any(bad):
        example = values[bad].flat[0]
        raise VolumeError(path, f"a label map holds non-integer values (e.g. {example})")
    if values.size and (values.min() < -(2**62) or values.max() > 2**62):
        raise VolumeError(path, f"label values out of range ({values.min()}..{values.max()})")
    return values.astype(np.int64)


def _int32_labels(values: np.ndarray, path: str) -> np.ndarray:
    """``values`` as int32; VolumeError unless every value is a finite int32 integer."""
    values = integer_labels(values, path)
    info = np.iinfo(np.int32)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise VolumeError(path, f"label values outside int32 ({values.min()}..{values.max()})")
    return values.astype(np.int32, copy=False)


def read_volume(image_path: str, label_path: str | None = None, *, max_voxels: int) -> Volume:
    """Read a NIfTI image (and its label map) as planes in the module's convention.

    Each header is checked before any voxel is read: its declared shape against
    ``max_voxels``, 3D or 4D, a finite affine, and the label map on the image's grid.

    Parameters
    ----------
    image_path : str
        A ``.nii`` or ``.nii.gz`` image, 3D or 4D (cine).
    label_path : str, optional
        Its integer label map, on the same grid (:func:`same_grid`).
    max_voxels : int
        The most voxels a header may declare (frames included).

    Returns
    -------
    Volume
        float32 images and int32 labels, ``(frames, slices, rows, columns)``.

    Raises
    ------
    daskmri.errors.VolumeError
        A damaged file (truncated, not NIfTI), too many voxels, not 3D or 4D, NaN or inf
        in an affine, a label map on another grid or with non-integer values: one line,
        naming the file.

    Examples
    --------
    >>> import os, shutil, tempfile
    >>> import nibabel
    >>> import numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "image.nii.gz")
    >>> nibabel.save(nibabel.Nifti1Image(np.ones((4, 3, 2), np.int16), np.eye(4)), path)
    >>> volume = read_volume(path, max_voxels=10**6)
    >>> volume.images.shape, volume.images.dtype.name, volume.labels
    ((1, 2, 3, 4), 'float32', None)
    >>> shutil.rmtree(folder)
    """
    limits = Limits(max_voxels=max_voxels)
    image = open_image(image_path, limits=limits)
    label = None
    if label_path is not None:
        label = open_image(label_path, limits=limits)
        reason = same_grid(image, label)
        if reason is not None:
            raise VolumeError(label_path, f"not on the grid of {image_path}: {reason}")
    try:
        orientation = plane_orientation(image.affine)
    except ValueError as exc:
        raise VolumeError(image_path, str(exc)) from exc
    images = to_planes(_voxels(image, image_path, np.float32), orientation)
    labels = None
    if label is not None:
        # The image's orientation for both: within the tolerance, the label's is the same.
        values = _int32_labels(_voxels(label, label_path), label_path)
        labels = to_planes(values, orientation)
    affine = plane_affine(image.affine, image.shape, orientation)
    return Volume(images, labels, orientation, affine)
