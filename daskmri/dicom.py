"""Read one DICOM slice into float32 pixels after the modality rescale.

Native (uncompressed) pixel data takes a fast path: only the handful of tags
that describe the pixels are parsed, and the pixels are a ``np.frombuffer`` view
with the right dtype and byte order. Everything else (JPEG, JPEG-LS, JPEG 2000,
RLE, a Modality LUT) goes through pydicom's own decoders. Both paths give exactly
``pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)``.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .errors import DicomError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["read_dicom", "read_dicom_shape"]

logger = logging.getLogger(__name__)

_NATIVE = {
    ImplicitVRLittleEndian: "<",
    ExplicitVRLittleEndian: "<",
    DeflatedExplicitVRLittleEndian: "<",
    ExplicitVRBigEndian: ">",
}

# Parsing only these tags (pydicom skips the values of all others) is what makes
# the fast path fast, and it also means the UIDs that real files get wrong are
# never validated, so pydicom never warns about them.
_PIXEL_TAGS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
]

_CODECS_HINT = "install a decoder with: pip install 'daskmri[codecs]'"


def _read_bytes(path: str, limits: Limits) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > limits.max_file_bytes:
            raise DicomError(
                path, f"file is {size} bytes, over Limits.max_file_bytes={limits.max_file_bytes}"
            )
        with open(path, "rb") as fh:
            # Sized by the stat above: read(n) would allocate n bytes up front.
            raw = fh.read(size + 1)
    except IsADirectoryError:
        raise DicomError(path, "is a directory, expected a DICOM file") from None
    except FileNotFoundError:
        raise DicomError(path, "DICOM file does not exist") from None
    except OSError as exc:
        raise DicomError(path, f"cannot read file: {exc.strerror or exc}") from None
    if not raw:
        raise DicomError(path, "empty file (0 bytes), expected a DICOM file")
    return raw


def _parse(path: str, raw: bytes, specific_tags: list[str] | None) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(raw), specific_tags=specific_tags)
    except InvalidDicomError:
        raise DicomError(
            path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
        ) from None
    except Exception as exc:  # pydicom raises many types on a damaged file
        raise DicomError(
            path, f"damaged or truncated DICOM ({type(exc).__name__}: {exc})"
        ) from None


def _geometry(path: str, ds: pydicom.Dataset, limits: Limits) -> tuple[int, int, int]:
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) is None]
    if missing:
        raise DicomError(path, f"no pixel description: missing {', '.join(missing)}")
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if rows <= 0 or cols <= 0:
        raise DicomError(path, f"declared size {rows}x{cols} is empty")
    if rows * cols > limits.max_pixels:
        raise DicomError(
            path,
            f"declared size {rows}x{cols} = {rows * cols} pixels is over "
            f"Limits.max_pixels={limits.max_pixels}; raise the limit if the file is genuine",
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(path, "colour image (SamplesPerPixel != 1); only grey-level MR is read")
    frames = ds.get("NumberOfFrames", 1)
    if int(frames or 1) != 1:
        raise DicomError(path, f"multi-frame image ({frames} frames); one slice per file expected")
    return rows, cols, bits


def read_dicom_shape(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, int]:
    """Return ``(Rows, Columns)`` of a DICOM file without decoding its pixels.

    Raises
    ------
    DicomError
        As :func:`read_dicom`, for a file that cannot describe its pixels.

    Examples
    --------
    >>> from daskmri import synth
    >>> import tempfile
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=2, shape=(32, 48))
    >>> read_dicom_shape(root / "dicoms" / "SYN0001" / "1.dcm")
    (32, 48)
    """
    path = os.fspath(path)
    ds = _parse(path, _read_bytes(path, limits), _PIXEL_TAGS)
    rows, cols, _ = _geometry(path, ds, limits)
    return rows, cols


def read_dicom(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Read one DICOM slice as float32 pixels after the modality rescale.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM Part 10 file holding one grey-level frame.
    limits : Limits
        ``max_file_bytes`` bounds the read and ``max_pixels`` the declared
        ``Rows * Columns``, both checked before any pixel buffer is allocated.

    Returns
    -------
    numpy.ndarray
        ``(Rows, Columns)`` float32, equal to
        ``pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)``.

    Raises
    ------
    DicomError
        If the file is missing, a directory, empty, not DICOM, truncated, has no
        pixel data, declares a size its pixel bytes disagree with or one over the
        limit, is colour or multi-frame, or is compressed with no decoder installed
        (the message names the ``codecs`` extra).

    Examples
    --------
    >>> from daskmri import synth
    >>> import tempfile
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=2, shape=(32, 48))
    >>> image = read_dicom(root / "dicoms" / "SYN0001" / "1.dcm")
    >>> image.shape, image.dtype
    ((32, 48), dtype('float32'))
    """
    path = os.fspath(path)
    raw = _read_bytes(path, limits)
    ds = _parse(path, raw, _PIXEL_TAGS)
    rows, cols, bits = _geometry(path, ds, limits)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(path, "float pixel data is not supported, only integer PixelData")
        raise DicomError(path, "no PixelData element: the file holds no image")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    order = _NATIVE.get(syntax)
    if "ModalityLUTSequence" in ds:
        full = _parse(path, raw, None)
        lut = pydicom.pixels.apply_modality_lut(_decoded_pixels(path, full, syntax), full)
        return lut.astype(np.float32)
    if order is not None and bits in (8, 16, 32):
        pixels = _native_pixels(path, ds, rows, cols, bits, order)
    else:
        pixels = _decoded_pixels(path, _parse(path, raw, None), syntax)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        # float64 first, as pydicom's apply_modality_lut does, so the float32 result
        # is bit-identical to it even where float32 arithmetic would round differently.
        scaled = pixels.astype(np.float64) * float(slope)
        scaled += float(intercept)
        return scaled.astype(np.float32)
    return pixels.astype(np.float32)


def _native_pixels(
    path: str, ds: pydicom.Dataset, rows: int, cols: int, bits: int, order: str
) -> np.ndarray:
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")
    data = ds.PixelData
    expected = rows * cols * dtype.itemsize
    if len(data) < expected:
        raise DicomError(
            path,
            f"truncated or mis-sized: PixelData holds {len(data)} bytes but "
            f"{rows}x{cols}x{bits}-bit needs {expected}",
        )
    # Trailing padding shorter than a frame is ignored, as pydicom does; room for a
    # whole second frame means the declared size is wrong for this single slice.
    if len(data) >= 2 * expected:
        raise DicomError(
            path,
            f"Rows/Columns disagree with the pixel bytes: PixelData holds {len(data)} bytes, "
            f"at least two {rows}x{cols}x{bits}-bit images",
        )
    pixels = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    stored = int(ds.get("BitsStored", bits) or bits)
    if 0 < stored < bits:
        # As pydicom does: drop the unused high bits (sign-extending signed data).
        shift = bits - stored
        pixels = (pixels << shift) >> shift
    return pixels


def _decoded_pixels(path: str, ds: pydicom.Dataset, syntax: object) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        text = str(exc)
        if "plugin" in text or "decod" in text or "missing" in text:
            name = getattr(syntax, "name", str(syntax))
            raise DicomError(
                path,
                f"pixel data is compressed ({name}) and no decoder is available; {_CODECS_HINT}",
            ) from None
        raise DicomError(path, f"cannot decode pixel data: {text}") from None
    except Exception as exc:
        raise DicomError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    if pixels.ndim != 2:
        raise DicomError(path, f"decoded pixels have shape {pixels.shape}, expected one 2-D slice")
    return pixels
