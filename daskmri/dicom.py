"""Read one DICOM slice into float32 pixels after the modality rescale.

Native little-endian pixel data takes a fast path: a walk over the element headers
keeps the handful of tags that describe the pixels, and the pixels are a
``np.frombuffer`` view. Whatever the walk does not fully understand (big endian,
deflate, JPEG, JPEG-LS, JPEG 2000, RLE, a Modality LUT, a tag with an unexpected VR or
value) goes to pydicom, which decodes and rescales it. Both paths give exactly
``pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)``, or a
one-line :class:`~daskmri.errors.DicomError` where daskmri cannot (colour, several
frames, float pixels) or pydicom does not (a damaged file): never another array.
tests/test_dicom_differential.py holds this against pydicom on every file pydicom
ships and 400 mutations of them.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from typing import TYPE_CHECKING

import numpy as np

from .compact import Compact, verified
from .errors import DicomError, one_line
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
    "TEXT_TAG_VRS",
    "read_dicom",
    "read_dicom_geometry",
    "read_dicom_shape",
    "read_slice",
    "read_slice_compact",
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
#: The PhotometricInterpretation values of a grey-level image.
GREY_LEVELS = ("MONOCHROME2", "MONOCHROME1")

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
# The VRs each wanted tag may carry in an explicit-VR file: those pydicom decodes the
# way the walk does. Any other (Rows as DS, PixelData as UT, ...) is pydicom's call.
_WANTED_VRS = {name: frozenset({b"US"}) for name in _US} | {
    "NumberOfFrames": frozenset({b"IS"}),
    "RescaleIntercept": frozenset({b"DS"}),
    "RescaleSlope": frozenset({b"DS"}),
    "PhotometricInterpretation": frozenset({b"CS"}),
    "PixelSpacing": frozenset({b"DS"}),
    "ModalityLUTSequence": frozenset({b"SQ"}),
    "PixelData": frozenset({b"OB", b"OW"}),
    "FloatPixelData": frozenset({b"OF"}),
    "DoubleFloatPixelData": frozenset({b"OD"}),
}
#: Tags :func:`read_text_tags` reads, with their VR (in PS3.6): the walk reads a tag
#: only where it carries that VR, and strips the text as pydicom does for it.
TEXT_TAG_VRS = {
    0x00080018: "UI",
    0x00180050: "DS",
    0x00180088: "DS",
    0x00200032: "DS",
    0x00200037: "DS",
    0x00280030: "DS",
}
# The transfer syntaxes the walk reads itself; pydicom reads every other one.
_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_SIZE = 2**16 - 1  # Rows and Columns are US: pydicom refuses anything larger
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


def _walk(
    raw: bytes,
    pos: int,
    explicit: bool,
    found: dict | None,
    wanted: dict = _WANTED,
    vrs: dict = _WANTED_VRS,
) -> int:
    """Walk a dataset from ``pos`` to its end; collect ``wanted`` top-level tags into
    ``found`` where they carry one of their ``vrs`` (any other VR: :class:`_Fallback`).

    ``found`` is None inside a nested item, which ends at its delimiter. The walk goes
    on after the pixels: pydicom reads the whole file, and what it cannot read there
    (a truncated trailing element) must send the file to pydicom, not past it.
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
            if vr is not None and vr not in vrs[name]:
                raise _Fallback
            found[name] = memoryview(raw)[start : start + length]
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
    if syntax not in _LITTLE_ENDIAN:
        return None
    # pydicom reads the dataset in the VR encoding its first element shows (two capital
    # letters where an explicit VR would be), whatever the transfer syntax says.
    vr = raw[pos + 4 : pos + 6]
    looks_explicit = len(vr) == 2 and all(0x40 < c < 0x5B for c in vr)
    if len(vr) == 2 and looks_explicit != (syntax == ExplicitVRLittleEndian):
        return None
    return pos, syntax


# pydicom decodes DS, IS, CS and UI values in its default character set (latin-1, not
# the file's SpecificCharacterSet), and strips them as these do; the walk does the same
# so that its text is pydicom's text.
def _numeric_text(value: memoryview) -> str:
    """A DS or IS value as pydicom reads it: whitespace around it, then trailing padding."""
    return bytes(value).decode("latin-1").strip().rstrip(" \0")


def _code_text(value: memoryview) -> str:
    """A CS value as pydicom reads it: trailing padding stripped, leading spaces kept."""
    return bytes(value).decode("latin-1").rstrip(" \0")


def _uid_text(value: memoryview) -> str:
    """A UI value as pydicom reads it: trailing padding, then spaces around each UID."""
    items = bytes(value).decode("latin-1").rstrip("\0 ").split("\\")
    return "\\".join(item.strip() for item in items)


def _ds_text(value: memoryview) -> str:
    """A DS value as pydicom reads it; ValueError where an item is no number to
    ``float`` (pydicom raises there, or keeps that item as text), so that the walk
    steps aside. The items are not stripped first: ``str.strip`` removes characters
    (``\\x1c``) that ``float`` refuses."""
    items = _numeric_text(value).split("\\")
    for item in items:
        if item.strip():
            float(item)
    return "\\".join(item.strip() for item in items)


#: The plane tags (see :func:`read_text_tags`).
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
    r"""The values of top-level UI and DS tags of a DICOM file, by the header walk and
    without pydicom: ``{name: text}`` for those present, the text as pydicom gives it
    (padding stripped as pydicom strips it, several values joined by backslashes).

    None where the walk leaves the file to pydicom: not uncompressed little endian, an
    element it does not understand, a tag with another VR than its own, a DS value that
    is no number (pydicom raises on it), text outside ASCII. Read such a file with
    pydicom. Every tag must be one of :data:`TEXT_TAG_VRS` (all of :data:`PLANE_TAGS`).

    Raises
    ------
    DicomError
        If the file cannot be read (missing, empty, over ``Limits.max_file_bytes``).
    ValueError
        If a tag is not one of :data:`TEXT_TAG_VRS`: its VR, so its reading, is unknown.

    Examples
    --------
    >>> from daskmri import synth
    >>> import tempfile
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=2, shape=(32, 48))
    >>> found = read_text_tags(root / "dicoms" / "SYN0001" / "1.dcm", PLANE_TAGS)
    >>> found["PixelSpacing"].split("\\")
    ['1.25', '1.25']
    """
    unknown = sorted(set(tags) - set(TEXT_TAG_VRS))
    if unknown:
        raise ValueError(
            f"read_text_tags reads only the tags of TEXT_TAG_VRS; not {[hex(t) for t in unknown]}"
        )
    path = os.fspath(path)
    raw = _read_bytes(path, limits, fs)
    vrs = {name: frozenset({TEXT_TAG_VRS[tag].encode()}) for tag, name in tags.items()}
    reader = {
        name: _uid_text if TEXT_TAG_VRS[tag] == "UI" else _ds_text for tag, name in tags.items()
    }
    try:
        begin = _dataset_start(raw)
        if begin is None:
            return None
        found: dict = {}
        _walk(raw, begin[0], begin[1] == ExplicitVRLittleEndian, found, tags, vrs)
        return {name: reader[name](value) for name, value in found.items()}
    except (_Fallback, struct.error, UnicodeDecodeError, ValueError):
        return None


def _fast_header(raw: bytes) -> tuple[_Header, str] | None:
    """Wanted tags and the transfer syntax of a little-endian uncompressed file, or None
    where anything in it is not exactly as the walk expects (pydicom then reads it)."""
    try:
        begin = _dataset_start(raw)
        if begin is None:
            return None
        pos, syntax = begin
        found: dict = {}
        _walk(raw, pos, syntax == ExplicitVRLittleEndian, found)
        if "ModalityLUTSequence" in found:
            return None  # pydicom applies the LUT
        header = _Header()
        for name, value in found.items():
            header[name] = _decoded(name, value)
        return header, syntax
    except (_Fallback, struct.error, UnicodeDecodeError, ValueError):
        return None


def _decoded(name: str, value: memoryview) -> object:
    """A wanted value from its bytes, as pydicom would give it; ValueError where the
    walk cannot be sure it is (an empty or multiple value, text that is no number)."""
    if name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        return value
    if name == "PixelSpacing":
        return _spacing(_numeric_text(value).split("\\"))
    if name in _US:
        if len(value) != 2:
            raise ValueError(name)
        return struct.unpack("<H", value)[0]
    text = _code_text(value) if name == "PhotometricInterpretation" else _numeric_text(value)
    if not text or "\\" in text:
        raise ValueError(name)
    if name == "PhotometricInterpretation":
        return text
    if name == "NumberOfFrames":
        return int(text)
    return float(text)


def _spacing(values: list) -> tuple[float, float] | None:
    """PixelSpacing as ``(row_mm, column_mm)``, or None when absent or not two positive
    finite numbers (it is optional: a slice without it is read all the same)."""
    try:
        spacing = tuple(float(v) for v in values)
    except (TypeError, ValueError):
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
    except InvalidDicomError as exc:
        raise DicomError(
            path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
        ) from exc
    except Exception as exc:  # pydicom raises many types on a damaged file
        raise DicomError(path, f"damaged or truncated DICOM ({one_line(exc)})") from exc


def _header(path: str, raw: bytes) -> tuple[_Header, object, bool]:
    """The pixel-describing tags, the transfer syntax, and whether the walk read them
    (else pydicom did, and pydicom decodes the pixels too)."""
    fast = _fast_header(raw)
    if fast is not None:
        return *fast, True
    parsed = _parse(path, raw, _PIXEL_TAGS)
    return _header_of(path, parsed), parsed.file_meta.get("TransferSyntaxUID"), False


def _header_of(path: str, ds: pydicom.Dataset) -> _Header:
    """The wanted tags of a pydicom Dataset, converted now: pydicom converts values
    lazily, and a damaged value would otherwise raise its own error types later."""
    header = _Header()
    try:
        for name in _WANTED.values():
            if name in ds and name != "PixelSpacing":
                header[name] = True if name == "ModalityLUTSequence" else ds[name].value
    except Exception as exc:
        raise DicomError(path, f"damaged DICOM header ({one_line(exc)})") from exc
    try:
        header["PixelSpacing"] = _spacing(list(ds.get("PixelSpacing") or []))
    except Exception:  # optional: a damaged spacing is as good as none
        header["PixelSpacing"] = None
    return header


# All required (type 1) in the Image Pixel module, and pydicom refuses to decode
# without them: a default would invent how the bytes are meant.
_REQUIRED = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")


def _whole_numbers(path: str, ds: _Header) -> dict[str, int]:
    """The US tags of the pixel description as ints; DicomError where one is missing or
    not one whole number (a text VR, several values: pydicom cannot use it either)."""
    missing = [k for k in _REQUIRED if ds.get(k) is None]
    if missing:
        raise DicomError(path, f"no pixel description: missing {', '.join(missing)}")
    numbers = {}
    for name in (*_REQUIRED, "SamplesPerPixel"):
        value = ds.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DicomError(
                path, f"damaged pixel description: {name} is {_shown(value)}, not a whole number"
            )
        numbers[name] = value
    return numbers


def _shown(value: object) -> str:
    """A header value for a message: its repr, on one line and not too long."""
    text = " ".join(repr(value).split())
    if not text.strip("'\"[]"):
        return "empty"
    return text if len(text) <= 60 else f"{text[:57]}..."


def _geometry(path: str, ds: _Header, limits: Limits) -> tuple[int, int, int]:
    n = _whole_numbers(path, ds)
    rows, cols, bits = n["Rows"], n["Columns"], n["BitsAllocated"]
    if not 0 < n["BitsStored"] <= bits or n["PixelRepresentation"] not in (0, 1):
        raise DicomError(
            path,
            f"damaged pixel description: BitsStored {n['BitsStored']} with BitsAllocated "
            f"{bits}, PixelRepresentation {n['PixelRepresentation']}",
        )
    if not (0 < rows <= _MAX_SIZE and 0 < cols <= _MAX_SIZE):
        raise DicomError(path, f"declared size {rows}x{cols} is empty or over 65535")
    if rows * cols > limits.max_pixels:
        raise DicomError(
            path,
            f"declared size {rows}x{cols} = {rows * cols} pixels is over "
            f"Limits.max_pixels={limits.max_pixels}; raise the limit if the file is genuine",
        )
    _check_grey_level(path, ds, n["SamplesPerPixel"])
    return rows, cols, bits


def _check_grey_level(path: str, ds: _Header, samples: int | None) -> None:
    """DicomError unless the header describes one grey-level frame."""
    if samples is None:  # pydicom refuses to decode without it (type 1)
        raise DicomError(path, "no pixel description: missing SamplesPerPixel")
    if samples != 1:
        raise DicomError(
            path, f"colour image (SamplesPerPixel {samples}, not 1); only grey-level MR is read"
        )
    # pydicom refuses to decode without it, and a damaged value would leave the grey
    # scale's meaning unknown.
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in GREY_LEVELS:
        raise DicomError(
            path,
            "no PhotometricInterpretation"
            if photometric is None
            else f"PhotometricInterpretation {_shown(str(photometric))} is not a grey level "
            f"({' or '.join(GREY_LEVELS)})",
        )
    frames = ds.get("NumberOfFrames")
    # pydicom reads text as a whole number (an odd VR), an empty or zero NumberOfFrames
    # as one frame, and refuses a negative one; an IS that is no whole number (1.5)
    # leaves the frame count unknown.
    if isinstance(frames, str):
        try:
            frames = int(frames)
        except ValueError:
            raise DicomError(
                path, f"damaged NumberOfFrames {_shown(frames)}: not a whole number"
            ) from None
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)):
        raise DicomError(path, f"damaged NumberOfFrames {_shown(frames)}: not a whole number")
    if frames is not None and frames < 0:
        raise DicomError(path, f"damaged NumberOfFrames {frames}: negative")
    if (frames or 1) != 1:
        raise DicomError(path, f"multi-frame image ({frames} frames); one slice per file expected")


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
    ds, _, _ = _header(path, _read_bytes(path, limits, fs))
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
    image, _, spacing = read_slice_compact(path, limits=limits, fs=fs)
    return image, spacing


def read_slice_compact(
    path: str | os.PathLike[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    fs: FileSystem = LOCAL,
    image: bool = True,
) -> tuple[np.ndarray | None, Compact, tuple[float, float] | None]:
    """:func:`read_slice`'s float32 image and spacing, with the slice's compact form.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM Part 10 file holding one grey-level frame.
    limits : Limits
        As for :func:`read_dicom`.
    fs : FileSystem
        Where ``path`` is.
    image : bool
        With False, the float32 image is left out (None) where the compact form is
        the file's own integers and rescale, which widen to it by construction: a
        build keeps only the compact form, and the image would cost it a widening.

    Returns
    -------
    image : numpy.ndarray or None
        float32, exactly :func:`read_dicom`'s (None: see ``image``).
    compact : daskmri.compact.Compact
        The stored integers with RescaleSlope and RescaleIntercept (1 and 0 when the
        file lacks either, as the rescale is then not applied), which widen to
        ``image`` bit for bit; the float32 fallback where they would not, or where a
        Modality LUT (not a linear rescale) maps the values.
    spacing : (row_mm, column_mm) or None
        The PixelSpacing.

    Raises
    ------
    DicomError
        As :func:`read_dicom`.

    Examples
    --------
    >>> from daskmri import synth
    >>> import tempfile
    >>> root = synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=2, shape=(32, 48))
    >>> image, compact, _ = read_slice_compact(root / "dicoms" / "SYN0001" / "1.dcm")
    >>> compact.pixels.dtype, np.array_equal(compact.image(), image)
    (dtype('int16'), True)
    >>> read_slice_compact(root / "dicoms" / "SYN0001" / "1.dcm", image=False)[0] is None
    True
    """
    path = os.fspath(path)
    raw = _read_bytes(path, limits, fs)
    ds, syntax, walked = _header(path, raw)
    pixels, compact = _pixels(path, raw, ds, syntax, walked, limits, image)
    return pixels, compact, ds.get("PixelSpacing")


def _pixels(
    path: str,
    raw: bytes,
    ds: _Header,
    syntax: object,
    walked: bool,
    limits: Limits,
    image: bool = True,
) -> tuple[np.ndarray | None, Compact]:
    rows, cols, bits = _geometry(path, ds, limits)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(path, "float pixel data is not supported, only integer PixelData")
        raise DicomError(path, "no PixelData element: the file holds no image")
    native = syntax in _NATIVE and isinstance(ds.PixelData, (bytes, memoryview))
    if native and bits in (8, 16, 32):
        _check_size(path, ds.PixelData, rows, cols, bits)
    if not (walked and bits in (8, 16, 32)):
        # Whatever the walk did not read itself (big endian, where 8-bit pixels may be
        # stored as byte-swapped OW words; odd VRs; a Modality LUT; other bit depths),
        # pydicom decodes and rescales, so the result is pydicom's by construction.
        return _pydicom_pixels(path, raw, syntax)
    pixels = _native_pixels(ds, rows, cols, bits)
    slope, intercept = 1.0, 0.0
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:  # both, as pydicom requires
        slope, intercept = ds.RescaleSlope, ds.RescaleIntercept
    # widen computes in float64 first, as pydicom's apply_modality_lut does, so the
    # float32 result is bit-identical to it even where float32 arithmetic would round
    # differently; and the image is widen(compact) by construction.
    compact = Compact(pixels, slope, intercept)
    return (compact.image() if image else None), compact


def _check_size(path: str, data: bytes | memoryview, rows: int, cols: int, bits: int) -> None:
    """DicomError unless the native pixel bytes hold one ``rows x cols`` frame."""
    expected = rows * cols * bits // 8
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


def _native_pixels(ds: _Header, rows: int, cols: int, bits: int) -> np.ndarray:
    """The walk's little-endian pixel bytes as a ``(rows, cols)`` view, their unused
    high bits dropped (sign-extending signed data) as pydicom does."""
    signed = ds.PixelRepresentation == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    pixels = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * cols).reshape(rows, cols)
    stored = ds.BitsStored
    if stored < bits:
        shift = bits - stored
        pixels = (pixels << shift) >> shift
    return pixels


def _pydicom_pixels(path: str, raw: bytes, syntax: object) -> tuple[np.ndarray, Compact]:
    """pydicom's own result: ``apply_modality_lut(ds.pixel_array, ds)`` as float32, and
    the decoded integers with the linear rescale where they widen to it exactly."""
    from pydicom.pixels import apply_modality_lut

    full = _parse(path, raw, None)
    pixels = _decoded_pixels(path, full, syntax)
    try:
        image = apply_modality_lut(pixels, full).astype(np.float32)
    except Exception as exc:  # an empty or damaged rescale, a damaged Modality LUT
        raise DicomError(
            path,
            f"damaged modality rescale: RescaleSlope/RescaleIntercept or the Modality LUT "
            f"cannot be applied ({one_line(exc)})",
        ) from exc
    return image, verified(image, _linear_candidate(full, pixels))


def _linear_candidate(ds: pydicom.Dataset, pixels: np.ndarray) -> Compact | None:
    """The decoded integers with the file's linear rescale; None where a Modality LUT
    maps them, or they are not integers."""
    if pixels.dtype.kind not in "iu" or "ModalityLUTSequence" in ds:
        return None
    try:
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            return Compact(pixels, float(ds.RescaleSlope), float(ds.RescaleIntercept))
    except (TypeError, ValueError):  # verified() refuses what is not pydicom's result
        return None
    return Compact(pixels, 1.0, 0.0)


def _no_decoder(syntax: object) -> str | None:
    """Why pydicom has no decoder for ``syntax``: None where it has a working one."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(syntax)) if syntax is not None else None
    if uid is None or not uid.is_transfer_syntax:
        shown = "none" if syntax is None else repr(str(syntax))
        return (
            f"the transfer syntax ({shown}) is not one DICOM defines, so the pixel data "
            "cannot be decoded: the file is damaged or uses a private encoding; convert it "
            "to a standard one (e.g. with dcmtk's dcmconv)"
        )
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"no decoder exists for {uid.name} pixel data (not even in the codecs extra)"
    if not decoder.is_available:
        return f"pixel data is compressed ({uid.name}) and no decoder is available; {_CODECS_HINT}"
    return None


def _decoded_pixels(path: str, ds: pydicom.Dataset, syntax: object) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        missing = _no_decoder(syntax)
        if missing is not None:
            raise DicomError(path, missing) from exc
        # A decoder is installed and failed: the data is damaged, not the install.
        raise DicomError(path, f"cannot decode pixel data: {' '.join(str(exc).split())}") from exc
    except Exception as exc:
        raise DicomError(path, f"cannot decode pixel data ({one_line(exc)})") from exc
    if pixels.ndim != 2:
        raise DicomError(path, f"decoded pixels have shape {pixels.shape}, expected one 2-D slice")
    return pixels
