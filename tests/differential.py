"""daskmri's DICOM reader against pydicom, file by file: every file pydicom ships and
seeded mutations of them. One module for the test (``tests/test_dicom_differential.py``)
and the table (``benchmarks/differential.py``), so both run the same cases.

What counts as pydicom's result: ``dcmread`` of the bytes, then
``apply_modality_lut(ds.pixel_array, ds).astype(np.float32)``. Where that raises,
pydicom refuses the file and daskmri must refuse it too. Where it gives an array that
is not one grey-level frame (colour, several frames, float pixel data, a palette),
daskmri refuses by design. Elsewhere daskmri must give the same array bit for bit
(NaNs equal), or refuse: a refusal is never a wrong answer, a different array is.
Every refusal is a :class:`~daskmri.errors.DicomError` with a one-line message.

``read_dicom_geometry`` must give pydicom's Rows, Columns and PixelSpacing (two
positive finite numbers, else None) wherever ``read_slice`` gives an image, and
anywhere else either those or a DicomError. ``read_text_tags(path, PLANE_TAGS)``
must give None (the caller asks pydicom) or pydicom's values: UIDs as the same text,
DS values as the same numbers, item by item, which is how the RTSTRUCT plane
assignment reads them (an item that is no number compares as its text).

The files are found on disk under pydicom's data folder, never through
``pydicom.data.get_testdata_files``, which downloads the files it lacks.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from daskmri.dicom import PLANE_TAGS, read_dicom_geometry, read_slice, read_text_tags
from daskmri.errors import DicomError

DATA_ROOT = Path(pydicom.data.__file__).resolve().parent
FOLDERS = ("test_files", "charset_files", "palettes")
SEED = 20240624
#: Mutations of each kind; about 400 in all.
COUNTS = {
    "truncate": 70,
    "flip header": 80,
    "flip 0028": 70,
    "empty or delete 0028": 50,
    "vr": 70,
    "syntax": 60,
}
GREY_LEVELS = ("MONOCHROME1", "MONOCHROME2")
IMAGE = "identical"
BOTH_REFUSE = "refused: pydicom refuses too"
STRICTER = "refused: pydicom gives an image"
WRONG = "WRONG: an image that is not pydicom's"
# The VRs as pydicom lists them: those with a 4-byte length, and the others.
_LONG_VRS = sorted(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_VRS = sorted(str(vr) for vr in VR if len(vr) == 2 and vr not in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
#: Elements whose VR a mutation changes: group 0028, the plane tags and the pixels.
_VR_TARGETS = {*PLANE_TAGS, _PIXEL_DATA}
_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.3.4.5",  # no transfer syntax at all
)
_REENCODINGS = (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


def shipped_files() -> list[Path]:
    """Every file in pydicom's data folders (203 with pydicom 3.0), sorted."""
    return sorted(
        path
        for folder in FOLDERS
        for path in (DATA_ROOT / folder).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    )


@dataclass(frozen=True)
class Mutation:
    """One deterministic change to a file's bytes: ``kind`` (a key of COUNTS or
    ``"regression"``), ``detail`` (what exactly, for the case id), and the function
    that makes the new bytes from the old."""

    kind: str
    detail: str
    apply: Callable[[bytes], bytes]


@dataclass(frozen=True)
class Case:
    """A file pydicom ships, as it is (``mutation`` None) or mutated."""

    path: Path
    mutation: Mutation | None = None

    @property
    def name(self) -> str:
        return str(self.path.relative_to(DATA_ROOT)).removeprefix("test_files/")

    @property
    def id(self) -> str:
        return self.name if self.mutation is None else f"{self.name}|{self.mutation.detail}"

    def data(self) -> bytes:
        raw = self.path.read_bytes()
        return raw if self.mutation is None else self.mutation.apply(raw)


# -- Where a file's elements lie ---------------------------------------------------


@dataclass(frozen=True)
class Element:
    """A top-level element of a file: its tag, where its header starts, where its
    value starts and ends, its VR as written (None in implicit VR), its byte order."""

    tag: int
    start: int
    value: int
    end: int
    vr: str | None
    little: bool


def elements(raw: bytes) -> list[Element]:
    """The top-level elements of a file pydicom reads, with their byte offsets; [] for a
    file pydicom cannot read or that is deflated (its offsets are in other bytes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(raw), defer_size=None)
            if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                return []
            implicit, little = ds.original_encoding
            found = [
                _element(ds.get_item(tag), implicit, little)
                for tag in ds.keys()  # noqa: SIM118 (raw elements, not converted values)
            ]
    except Exception:
        return []
    return [e for e in found if e is not None and _tag_at(raw, e)]


def _element(item, implicit: bool, little: bool) -> Element | None:
    tell = getattr(item, "value_tell", None)
    if tell is None or item.length == _UNDEFINED:
        return None
    header = 8 if implicit or item.VR not in _LONG_VRS else 12
    vr = None if implicit else item.VR
    return Element(int(item.tag), tell - header, tell, tell + item.length, vr, little)


def _tag_at(raw: bytes, e: Element) -> bool:
    order = "<" if e.little else ">"
    return raw[e.start : e.start + 4] == struct.pack(f"{order}HH", e.tag >> 16, e.tag & 0xFFFF)


def dataset_start(raw: bytes) -> int | None:
    """Where the dataset starts after the file meta group (explicit VR little endian)."""
    if raw[128:132] != b"DICM":
        return None
    pos = 132
    while raw[pos : pos + 2] == b"\x02\x00" and pos + 8 <= len(raw):
        vr = raw[pos + 4 : pos + 6]
        if vr.decode("latin-1") in _LONG_VRS:
            length, pos = struct.unpack_from("<I", raw, pos + 8)[0], pos + 12
        else:
            length, pos = struct.unpack_from("<H", raw, pos + 6)[0], pos + 8
        pos += length
    return pos


# -- The mutations ------------------------------------------------------------------


def _truncate(cut: int) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:cut]


def _set_bytes(changes: dict[int, int]) -> Callable[[bytes], bytes]:
    def apply(raw: bytes) -> bytes:
        out = bytearray(raw)
        for where, value in changes.items():
            out[where] = value
        return bytes(out)

    return apply


def _splice(start: int, end: int, new: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:start] + new + raw[end:]


def _emptied(e: Element) -> bytes:
    """``e``'s header with a zero length, so the element keeps its place, empty."""
    order = "<" if e.little else ">"
    tag = struct.pack(f"{order}HH", e.tag >> 16, e.tag & 0xFFFF)
    if e.vr is None:
        return tag + struct.pack(f"{order}I", 0)
    if e.vr in _LONG_VRS:
        return tag + e.vr.encode() + b"\0\0" + struct.pack(f"{order}I", 0)
    return tag + e.vr.encode() + struct.pack(f"{order}H", 0)


def relabelled(uid: str) -> Callable[[bytes], bytes]:
    """The file meta group rewritten to declare ``uid``; the dataset's bytes unchanged."""

    def apply(raw: bytes) -> bytes:
        start = dataset_start(raw)
        if start is None:
            return raw
        value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
        syntax = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value
        meta, pos = bytearray(), 132
        while pos < start:
            tag, vr = raw[pos : pos + 4], raw[pos + 4 : pos + 6]
            long = vr.decode("latin-1") in _LONG_VRS
            head = 12 if long else 8
            length = struct.unpack_from("<I" if long else "<H", raw, pos + (8 if long else 6))[0]
            if struct.unpack("<HH", tag)[1] >= 0x0010 and syntax:
                meta += syntax  # in its place, replacing the old one or where it lacks
                syntax = b""
            if tag not in (b"\x02\x00\x10\x00", b"\x02\x00\x00\x00"):
                meta += raw[pos : pos + head + length]  # the group length is recomputed
            pos += head + length
        meta += syntax
        group = b"\x02\x00\x00\x00UL" + struct.pack("<HI", 4, len(meta))
        return raw[:132] + group + bytes(meta) + raw[start:]

    return apply


def reencoded(syntax: str) -> Callable[[bytes], bytes]:
    """The file written again by pydicom in ``syntax`` with the same stored pixels;
    in big endian 8-bit pixels go as OW, byte-swapped in 16-bit words (PS3.5 8.1.1)."""

    def apply(raw: bytes) -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(raw))
            stored = ds.pixel_array
            bits = int(ds.BitsAllocated)
            big = syntax == ExplicitVRBigEndian
            dtype = stored.dtype.newbyteorder(">" if big else "<")
            if bits == 8 and big:
                data = stored.astype(dtype).tobytes()
                data += b"\0" * (len(data) % 2)
                data = np.frombuffer(data, "<u2").byteswap().tobytes()
            else:
                data = stored.astype(dtype).tobytes()
            ds.PixelData = data
            ds["PixelData"].VR = "OW" if big or bits > 8 else "OB"
            ds.file_meta.TransferSyntaxUID = syntax
            out = io.BytesIO()
            pydicom.dcmwrite(
                out, ds, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=not big
            )
        return out.getvalue()

    return apply


# -- The cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What the case generator needs to know of a file: its elements (with offsets),
    whether it is explicit VR, one grey-level frame, and native pixels it can re-encode."""

    elements: tuple[Element, ...]
    syntax: str | None
    pixels: bool
    grey: bool
    reencodable: bool

    @property
    def pixel_start(self) -> int | None:
        return next((e.start for e in self.elements if e.tag == _PIXEL_DATA), None)

    def group_0028(self) -> list[Element]:
        return [e for e in self.elements if e.tag >> 16 == 0x0028]


def profile(raw: bytes) -> Profile:
    """The :class:`Profile` of a file's bytes (an empty one where pydicom cannot read it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
            syntax = ds.file_meta.get("TransferSyntaxUID")
            grey = (
                ds.get("PhotometricInterpretation") in GREY_LEVELS
                and ds.get("SamplesPerPixel") == 1
                and int(ds.get("NumberOfFrames") or 1) == 1
            )
            native = syntax is not None and syntax.is_transfer_syntax and not syntax.is_compressed
            bits = ds.get("BitsAllocated")
    except Exception:
        return Profile((), None, False, False, False)
    found = tuple(elements(raw))
    pixels = b"\xe0\x7f\x10\x00" in raw or b"\x7f\xe0\x00\x10" in raw
    reencodable = grey and native and bits in (8, 16) and pydicom_image(raw)[0] is not None
    return Profile(found, syntax, pixels, grey and pixels, reencodable)


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _new_byte(rng: np.random.Generator, old: int) -> int:
    return (old + int(rng.integers(1, 256))) % 256


def _truncation(rng, raw: bytes, prof: Profile) -> Mutation:
    # Half in the header, half in the pixels (anywhere where their offset is unknown).
    pixels = prof.pixel_start or len(raw) - 1
    cut = int(rng.integers(0, pixels) if rng.random() < 0.5 else rng.integers(pixels, len(raw)))
    return Mutation("truncate", f"truncate@{cut}", _truncate(cut))


def _header_flip(rng, raw: bytes, prof: Profile) -> Mutation:
    end = prof.pixel_start or min(len(raw), 2048)
    where = sorted({int(rng.integers(0, end)) for _ in range(int(rng.integers(1, 4)))})
    changes = {w: _new_byte(rng, raw[w]) for w in where}
    detail = ",".join(f"0x{w:x}=0x{v:02x}" for w, v in changes.items())
    return Mutation("flip header", f"flip {detail}", _set_bytes(changes))


def _group_flip(rng, raw: bytes, prof: Profile) -> Mutation:
    e = _pick(rng, prof.group_0028())
    where = int(rng.integers(e.start, e.end))
    value = _new_byte(rng, raw[where])
    detail = f"flip {_tag_name(e.tag)}+{where - e.start}=0x{value:02x}"
    return Mutation("flip 0028", detail, _set_bytes({where: value}))


def _group_removal(rng, raw: bytes, prof: Profile) -> Mutation:
    e = _pick(rng, prof.group_0028())
    if rng.random() < 0.5 and e.end > e.value:  # emptying an empty one changes nothing
        detail, new = f"empty {_tag_name(e.tag)}", _emptied(e)
    else:
        detail, new = f"delete {_tag_name(e.tag)}", b""
    return Mutation("empty or delete 0028", detail, _splice(e.start, e.end, new))


def _vr_change(rng, raw: bytes, prof: Profile) -> Mutation:
    targets = [e for e in prof.elements if e.vr and (e.tag in _VR_TARGETS or e.tag >> 16 == 0x28)]
    e = _pick(rng, targets)
    vr = _pick(rng, [v for v in (_LONG_VRS if e.vr in _LONG_VRS else _SHORT_VRS) if v != e.vr])
    detail = f"vr {_tag_name(e.tag)} {e.vr}->{vr}"
    return Mutation("vr", detail, _splice(e.start + 4, e.start + 6, vr.encode()))


def _syntax_change(rng, raw: bytes, prof: Profile) -> Mutation:
    if prof.reencodable and rng.random() < 0.4:
        syntax = _pick(rng, [uid for uid in _REENCODINGS if uid != prof.syntax])
        return Mutation("syntax", f"reencode {syntax}", reencoded(syntax))
    syntax = _pick(rng, [uid for uid in _SYNTAXES if uid != prof.syntax])
    return Mutation("syntax", f"relabel {syntax}", relabelled(syntax))


_MAKERS = {
    "truncate": (_truncation, lambda p: p.pixels),
    "flip header": (_header_flip, lambda p: p.pixels),
    "flip 0028": (_group_flip, lambda p: bool(p.group_0028())),
    "empty or delete 0028": (_group_removal, lambda p: bool(p.group_0028())),
    "vr": (_vr_change, lambda p: any(e.vr for e in p.group_0028())),
    "syntax": (_syntax_change, lambda p: p.pixels),
}


def cases(seed: int = SEED, counts: dict[str, int] = COUNTS) -> list[Case]:
    """Every shipped file as it is, then ``counts`` seeded mutations (grey-level
    single frames, where daskmri can give an image, three times as likely as other
    files with pixels), then the regressions of issue 24. Deterministic."""
    files = shipped_files()
    raws = {path: path.read_bytes() for path in files}
    profiles = {path: profile(raw) for path, raw in raws.items()}
    found = {case.id: case for case in map(Case, files)}
    rng = np.random.default_rng(seed)
    for kind, count in counts.items():
        make, fits = _MAKERS[kind]
        pool = [path for path in files if fits(profiles[path])]
        weights = np.array([3.0 if profiles[path].grey else 1.0 for path in pool])
        wanted = len(found) + count
        while len(found) < wanted:  # a mutation drawn twice is drawn again
            path = pool[rng.choice(len(pool), p=weights / weights.sum())]
            case = Case(path, make(rng, raws[path], profiles[path]))
            found.setdefault(case.id, case)
    return [*found.values(), *regressions()]


def regressions() -> list[Case]:
    """The defects of issue 24, each as a case, whatever the seed picks."""

    def at(name: str, tag: int) -> Element:
        raw = (DATA_ROOT / name).read_bytes()
        return next(e for e in elements(raw) if e.tag == tag)

    rows = at("test_files/CT_small.dcm", 0x00280010)
    samples = at("test_files/MR_small.dcm", 0x00280002)
    slope = at("test_files/CT_small.dcm", 0x00281053)
    made = [
        ("charset_files/chrArab.dcm", "8-bit OW big endian", reencoded(ExplicitVRBigEndian)),
        (
            "test_files/CT_small.dcm",
            "vr Rows US->DS",
            _splice(rows.start + 4, rows.start + 6, b"DS"),
        ),
        (
            "test_files/MR_small.dcm",
            "delete SamplesPerPixel",
            _splice(samples.start, samples.end, b""),
        ),
        (
            "test_files/CT_small.dcm",
            "empty RescaleSlope",
            _splice(slope.start, slope.end, _emptied(slope)),
        ),
        ("test_files/MR_small.dcm", "relabel 1.2.3.4.5", relabelled("1.2.3.4.5")),
    ]
    return [
        Case(DATA_ROOT / name, Mutation("regression", f"issue 24: {detail}", apply))
        for name, detail, apply in made
    ]


# -- The check ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How daskmri fared on one case: ``outcome`` is a row of the table (IMAGE,
    BOTH_REFUSE, ``"refused by design: ..."`` or STRICTER), ``reason`` daskmri's
    refusal, ``problems`` every way it broke the contract (empty when it kept it)."""

    case: str
    kind: str
    outcome: str
    reason: str
    problems: tuple[str, ...]


def pydicom_image(raw: bytes) -> tuple[np.ndarray | None, str]:
    """pydicom's float32 image of a file, or None and why there is none: it refuses
    the file, or what it gives is not one grey-level frame, which daskmri refuses by
    design."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(raw))
            stored = ds.pixel_array
            image = apply_modality_lut(stored, ds).astype(np.float32)
        except Exception:
            return None, BOTH_REFUSE
        if "PixelData" not in ds:
            return None, "refused by design: float pixel data"
        if image.ndim != 2:
            colour = ds.get("SamplesPerPixel") != 1
            return None, f"refused by design: {'colour' if colour else 'multi-frame'}"
        if ds.get("PhotometricInterpretation") not in GREY_LEVELS:
            return None, "refused by design: not a grey level"
    return image, IMAGE


def pydicom_header(raw: bytes) -> pydicom.Dataset | None:
    """The header pydicom reads (up to the pixels), or None where it cannot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        except Exception:
            return None


def _run(function: Callable, *args) -> tuple[bool, object, list[str]]:
    """(returned, its value or the refusal's reason, broken rules)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return True, function(*args), []
        except DicomError as exc:
            lines = str(exc).splitlines()
            broken = [] if len(lines) == 1 else [f"a {len(lines)}-line message: {exc}"]
            return False, exc.reason, broken
        except Exception as exc:
            return False, "", [f"{function.__name__} raised {type(exc).__name__}: {exc}"]


def identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, float32, the same bits in every pixel (any NaN equals any NaN)."""
    if a.shape != b.shape or a.dtype != np.float32 or b.dtype != np.float32:
        return False
    same = a.view(np.uint32) == b.view(np.uint32)
    return bool(np.all(same | (np.isnan(a) & np.isnan(b))))


def check(case: Case, path: Path) -> Verdict:
    """Run daskmri's readers on the case (written at ``path``) against pydicom."""
    raw = case.data()
    path.write_bytes(raw)
    expected, outcome = pydicom_image(raw)
    read, value, problems = _run(read_slice, path)
    reason = "" if read else str(value)
    if read:
        image = value[0]
        if expected is None:
            problems.append(f"an image where pydicom gives none ({outcome})")
        elif not identical(image, expected):
            problems.append(f"a different image: {_difference(image, expected)}")
        outcome = WRONG if problems else outcome
    elif expected is not None:
        outcome = STRICTER
    header = pydicom_header(raw)
    problems += check_codecs_hint(reason, header)
    problems += check_geometry(path, header, read)
    problems += check_text_tags(path, header)
    kind = "original" if case.mutation is None else case.mutation.kind
    return Verdict(case.id, kind, outcome, reason, tuple(problems))


def _difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{a.shape} {a.dtype} against pydicom's {b.shape} {b.dtype}"
    differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return f"{int(differ.sum())} of {a.size} pixels differ"


def pydicom_geometry(header: pydicom.Dataset | None) -> tuple | None:
    """(Rows, Columns, PixelSpacing) as pydicom reads them; the spacing is two positive
    finite numbers or None. None where pydicom has no integer Rows and Columns."""
    if header is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rows, columns = header.Rows, header.Columns
        except Exception:
            return None
        if not (isinstance(rows, int) and isinstance(columns, int)):
            return None
        try:
            spacing = tuple(float(v) for v in header.get("PixelSpacing") or ())
        except Exception:
            spacing = ()
    if len(spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing):
        return int(rows), int(columns), None
    return int(rows), int(columns), spacing


def check_geometry(path: Path, header: pydicom.Dataset | None, slice_read: bool) -> list[str]:
    """read_dicom_geometry gives pydicom's values, or refuses a slice read_slice refuses."""
    read, value, problems = _run(read_dicom_geometry, path)
    expected = pydicom_geometry(header)
    if read and value != expected:
        problems.append(f"geometry {value}, pydicom's {expected}")
    if slice_read and not read:
        problems.append(f"geometry refuses a slice that read_slice reads ({value})")
    return problems


def pydicom_plane_text(header: pydicom.Dataset) -> dict[str, str] | None:
    """PLANE_TAGS as pydicom gives them, as text (values joined by backslashes, as the
    RTSTRUCT reader makes them); None where pydicom raises on one of them."""
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for name in PLANE_TAGS.values():
                value = header.get(name)
                if value is not None:
                    multi = isinstance(value, MultiValue)
                    found[name] = "\\".join(map(str, value)) if multi else str(value)
        except Exception:
            return None
    return found


def plane_values(found: dict[str, str]) -> dict[str, object]:
    """What the RTSTRUCT plane assignment reads from the text: the UID as text, every
    DS value item by item as a number (its text where it is no number)."""

    def item(text: str) -> str:
        try:
            return float(text).hex()
        except ValueError:
            return text.strip()

    values: dict[str, object] = {}
    for name in PLANE_TAGS.values():
        text = found.get(name) or ""
        if name == "SOPInstanceUID":
            values[name] = text
        else:
            values[name] = tuple(item(v) for v in text.split("\\")) if text.strip() else ()
    return values


def check_text_tags(path: Path, header: pydicom.Dataset | None) -> list[str]:
    """read_text_tags gives None (asks pydicom) or pydicom's values."""
    read, value, problems = _run(read_text_tags, path, PLANE_TAGS)
    if not read or value is None:
        return problems
    theirs = None if header is None else pydicom_plane_text(header)
    if theirs is None:
        problems.append(f"plane tags {value} where pydicom reads none")
    elif plane_values(value) != plane_values(theirs):
        problems.append(f"plane tags {value}, pydicom's {theirs}")
    return problems


def check_codecs_hint(reason: str, header: pydicom.Dataset | None) -> list[str]:
    """A refusal names the codecs extra only where a decoder pydicom has is missing."""
    if "daskmri[codecs]" not in reason:
        return []
    syntax = None if header is None else header.file_meta.get("TransferSyntaxUID")
    try:
        if not get_decoder(syntax).is_available:
            return []
    except Exception:  # not a transfer syntax, or one no decoder reads: no extra helps
        pass
    return [f"names the codecs extra, yet no missing decoder would read {syntax}: {reason}"]
