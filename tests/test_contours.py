from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskmri import ContourError, Limits, polygon_mask, read_contour, synth
from daskmri.contours import parse_contour

from .conftest import FUZZ_CASES
from .reference import matplotlib_mask, pnpoly_exact, snap

TRIANGLE = "10.5 10.5\n30.25 12\n20 40.75\n"


def write(tmp_path, data: bytes | str, name="c.txt"):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


class TestReadContour:
    def test_reads_points_in_x_y_order(self, tmp_path):
        points = read_contour(write(tmp_path, TRIANGLE))
        np.testing.assert_array_equal(points, [[10.5, 10.5], [30.25, 12.0], [20.0, 40.75]])
        assert points.dtype == np.float64

    @pytest.mark.parametrize(
        "variant",
        [
            TRIANGLE.replace("\n", "\r\n"),
            TRIANGLE.replace(" ", "\t"),
            "\n\n" + TRIANGLE.replace("\n", "\n\n") + "   \n",
            "\ufeff" + TRIANGLE,
            "  " + TRIANGLE.replace("\n", "  \n  "),
        ],
        ids=["crlf", "tabs", "blank-lines", "bom", "spaces"],
    )
    def test_valid_variants_read_the_same(self, tmp_path, variant):
        expected = read_contour(write(tmp_path, TRIANGLE, "plain.txt"))
        np.testing.assert_array_equal(read_contour(write(tmp_path, variant)), expected)

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("1 2\n3 four\n5 6\n", "line 2 is '3 four'"),
            ("1 2\n3 4 5\n5 6\n", "line 2 is '3 4 5'"),
            ("1 2\n3\n5 6\n", "line 2 is '3'"),
            ("", "empty contour"),
            ("\n \r\n\t\n", "empty contour"),
            ("1 2\n3 4\n", "only 2 point(s)"),
            ("1 2\nnan 4\n5 6\n", "non-finite coordinate nan 4"),
            ("1 2\n3 inf\n5 6\n", "non-finite coordinate 3 inf"),
        ],
    )
    def test_bad_text_names_the_problem(self, tmp_path, text, fragment):
        path = write(tmp_path, text)
        with pytest.raises(ContourError) as info:
            read_contour(path)
        assert fragment in info.value.reason
        assert info.value.path == str(path)

    def test_not_utf8(self, tmp_path):
        with pytest.raises(ContourError, match="not UTF-8"):
            read_contour(write(tmp_path, b"1 2\n\xff\xfe 3\n4 5\n"))

    def test_missing_and_directory(self, tmp_path):
        with pytest.raises(ContourError, match="does not exist"):
            read_contour(tmp_path / "nope.txt")
        (tmp_path / "dir.txt").mkdir()
        with pytest.raises(ContourError, match="is a directory"):
            read_contour(tmp_path / "dir.txt")

    def test_outside_the_image(self, tmp_path):
        path = write(tmp_path, "1 2\n3 4\n500 6\n")
        read_contour(path)  # fine without a shape
        with pytest.raises(ContourError, match=r"point 3 \(x=500, y=6\) lies outside the 48x64"):
            read_contour(path, shape=(48, 64))
        # One pixel beyond the edge is still accepted: outlines touch the border.
        read_contour(write(tmp_path, "-1 -1\n64 0\n0 48\n", "edge.txt"), shape=(48, 64))

    def test_limits(self, tmp_path):
        path = write(tmp_path, "1 1\n" * 50)
        with pytest.raises(ContourError, match=r"over Limits\.max_contour_points=10"):
            read_contour(path, limits=Limits(max_contour_points=10))
        with pytest.raises(ContourError, match=r"over Limits\.max_file_bytes=16"):
            read_contour(path, limits=Limits(max_file_bytes=16))


class TestPolygonMask:
    def test_square_by_hand(self):
        square = np.array([[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]])
        expected = np.zeros((4, 5), bool)
        expected[1:3, 1:3] = True
        np.testing.assert_array_equal(polygon_mask(square, (4, 5)), expected)

    def test_x_is_column_y_is_row(self):
        # A tall thin box: x in (2, 4), y in (1, 9) -> columns 3, rows 2..8.
        box = np.array([[2, 1], [4, 1], [4, 9], [2, 9]], dtype=float) + 0.5
        mask = polygon_mask(box, (12, 8))
        rows, cols = np.nonzero(mask)
        assert set(cols) == {3, 4} and set(rows) == set(range(2, 10))

    def test_even_odd_rule_on_a_self_intersecting_star(self):
        angles = np.deg2rad(np.arange(5) * 144 - 90)
        star = np.column_stack([20 + 15 * np.cos(angles), 20 + 15 * np.sin(angles)])
        mask = polygon_mask(star, (40, 40))
        np.testing.assert_array_equal(mask, pnpoly_exact(star, (40, 40)))
        assert not mask[20, 20]  # the centre pentagon is covered twice: outside

    @pytest.mark.parametrize("seed", range(12))
    def test_matches_exact_reference_on_random_polygons(self, seed):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(3, 25))
        points = rng.uniform(-3, 23, size=(n, 2))
        if seed % 3 == 0:
            points = np.round(points)  # vertices and edges on pixel positions
        elif seed % 3 == 1:
            points = np.round(points * 2) / 2
        # The rule rasterises the snapped polygon (coordinates on a 1/1024 px grid).
        np.testing.assert_array_equal(
            polygon_mask(points, (20, 17)), pnpoly_exact(snap(points), (20, 17))
        )

    def test_degenerate_inputs(self):
        assert not polygon_mask(np.zeros((0, 2)), (5, 5)).any()
        assert not polygon_mask(np.array([[1, 1], [3, 3]]), (5, 5)).any()
        assert not polygon_mask(np.array([[1, 1], [3, 1], [5, 1]]), (5, 5)).any()
        off = np.array([[100, 100], [120, 100], [110, 130]], dtype=float)
        assert not polygon_mask(off, (5, 5)).any()
        assert polygon_mask(np.array([[1, 1], [3, 1], [2, 3]]), (0, 0)).shape == (0, 0)

    def test_polygon_larger_than_the_image_fills_it(self):
        big = np.array([[-10, -10], [50, -10], [50, 50], [-10, 50]], dtype=float)
        assert polygon_mask(big, (6, 7)).all()

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.floats(-5, 40, allow_nan=False, allow_infinity=False),
                st.floats(-5, 40, allow_nan=False, allow_infinity=False),
            ),
            min_size=3,
            max_size=30,
        )
    )
    def test_agrees_with_matplotlib_away_from_edges(self, vertices):
        pytest.importorskip("matplotlib")
        points = snap(np.array(vertices))
        shape = (36, 36)
        ours = polygon_mask(points, shape)
        theirs = matplotlib_mask(points, shape)
        # Points on or within float noise of an edge may go either way in matplotlib;
        # everywhere else the two must agree exactly.
        rows, cols = np.nonzero(ours != theirs)
        for r, c in zip(rows, cols, strict=True):
            assert _distance_to_boundary(points, c, r) < 1e-6


def _distance_to_boundary(points, x, y):
    a, b = points, np.roll(points, -1, axis=0)
    ab = b - a
    length2 = (ab**2).sum(axis=1)
    t = np.clip(
        ((np.array([x, y]) - a) * ab).sum(axis=1) / np.where(length2 == 0, 1, length2), 0, 1
    )
    nearest = a + t[:, None] * ab
    return float(np.min(np.hypot(nearest[:, 0] - x, nearest[:, 1] - y)))


def _check_parse(text: str) -> None:
    try:
        points = parse_contour(text, shape=(32, 32))
    except ContourError:
        return
    assert points.shape[1] == 2 and len(points) >= 3 and np.isfinite(points).all()
    # Kept points lie within the one-pixel margin the parser allows around the image.
    assert (points >= -1).all() and (points <= 33).all()


@settings(max_examples=50 * FUZZ_CASES, deadline=None)
@given(st.text(max_size=200))
def test_parse_contour_never_raises_anything_but_contour_error(text):
    _check_parse(text)


# Text shaped like contour files: lines of two numbers (any floats, NaN and inf
# included, in several spellings), with stray words, blanks, tabs and CRLF.
_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-50, 100).map(lambda v: f"{v:.2f}"),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["nan", "-inf", "1e400", "0x10", "1_000", "", "--1", "1e"]),
)
_line = st.one_of(
    st.tuples(_number, _number, st.sampled_from([" ", "\t", "  ", " \t"])).map(
        lambda t: f"{t[0]}{t[2]}{t[1]}"
    ),
    st.text(max_size=12),
    st.just(""),
)


@settings(max_examples=50 * FUZZ_CASES, deadline=None)
@given(st.lists(_line, max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
def test_parse_contour_on_contour_shaped_text(lines, end):
    _check_parse(end.join(lines))


def test_synthetic_polygons_are_unambiguous_and_exact():
    inner, outer = synth.slice_contours(seed=3, patient=1, instance=6, shape=(40, 52))
    for points in (inner, outer):
        np.testing.assert_array_equal(
            polygon_mask(points, (40, 52)), pnpoly_exact(points, (40, 52))
        )


# Vertices on the pixel grid, on half and quarter pixels (edges and vertices exactly
# on pixel positions, where the half-open rule decides), off the grid, and outside
# the image: the cases where a rewrite of the rasteriser's arithmetic could flip a
# pixel.
_coordinate = st.one_of(
    st.integers(-3, 14).map(float),
    st.integers(-12, 56).map(lambda v: v / 4),
    st.floats(-3, 14, allow_nan=False),
)


@settings(max_examples=100 * FUZZ_CASES, deadline=None)
@given(
    st.lists(st.tuples(_coordinate, _coordinate), min_size=3, max_size=12),
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
)
def test_polygon_mask_is_the_exact_even_odd_rule(vertices, shape):
    points = np.array(vertices)
    np.testing.assert_array_equal(polygon_mask(points, shape), pnpoly_exact(snap(points), shape))
