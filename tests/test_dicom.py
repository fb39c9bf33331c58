from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from daskmri import DicomError, Limits, read_dicom, synth
from daskmri.dicom import PLANE_TAGS, read_dicom_geometry, read_dicom_shape, read_text_tags

from . import differential
from .hostile import rewrite, with_syntax


def pydicom_pixels(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


@pytest.fixture
def slice_path(synth_root):
    # Patient 2 carries a rescale slope and intercept.
    return synth_root / "dicoms" / "SYN0002" / "5.dcm"


class TestPixels:
    def test_synthetic_pixels_are_exactly_the_ground_truth(self, synth_root):
        from .conftest import SHAPE

        for patient, (patient_id, _) in enumerate(synth.patient_ids(2), start=1):
            stored = synth.slice_pixels(seed=7, patient=patient, instance=5, shape=SHAPE)
            rescale = synth.patient_rescale(patient)
            expected = stored.astype(np.float64)
            if rescale is not None:
                expected = expected * rescale[0] + rescale[1]
            image = read_dicom(synth_root / "dicoms" / patient_id / "5.dcm")
            assert image.dtype == np.float32 and image.shape == SHAPE
            np.testing.assert_array_equal(image, expected.astype(np.float32))

    def test_equals_pydicom_on_every_real_file(self, real_root):
        paths = sorted((real_root / "dicoms").glob("*/*.dcm"))
        assert len(paths) == 700
        for path in paths:
            np.testing.assert_array_equal(read_dicom(path), pydicom_pixels(path), err_msg=str(path))

    def test_real_files_raise_no_warnings(self, real_root):
        paths = sorted((real_root / "dicoms").glob("*/*.dcm"))[:50]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for path in paths:
                read_dicom(path)
        assert [str(w.message) for w in caught] == []

    @pytest.mark.parametrize(
        "name",
        [
            "MR_small.dcm",
            "MR_small_implicit.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_RLE.dcm",
            "MR_small_padded.dcm",
        ],
    )
    def test_pydicom_samples_decode_to_the_same_pixels(self, name):
        path = get_testdata_file(name)
        reference = pydicom_pixels(get_testdata_file("MR_small.dcm"))
        np.testing.assert_array_equal(read_dicom(path), pydicom_pixels(path))
        np.testing.assert_array_equal(read_dicom(path), reference)

    @pytest.mark.parametrize(
        "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
    )
    def test_other_transfer_syntaxes_of_a_synthetic_slice(self, slice_path, tmp_path, syntax):
        with_syntax(slice_path, tmp_path / "x.dcm", syntax)
        assert pydicom.dcmread(tmp_path / "x.dcm").file_meta.TransferSyntaxUID == syntax
        expected = pydicom_pixels(slice_path)
        np.testing.assert_array_equal(pydicom_pixels(tmp_path / "x.dcm"), expected)
        np.testing.assert_array_equal(read_dicom(tmp_path / "x.dcm"), expected)

    @pytest.mark.parametrize(
        ("bits", "stored", "signed"), [(16, 12, 1), (16, 12, 0), (8, 8, 0), (32, 32, 1)]
    )
    def test_bit_depths_match_pydicom(self, slice_path, tmp_path, bits, stored, signed):
        rng = np.random.default_rng(0)
        dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        info = np.iinfo(dtype)
        # Random high bits too: the unused ones must be ignored, as pydicom does.
        raw = rng.integers(info.min, info.max, size=(48, 64), dtype=dtype, endpoint=True)
        out = rewrite(
            slice_path,
            tmp_path / "x.dcm",
            BitsAllocated=bits,
            BitsStored=stored,
            HighBit=stored - 1,
            PixelRepresentation=signed,
            PixelData=raw.tobytes(),
        )
        np.testing.assert_array_equal(read_dicom(out), pydicom_pixels(out))

    def test_rescale_rounds_like_pydicom(self, slice_path, tmp_path):
        out = rewrite(slice_path, tmp_path / "x.dcm", RescaleSlope=0.1, RescaleIntercept=-0.3)
        np.testing.assert_array_equal(read_dicom(out), pydicom_pixels(out))

    def test_shape_without_pixels(self, slice_path):
        assert read_dicom_shape(slice_path) == (48, 64)


class TestFailures:
    def test_truncated(self, slice_path, tmp_path):
        data = slice_path.read_bytes()
        (tmp_path / "t.dcm").write_bytes(data[: len(data) - 1000])
        with pytest.raises(DicomError, match="truncated"):
            read_dicom(tmp_path / "t.dcm")
        (tmp_path / "t2.dcm").write_bytes(data[:200])
        with pytest.raises(DicomError, match=r"truncated|no pixel description"):
            read_dicom(tmp_path / "t2.dcm")

    def test_empty(self, tmp_path):
        (tmp_path / "e.dcm").write_bytes(b"")
        with pytest.raises(DicomError, match="empty file"):
            read_dicom(tmp_path / "e.dcm")

    def test_not_dicom(self, tmp_path):
        (tmp_path / "n.dcm").write_text("patient_id,original_id\n" * 20)
        with pytest.raises(DicomError, match="not a DICOM file"):
            read_dicom(tmp_path / "n.dcm")

    def test_no_pixel_data(self, slice_path, tmp_path):
        out = rewrite(slice_path, tmp_path / "x.dcm", PixelData=None)
        with pytest.raises(DicomError, match="no PixelData"):
            read_dicom(out)

    def test_rows_columns_disagree_with_the_bytes(self, slice_path, tmp_path):
        bigger = rewrite(slice_path, tmp_path / "big.dcm", Rows=96)
        with pytest.raises(DicomError, match="PixelData holds 6144 bytes but 96x64x16-bit needs"):
            read_dicom(bigger)
        smaller = rewrite(slice_path, tmp_path / "small.dcm", Rows=24)
        with pytest.raises(DicomError, match="Rows/Columns disagree"):
            read_dicom(smaller)

    def test_huge_declared_size_is_refused_before_allocation(self, slice_path, tmp_path):
        out = rewrite(slice_path, tmp_path / "x.dcm", Rows=65535, Columns=65535)
        tracemalloc.start()
        try:
            with pytest.raises(DicomError, match=r"65535x65535 = 4294836225 pixels is over"):
                read_dicom(out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 5 * 2**20  # 65535**2 float32 would be 16 GiB

    def test_file_size_limit(self, slice_path):
        with pytest.raises(DicomError, match=r"over Limits\.max_file_bytes=1000"):
            read_dicom(slice_path, limits=Limits(max_file_bytes=1000))

    def test_directory_and_missing(self, tmp_path):
        (tmp_path / "d.dcm").mkdir()
        with pytest.raises(DicomError, match="is a directory"):
            read_dicom(tmp_path / "d.dcm")
        with pytest.raises(DicomError, match="does not exist"):
            read_dicom(tmp_path / "missing.dcm")

    @pytest.mark.parametrize("value", ["MONCHROME2", " MONOCHROME2", "PALETTE COLOR", None])
    def test_photometric_interpretation_must_be_grey(self, slice_path, tmp_path, value):
        out = rewrite(slice_path, tmp_path / "p.dcm", PhotometricInterpretation=value)
        with pytest.raises(DicomError, match="PhotometricInterpretation"):
            read_dicom(out)
        # MONOCHROME1 is a grey level too: its pixels are read as stored, as pydicom does.
        out = rewrite(slice_path, tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1")
        np.testing.assert_array_equal(read_dicom(out), pydicom_pixels(out))

    def test_colour_and_multiframe_are_refused(self, slice_path, tmp_path):
        out = rewrite(slice_path, tmp_path / "c.dcm", SamplesPerPixel=3)
        with pytest.raises(DicomError, match="colour image"):
            read_dicom(out)
        out = rewrite(slice_path, tmp_path / "m.dcm", NumberOfFrames=2)
        with pytest.raises(DicomError, match="multi-frame"):
            read_dicom(out)


def regression(detail: str, tmp_path) -> str:
    """The file of one of issue 24's defects (tests/differential.py makes them)."""
    case = next(c for c in differential.regressions() if c.mutation.detail.endswith(detail))
    path = tmp_path / "regression.dcm"
    path.write_bytes(case.data())
    return str(path)


class TestWherePydicomRefuses:
    """Files pydicom refuses: daskmri refuses them too, with a one-line DicomError
    that says what is wrong (issue 24: some gave an image or a bare ValueError)."""

    @pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on the bad IS
    @pytest.mark.parametrize("reader", [read_dicom, read_dicom_geometry])
    def test_a_pixel_tag_that_is_no_whole_number(self, tmp_path, reader):
        with pytest.raises(DicomError, match=r"damaged NumberOfFrames '1A': not a whole number"):
            reader(get_testdata_file("badVR.dcm"))
        # Rows written with VR DS: pydicom reads its two binary bytes as text.
        path = regression("vr Rows US->DS", tmp_path)
        assert differential.pydicom_image(Path(path).read_bytes())[0] is None
        with pytest.raises(DicomError, match=r"Rows is '\\x80', not a whole number"):
            reader(path)

    def test_no_samples_per_pixel(self, tmp_path):
        path = regression("delete SamplesPerPixel", tmp_path)
        assert differential.pydicom_image(Path(path).read_bytes())[0] is None
        with pytest.raises(DicomError, match="missing SamplesPerPixel"):
            read_dicom(path)

    def test_an_empty_rescale_slope(self, tmp_path):
        path = regression("empty RescaleSlope", tmp_path)
        assert differential.pydicom_image(Path(path).read_bytes())[0] is None
        with pytest.raises(DicomError, match="damaged modality rescale") as info:
            read_dicom(path)
        assert "\n" not in str(info.value)

    def test_an_unknown_transfer_syntax_is_not_blamed_on_a_missing_decoder(self, tmp_path):
        with pytest.raises(DicomError, match=r"transfer syntax \('1\.2\.3\.4\.5'\)") as info:
            read_dicom(regression("relabel 1.2.3.4.5", tmp_path))
        assert "is not one DICOM defines" in info.value.reason
        assert "codecs" not in info.value.reason

    def test_the_cause_is_kept(self, tmp_path):
        with pytest.raises(DicomError) as info:
            read_dicom(regression("empty RescaleSlope", tmp_path))
        assert isinstance(info.value.__cause__, TypeError)  # pydicom's, for debugging


class TestBigEndian:
    def test_8_bit_pixels_stored_as_byte_swapped_ow_words(self, tmp_path):
        """8-bit pixels in explicit VR big endian as OW: each 16-bit word is swapped on
        disk (PS3.5 8.1.1); read as bytes, neighbouring pixels came out swapped."""
        source = differential.DATA_ROOT / "charset_files" / "chrArab.dcm"
        stored = pydicom.dcmread(source).pixel_array
        assert stored.dtype == np.uint8 and len(np.unique(stored)) > 2
        path = regression("8-bit OW big endian", tmp_path)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
        assert ds["PixelData"].VR == "OW" and ds.PixelData != stored.tobytes()
        np.testing.assert_array_equal(read_dicom(path), pydicom_pixels(path))
        np.testing.assert_array_equal(read_dicom(path), stored.astype(np.float32))


MR_SMALL_FAMILY = [
    "MR_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]

DCMTK = shutil.which("dcmcjpeg") and shutil.which("dcmdjpeg")
needs_dcmtk = pytest.mark.skipif(
    not DCMTK, reason="dcmtk (dcmcjpeg/dcmdjpeg) is not installed: apt-get install dcmtk"
)

# Run in a fresh interpreter where every decoder plugin fails to import: the
# state of a machine without the codecs extra (and without Pillow).
WITHOUT_DECODERS = """
import sys
for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "PIL", "gdcm", "jpeg_ls", "pyjpegls"):
    sys.modules[name] = None
from daskmri import read_dicom, DicomError
try:
    read_dicom(sys.argv[1])
except DicomError as exc:
    print(exc.reason)
else:
    print("decoded")
"""


class TestCodecs:
    """Compressed and unusual encodings, with the codecs extra (installed by CI)."""

    @pytest.mark.parametrize("name", MR_SMALL_FAMILY)
    def test_mr_small_family_decodes_to_the_same_pixels(self, name):
        pytest.importorskip(
            "libjpeg", reason="needs the codecs extra: pip install 'daskmri[codecs]'"
        )
        pytest.importorskip(
            "openjpeg", reason="needs the codecs extra: pip install 'daskmri[codecs]'"
        )
        reference = pydicom_pixels(get_testdata_file("MR_small.dcm"))
        image = read_dicom(get_testdata_file(name))
        assert image.dtype == np.float32
        np.testing.assert_array_equal(image, reference)

    def test_deflated(self):
        path = get_testdata_file("image_dfl.dcm")
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        np.testing.assert_array_equal(read_dicom(path), pydicom_pixels(path))

    @needs_dcmtk
    @pytest.mark.parametrize(
        ("option", "syntax"),
        [
            ("--encode-lossless-sv1", "1.2.840.10008.1.2.4.70"),
            ("--encode-lossless", "1.2.840.10008.1.2.4.57"),
        ],
    )
    def test_jpeg_lossless_written_by_dcmtk(self, tmp_path, option, syntax):
        pytest.importorskip(
            "libjpeg", reason="needs the codecs extra: pip install 'daskmri[codecs]'"
        )
        out = tmp_path / "jpeg.dcm"
        subprocess.run(
            ["dcmcjpeg", option, get_testdata_file("MR_small.dcm"), str(out)],
            check=True,
            timeout=60,
        )
        assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == syntax
        reference = pydicom_pixels(get_testdata_file("MR_small.dcm"))
        np.testing.assert_array_equal(read_dicom(out), reference)

    @needs_dcmtk
    def test_lossy_jpeg_matches_dcmtk(self, tmp_path):
        """12-bit JPEG Extended: compared with dcmtk's own decoder, an independent one."""
        pytest.importorskip(
            "libjpeg", reason="needs the codecs extra: pip install 'daskmri[codecs]'"
        )
        source = get_testdata_file("JPGExtended.dcm")
        plain = tmp_path / "plain.dcm"
        subprocess.run(["dcmdjpeg", source, str(plain)], check=True, timeout=60)
        ours, theirs = read_dicom(source), pydicom_pixels(plain)
        # Lossy JPEG leaves the inverse DCT's rounding to the decoder (T.81 only bounds
        # its error), so libjpeg and dcmtk may differ by one grey level here and there;
        # a wrong decode (bit depth, byte order, colour) would differ everywhere.
        difference = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
        assert difference.max() <= 1
        assert (difference > 0).mean() < 0.02

    @pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
    def test_without_the_extra_the_reason_names_it(self, name):
        result = subprocess.run(
            [sys.executable, "-c", WITHOUT_DECODERS, get_testdata_file(name)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        reason = result.stdout.strip()
        assert "no decoder is available" in reason, result.stderr
        assert "pip install 'daskmri[codecs]'" in reason

    def test_a_decoder_that_fails_is_not_reported_as_missing(self):
        pytest.importorskip(
            "libjpeg", reason="needs the codecs extra: pip install 'daskmri[codecs]'"
        )
        # pydicom's sample whose JPEG stream its decoders reject.
        with pytest.raises(DicomError, match="cannot decode pixel data") as info:
            read_dicom(get_testdata_file("JPEG-lossy.dcm"))
        assert "codecs" not in info.value.reason


class TestHeaderWalk:
    """The fast header walk must agree with pydicom, or step aside for it."""

    def test_real_files_take_the_fast_path(self, real_root):
        from daskmri.dicom import _fast_header

        for path in sorted((real_root / "dicoms").glob("*/*.dcm"))[::7]:
            header, syntax = _fast_header(path.read_bytes())
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert syntax == ds.file_meta.TransferSyntaxUID
            for key in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
                assert header[key] == ds[key].value, (path, key)

    @pytest.mark.parametrize(
        ("name", "fast"),
        [
            ("MR_small.dcm", True),
            ("MR_small_implicit.dcm", True),
            ("MR_small_padded.dcm", True),
            ("MR_small_bigendian.dcm", False),
            ("MR_small_RLE.dcm", False),
            ("MR_truncated.dcm", False),
        ],
    )
    def test_which_files_it_takes(self, name, fast):
        from daskmri.dicom import _fast_header

        with open(get_testdata_file(name), "rb") as fh:
            assert (_fast_header(fh.read()) is not None) is fast

    def test_rescale_values_are_read(self, slice_path):
        from daskmri.dicom import _fast_header

        header, _ = _fast_header(slice_path.read_bytes())
        assert (header.RescaleSlope, header.RescaleIntercept) == (0.5, -1024.0)

    def test_it_walks_on_past_the_pixels(self, slice_path, tmp_path):
        """pydicom reads the whole file, so what follows the pixels is walked too."""
        from daskmri.dicom import _fast_header

        data = slice_path.read_bytes()
        # Trailing padding (FFFC,FFFC) whose declared length runs past the end.
        tail = b"\xfc\xff\xfc\xffOB\0\0" + struct.pack("<I", 100) + b"x" * 10
        assert _fast_header(data) is not None and _fast_header(data + tail) is None
        (tmp_path / "t.dcm").write_bytes(data + tail)
        np.testing.assert_array_equal(read_dicom(tmp_path / "t.dcm"), pydicom_pixels(slice_path))

    @pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")  # pydicom's
    def test_a_dataset_in_another_vr_than_its_syntax_says_is_left_to_pydicom(
        self, slice_path, tmp_path
    ):
        """pydicom reads the VR encoding the first element shows, not the declared one;
        the walk does not try to read one as the other."""
        from daskmri.dicom import _dataset_start

        data = differential.relabelled(ImplicitVRLittleEndian)(slice_path.read_bytes())
        assert _dataset_start(slice_path.read_bytes()) is not None
        assert _dataset_start(data) is None
        (tmp_path / "x.dcm").write_bytes(data)
        np.testing.assert_array_equal(read_dicom(tmp_path / "x.dcm"), pydicom_pixels(slice_path))

    def test_text_tags_are_pydicoms(self):
        path = get_testdata_file("CT_small.dcm")
        found = read_text_tags(path, PLANE_TAGS)
        assert found is not None and len(found) == len(PLANE_TAGS)
        theirs = differential.pydicom_plane_text(pydicom.dcmread(path, stop_before_pixels=True))
        assert found == theirs  # on this file, the very same text

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            (b"\x20\x00\x32\x00DS", b"\x20\x00\x32\x00FD"),  # pydicom reads binary doubles
            (b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x00AT"),  # pydicom reads tags
            (b'DS"\x00-158', b'DS"\x00\x00158'),  # a DS that is no number: pydicom raises
            # An item that str.strip() would clean but float() refuses: pydicom keeps it
            # as text, and the plane assignment cannot use it.
            (b"DS6\x001.000000\\", b"DS6\x001.00000\x1c\\"),
        ],
        ids=["DS as FD", "UI as AT", "DS led by NUL", "DS item ending in 0x1c"],
    )
    def test_text_tags_it_cannot_read_as_pydicom_does_are_left_to_it(self, tmp_path, old, new):
        data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        assert data.count(old) == 1
        (tmp_path / "x.dcm").write_bytes(data.replace(old, new))
        assert read_text_tags(tmp_path / "x.dcm", PLANE_TAGS) is None

    def test_text_tags_of_unknown_vr_are_a_programming_error(self, slice_path):
        with pytest.raises(ValueError, match=r"only the tags of TEXT_TAG_VRS; not \['0x100010'\]"):
            read_text_tags(slice_path, {0x00100010: "PatientName"})

    @pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on the damaged files
    def test_damaged_files_give_the_same_outcome_as_pydicom(
        self, slice_path, tmp_path, monkeypatch
    ):
        """Differential fuzz: truncations and byte flips, fast walk vs pydicom alone."""
        import daskmri.dicom as dicom

        original = slice_path.read_bytes()
        rng = np.random.default_rng(1)
        variants = [original[:cut] for cut in rng.integers(0, len(original), 40)]
        for _ in range(260):
            data = bytearray(original)
            for _ in range(int(rng.integers(1, 4))):
                # Mostly the header, where a flip changes lengths, tags, VRs and values.
                where = int(rng.integers(0, 1200 if rng.random() < 0.9 else len(data)))
                data[where] = int(rng.integers(0, 256))
            variants.append(bytes(data))

        def outcome(path):
            try:
                return ("ok", read_dicom(path).tobytes())
            except DicomError as exc:
                return ("error", exc.reason)

        fast_header = dicom._fast_header
        for k, data in enumerate(variants):
            path = tmp_path / f"{k}.dcm"
            path.write_bytes(data)
            fast = outcome(path)
            monkeypatch.setattr(dicom, "_fast_header", lambda raw: None)
            slow = outcome(path)
            monkeypatch.setattr(dicom, "_fast_header", fast_header)
            assert fast == slow, (k, fast[0], slow[0], fast[1][:200], slow[1][:200])
