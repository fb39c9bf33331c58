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
import struct
from typing import TYPE_CHECKING

import numpy as np

from .errors import DicomError
from .filesystem import LOCAL, FileSystem
from .limits import DEFAULT_LIMITS, Limits, read_bounded

if TYPE_CHECKING:
    import pydicom

# pydicom is imported only when a file needs it: worker processes that read plain
# uncompressed slices then start without it. Transfer syntax UIDs, as in PS3.5:
ImplicitVRLittleEndian = "1.2.840.10008.1.2"
ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
DeflatedExplicitVRLittleEndian = "1.2.840.10008.1.2.1.99"
ExplicitVRBigEndian = "1.2.840.10008.1.2.2"

__all__ = [
    "PLANE_TAGS",
    "read_dicom",
    "read_dicom_geometry",
    "read_dicom_shape",
    "read_slice",
    "read_text_tags",
]

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
    "PhotometricInterpretation",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "PixelSpacing",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
]

_CODECS_HINT = "install a decoder with: pip install 'daskmri[codecs]'"


# -- The header walk ----------------------------------------------------------------
# pydicom's reader builds an element object for each of the ~100 elements of a file
# even when only a dozen tags are kept; that is most of the time of a read. For the
# common case (uncompressed little endian) this walk jumps from element header to
# element header and keeps the raw bytes of the few tags needed. Anything it does
# not fully understand returns None, and pydicom reads the file instead, so errors
# and unusual files keep pydicom's exact behaviour.

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
# The VR each wanted tag must carry in an explicit-VR file; any other is pydicom's call.
#: The PhotometricInterpretation values of a grey-level image.
GREY_LEVELS = ("MONOCHROME2", "MONOCHROME1")

_WANTED_VR = {
    "NumberOfFrames": b"IS",
    "RescaleIntercept": b"DS",
    "RescaleSlope": b"DS",
    "PhotometricInterpretation": b"CS",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_WANTED = {
    0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280030: "PixelSpacing",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280103: "PixelRepresentation",
    0x00281052: "RescaleIntercept",
    0x00281053: "RescaleSlope",
    0x00283000: "ModalityLUTSequence",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
    0x7FE00010: "PixelData",
}
_US = frozenset(
    {"SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"}
)
_unpack_tag_len = struct.Struct("<HHI").unpack_from
_unpack_tag_vr_short = struct.Struct("<HH2sH").unpack_from


class _Header(dict):
    """The decoded wanted tags, readable like the pydicom Dataset they stand for."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Fallback(Exception):
    """The walk met something it leaves to pydicom."""


def _element(raw: bytes, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value start) of the element at ``pos``."""
    if pos + 8 > len(raw):
        raise _Fallback
    group, elem, vr, short = _unpack_tag_vr_short(raw, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item and delimiter tags carry no VR, even in explicit VR
        return tag, None, _unpack_tag_len(raw, pos)[2], pos + 8
    if not explicit:
        return tag, None, _unpack_tag_len(raw, pos)[2], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(raw):
            raise _Fallback
        return tag, vr, struct.unpack_from("<I", raw, pos + 8)[0], pos + 12
    if vr not in _SHORT_VRS:
        raise _Fallback
    return tag, vr, short, pos + 8


def _skip_sequence(raw: bytes, pos: int, explicit: bool) -> int:
    """Position after a sequence of undefined length whose items start at ``pos``."""
    while True:
        tag, _, length, start = _element(raw, pos, explicit)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _Fallback
        pos = _walk(raw, start, explicit, None) if length == _UNDEFINED else start + length


def _walk(raw: bytes, pos: int, explicit: bool, found: dict | None, wanted: dict = _WANTED) -> int:
    """Walk a dataset from ``pos``; collect ``wanted`` top-level tags into ``found``.

    ``found`` is None inside a nested item, which ends at its delimiter.
    """
    end = len(raw)
    while pos < end:
        tag, vr, length, start = _element(raw, pos, explicit)
        if found is None and tag == _ITEM_END:
            return start
        if length == _UNDEFINED:
            # Encapsulated pixel data, or UN holding implicit VR: pydicom's job.
            if tag == _PIXEL_DATA or vr == b"UN":
                raise _Fallback
            pos = _skip_sequence(raw, start, explicit)
            continue
        if start + length > end:
            raise _Fallback  # truncated: let pydicom read and describe it
        if found is not None and tag in wanted:
            name = wanted[tag]
            if (
                vr is not None
                and vr != _WANTED_VR.get(name, b"US")
                and name in _US | set(_WANTED_VR)
            ):
                raise _Fallback
            if name == "PixelSpacing" and vr not in (None, b"DS"):
                raise _Fallback  # a binary or odd encoding: pydicom decodes it
            found[name] = memoryview(raw)[start : start + length]
            if tag == _PIXEL_DATA:
                return start + length
        pos = start + length
    if found is None:
        raise _Fallback
    return pos


def _dataset_start(raw: bytes) -> tuple[int, str] | None:
    """Where the dataset starts after the file meta group, and its transfer syntax;
    None unless the file is uncompressed little endian with a DICM marker."""
    if len(raw) < 132 or raw[128:132] != b"DICM":
        return None
    pos, syntax = 132, None
    while pos + 8 <= len(raw) and raw[pos : pos + 2] == b"\x02\x00":  # group 0002
        tag, _, length, start = _element(raw, pos, True)
        if length == _UNDEFINED:
            return None
        if tag == 0x00020010:
            syntax = bytes(raw[start : start + length]).rstrip(b"\0 ").decode("ascii")
        pos = start + length
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    return pos, syntax


#: The text tags that place a slice in patient space (see :func:`read_text_tags`).
PLANE_TAGS = {
    0x00080018: "SOPInstanceUID",
    0x00180050: "SliceThickness",
    0x00180088: "SpacingBetweenSlices",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
    0x00280030: "PixelSpacing",
}


def read_text_tags(
    path: str | os.PathLike[str],
    tags: dict[int, str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    fs: FileSystem = LOCAL,
) -> dict[str, str] | None:
    r"""The values of top-level text tags (UI, DS, CS, ...) of a DICOM file, by the
    header walk and without pydicom: ``{name: text}`` for those present (padding
    stripped, several values still joined by backslashes). None when the walk leaves
    the file to pydicom (not uncompressed little endian, an element it does not
    understand); read such a file with pydicom.

    Raises
    ------
    DicomError
        If the file cannot be read (missing, empty, over ``Limits.max_file_bytes``).

    Examples
    --------
    >>> from daskmri import synth
    >>> import tempfile
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=2, shape=(32, 48))
    >>> found = read_text_tags(root / "dicoms" / "SYN0001" / "1.dcm", PLANE_TAGS)
    >>> found["PixelSpacing"].split("\\")
    ['1.25', '1.25']
    """
    path = os.fspath(path)
    raw = _read_bytes(path, limits, fs)
    try:
        begin = _dataset_start(raw)
        if begin is None:
            return None
        found: dict = {}
        _walk(raw, begin[0], begin[1] == ExplicitVRLittleEndian, found, tags)
        return {name: bytes(v).decode("ascii").strip(" \0") for name, v in found.items()}
    except (_Fallback, struct.error, UnicodeDecodeError, ValueError):
        return None


def _fast_header(raw: bytes) -> tuple[_Header, str] | None:
    """Wanted tags and the transfer syntax of a little-endian uncompressed file, or None."""
    try:
        begin = _dataset_start(raw)
        if begin is None:
            return None
        pos, syntax = begin
        found: dict = {}
        _walk(raw, pos, syntax == ExplicitVRLittleEndian, found)
        header = _Header()
        for name, value in found.items():
            if name == "PixelData" or name.endswith("FloatPixelData"):
                header[name] = value
            elif name == "ModalityLUTSequence":
                return None
            elif name == "PixelSpacing":
                header[name] = _spacing(bytes(value).decode("ascii", "replace").split("\\"))
            elif name in _US:
                if len(value) != 2:
                    return None
                header[name] = struct.unpack("<H", value)[0]
            else:  # CS, IS and DS: one value as text
                text = bytes(value).decode("ascii").strip(" \0")
                if not text or "\\" in text:
                    return None
                if name == "PhotometricInterpretation":
                    # Only trailing padding, as pydicom strips: a leading space is an error.
                    header[name] = bytes(value).decode("ascii").rstrip(" \0")
                else:
                    header[name] = int(text) if name == "NumberOfFrames" else float(text)
        return header, syntax
    except (_Fallback, struct.error, UnicodeDecodeError, ValueError):
        return None


def _spacing(values: list) -> tuple[float, float] | None:
    """PixelSpacing as ``(row_mm, column_mm)``, or None when absent or not two positive
    finite numbers (it is optional: a slice without it is read all the same)."""
    try:
        spacing = tuple(float(str(v).strip(" \0")) for v in values)
    except ValueError:
        return None
    if len(spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing):
        return None
    return spacing


def _read_bytes(path: str, limits: Limits, fs: FileSystem = LOCAL) -> bytes:
    raw = read_bounded(
        path, limits, error=DicomError, name="DICOM file", expected="a DICOM file", fs=fs
    )
    if not raw:
        raise DicomError(path, "empty file (0 bytes), expected a DICOM file")
    return raw


def _parse(path: str, raw: bytes, specific_tags: list[str] | None) -> pydicom.Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

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


def _header(path: str, raw: bytes) -> tuple[_Header, str]:
    """The pixel-describing tags and transfer syntax: by the fast walk, else pydicom."""
    fast = _fast_header(raw)
    if fast is not None:
        return fast
    parsed = _parse(path, raw, _PIXEL_TAGS)
    return _header_of(path, parsed), parsed.file_meta.get("TransferSyntaxUID")


def _header_of(path: str, ds: pydicom.Dataset) -> _Header:
    """The wanted tags of a pydicom Dataset, converted now: pydicom converts values
    lazily, and a damaged value would otherwise raise its own error types later."""
    header = _Header()
    try:
        for name in _WANTED.values():
            if name in ds and name != "PixelSpacing":
                header[name] = True if name == "ModalityLUTSequence" else ds[name].value
    except Exception as exc:
        raise DicomError(path, f"damaged DICOM header ({type(exc).__name__}: {exc})") from None
    try:
        header["PixelSpacing"] = _spacing(list(ds.get("PixelSpacing") or []))
    except Exception:  # optional: a damaged spacing is as good as none
        header["PixelSpacing"] = None
    from pydicom.multival import MultiValue

    for name in (*_US, *_WANTED_VR):
        if isinstance(header.get(name), (list, tuple, MultiValue)):
            raise DicomError(path, f"damaged DICOM header: {name} holds several values")
    return header


def _geometry(path: str, ds: pydicom.Dataset, limits: Limits) -> tuple[int, int, int]:
    # All required (type 1) in the Image Pixel module, and pydicom refuses to decode
    # without them: a default would invent how the bytes are meant.
    required = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")
    missing = [k for k in required if ds.get(k) is None]
    if missing:
        raise DicomError(path, f"no pixel description: missing {', '.join(missing)}")
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if not 0 < int(ds.BitsStored) <= bits or int(ds.PixelRepresentation) not in (0, 1):
        raise DicomError(
            path,
            f"damaged pixel description: BitsStored {ds.BitsStored} with BitsAllocated "
            f"{bits}, PixelRepresentation {ds.PixelRepresentation}",
        )
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
    # pydicom refuses to decode without it, and a damaged value would leave the grey
    # scale's meaning unknown.
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in GREY_LEVELS:
        raise DicomError(
            path,
            "no PhotometricInterpretation"
            if photometric is None
            else f"PhotometricInterpretation {str(photometric)!r} is not a grey level "
            f"({' or '.join(GREY_LEVELS)})",
        )
    frames = ds.get("NumberOfFrames", 1)
    if int(frames or 1) != 1:
        raise DicomError(path, f"multi-frame image ({frames} frames); one slice per file expected")
    return rows, cols, bits


def read_dicom_shape(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL
) -> tuple[int, int]:
    """``(Rows, Columns)`` of a DICOM file without decoding its pixels: the first two
    values of :func:`read_dicom_geometry`, and the same errors."""
    rows, cols, _ = read_dicom_geometry(path, limits=limits, fs=fs)
    return rows, cols


def read_dicom_geometry(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL
) -> tuple[int, int, tuple[float, float] | None]:
    """``(Rows, Columns, PixelSpacing)`` of a DICOM file without decoding its pixels;
    the spacing is ``(row_mm, column_mm)``, or None when the file has none.

    Raises
    ------
    DicomError
        As :func:`read_dicom`, for a file that cannot describe its pixels.

    Examples
    --------
    >>> from daskmri import synth
    >>> import tempfile
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=2, shape=(32, 48))
    >>> read_dicom_geometry(root / "dicoms" / "SYN0001" / "1.dcm")
    (32, 48, (1.25, 1.25))
    """
    path = os.fspath(path)
    ds, _ = _header(path, _read_bytes(path, limits, fs))
    rows, cols, _ = _geometry(path, ds, limits)
    return rows, cols, ds.get("PixelSpacing")


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
    return read_slice(path, limits=limits)[0]


def read_slice(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, fs: FileSystem = LOCAL
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """:func:`read_dicom`'s pixels and the slice's PixelSpacing (``(row_mm,
    column_mm)`` or None), from one read of the file (on ``fs``: local by default).

    Raises
    ------
    DicomError
        As :func:`read_dicom`.
    """
    path = os.fspath(path)
    raw = _read_bytes(path, limits, fs)
    ds, syntax = _header(path, raw)
    return _pixels(path, raw, ds, syntax, limits), ds.get("PixelSpacing")


def _pixels(path: str, raw: bytes, ds: _Header, syntax: object, limits: Limits) -> np.ndarray:
    rows, cols, bits = _geometry(path, ds, limits)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(path, "float pixel data is not supported, only integer PixelData")
        raise DicomError(path, "no PixelData element: the file holds no image")
    order = _NATIVE.get(syntax)
    if "ModalityLUTSequence" in ds:
        full = _parse(path, raw, None)
        from pydicom.pixels import apply_modality_lut

        lut = apply_modality_lut(_decoded_pixels(path, full, syntax), full)
        return lut.astype(np.float32)
    if order is not None and bits in (8, 16, 32):
        pixels = _native_pixels(path, ds, rows, cols, bits, order)
    else:
        pixels = _decoded_pixels(path, _parse(path, raw, None), syntax)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        try:
            slope, intercept = float(slope), float(intercept)
        except (TypeError, ValueError):
            raise DicomError(
                path, f"RescaleSlope {slope!r} or RescaleIntercept {intercept!r} is not a number"
            ) from None
        # float64 first, as pydicom's apply_modality_lut does, so the float32 result
        # is bit-identical to it even where float32 arithmetic would round differently.
        scaled = pixels.astype(np.float64) * slope
        scaled += intercept
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
    stored = int(ds.BitsStored)
    if stored < bits:
        # As pydicom does: drop the unused high bits (sign-extending signed data).
        shift = bits - stored
        pixels = (pixels << shift) >> shift
    return pixels


def _decoder_available(syntax: object) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError, TypeError):
        return False


def _decoded_pixels(path: str, ds: pydicom.Dataset, syntax: object) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if not _decoder_available(syntax):
            name = getattr(syntax, "name", str(syntax))
            raise DicomError(
                path,
                f"pixel data is compressed ({name}) and no decoder is available; {_CODECS_HINT}",
            ) from None
        # A decoder is installed and failed: the data is damaged, not the install.
        text = " ".join(str(exc).split())
        raise DicomError(path, f"cannot decode pixel data: {text}") from None
    except Exception as exc:
        raise DicomError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    if pixels.ndim != 2:
        raise DicomError(path, f"decoded pixels have shape {pixels.shape}, expected one 2-D slice")
    return pixels
