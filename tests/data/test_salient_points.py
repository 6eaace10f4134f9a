"""Tests for tmrjax/data/salient_points.py: the detector on synthetic marks, and jeong2017's ranking rule by hand."""

import jax
import numpy as np
import pytest
from PIL import Image, ImageDraw
from tmrjax.kernels.candidates import cluster_points, hull_masks

import tmrjax.data.sources
from tmrjax.data.images import FailureLog, prepare
from tmrjax.data.salient_points import (
    N_MAX,
    SIGMAS,
    batch_points,
    detect_points,
    padded_points,
    salient_points,
    to_cells,
)
from tmrjax.data.sources import ArraySource, iter_batches

S = 224


def _mark() -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """A white 224 px square with a black disc, a navy square and five black bars; with each shape's box
    (row0, col0, row1, col1), inclusive."""
    im = Image.new("RGB", (S, S), "white")
    draw = ImageDraw.Draw(im)
    shapes = {"disc": (34, 24, 45, 35), "square": (30, 150, 60, 180)}
    draw.ellipse([24, 34, 35, 45], fill="black")
    draw.rectangle([150, 30, 180, 60], fill="navy")
    for i in range(5):
        draw.rectangle([40 + 14 * i, 160, 45 + 14 * i, 200], fill="black")
        shapes[f"bar{i}"] = (160, 40 + 14 * i, 200, 45 + 14 * i)
    return np.asarray(im), shapes


def _chessboard_distance_to_ink(ink: np.ndarray, points: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(ink)
    p = np.floor(points).astype(int)
    return np.array([np.min(np.maximum(abs(rows - r), abs(cols - c))) for r, c in p])


# ----------------------------------------------------------------------------------------------------------
# detect_points


def test_points_lie_on_every_shape_and_none_in_flat_white():
    image, shapes = _mark()
    points, responses = detect_points(image)
    assert points.dtype == np.float32 and responses.dtype == np.float32
    assert points.shape == (len(responses), 2) and len(points) > 20
    assert np.all(responses > 0) and np.all(np.diff(responses) <= 0)  # strongest first
    assert np.all((points % 1) == 0.5)  # pixel centres
    for name, (r0, c0, r1, c1) in shapes.items():
        near = ((points[:, 0] >= r0 - 2) & (points[:, 0] <= r1 + 3)
                & (points[:, 1] >= c0 - 2) & (points[:, 1] <= c1 + 3))
        assert near.any(), f"no point on the {name}"
    # a box filter reaches 1.5 sigma: nothing responds farther from the ink than that
    reach = 3 * max(SIGMAS) // 2
    assert _chessboard_distance_to_ink(image[..., 0] < 128, points).max() <= reach
    assert len(np.unique(points, axis=0)) == len(points)  # each position once


def test_a_small_disc_is_found_at_its_centre():
    im = Image.new("L", (96, 96), 255)
    ImageDraw.Draw(im).ellipse([42, 42, 53, 53], fill=0)  # pixels 42..53: centre at (48, 48)
    points, _ = detect_points(np.asarray(im))
    assert np.hypot(*(points[0] - 48)) < 1.0


def test_flat_images_have_no_points_even_at_the_borders():
    for value in (0, 255, 128):
        for image in (np.full((S, S, 3), value, np.uint8), np.full((50, 70), value, np.uint8)):
            points, responses = detect_points(image)
            assert points.shape == (0, 2) and responses.shape == (0,)
            assert points.dtype == np.float32 and responses.dtype == np.float32


def test_rows_and_columns_are_not_swapped_and_grey_equals_rgb():
    image, _ = _mark()
    points, responses = detect_points(image)
    swapped, swapped_responses = detect_points(np.ascontiguousarray(image.transpose(1, 0, 2)))
    assert {tuple(p) for p in points[:, ::-1].tolist()} == {tuple(p) for p in swapped.tolist()}
    np.testing.assert_allclose(np.sort(responses), np.sort(swapped_responses), rtol=1e-6)
    grey = image.min(axis=2)
    grey_points, _ = detect_points(grey)
    rgb_points, _ = detect_points(np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(grey_points, rgb_points)


def test_a_tiny_image_works():
    image = np.full((9, 12), 255, np.uint8)
    image[3:6, 4:8] = 0
    points, _ = detect_points(image)
    assert points.ndim == 2 and np.all((points >= 0) & (points <= [9, 12]))


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((0, 8), np.uint8), "non-empty"),
        ([[0, 1], [2, 3]], "uint8"),
    ],
)
def test_bad_images_are_refused(image, match):
    with pytest.raises(ValueError, match=match):
        detect_points(image)


def test_non_integer_scales_are_refused():
    # hessian_matrix_det's box lobes do not cancel for them: a flat image would respond
    with pytest.raises(ValueError, match="integers"):
        detect_points(np.full((16, 16), 255, np.uint8), sigmas=(2, 2.5))
    with pytest.raises(ValueError, match="threshold"):
        detect_points(np.full((16, 16), 255, np.uint8), threshold=0)


def test_detecting_on_the_prepared_square_follows_the_padding():
    """A wide image is centred in its white square by `prepare`: its disc moves down by the padding."""
    im = Image.new("RGB", (200, 100), "white")  # (width, height)
    ImageDraw.Draw(im).ellipse([144, 44, 155, 55], fill="black")  # centre (row 50, column 150)
    square = prepare(np.asarray(im), 200)  # 50 rows of white above
    points, _ = detect_points(square)
    assert np.hypot(points[0, 0] - 100, points[0, 1] - 150) < 1.0


# ----------------------------------------------------------------------------------------------------------
# to_cells and salient_points, by hand


def test_pixel_positions_map_to_cells_by_scaling():
    points = np.array([[0, 0], [8, 4], [31.5, 2.25], [32, 32]], np.float32)
    cells = to_cells(points, 32, (4, 8))  # a (y, x) pixel of a 32 px square -> (y * 4 / 32, x * 8 / 32)
    np.testing.assert_allclose(cells, [[0, 0], [1, 1], [3.9375, 0.5625], [4, 8]])
    assert cells.dtype == np.float32


def _alpha() -> np.ndarray:
    """A 4 x 4 map (8 px image, 2 x 2 pixels a cell) with distinct values, and a zero."""
    return np.array([[0.1, 0.9, 0.3, 0.0],
                     [0.5, 0.2, 0.8, 0.4],
                     [0.6, 0.7, 0.15, 0.05],
                     [0.25, 0.35, 0.45, 0.55]], np.float32)


def test_detected_points_are_ranked_by_the_alpha_of_their_cell():
    # pixel positions in the 8 px square; the cell is floor(p / 2)
    image_points = np.array([
        [1.5, 2.5],  # cell (0, 1): 0.9
        [4.5, 0.5],  # cell (2, 0): 0.6
        [2.5, 5.5],  # cell (1, 2): 0.8
        [0.5, 0.5],  # cell (0, 0): 0.1
        [1.0, 3.9],  # cell (0, 1): 0.9, a tie: keeps its place after the first
        [8.0, 8.0],  # on the far corner: the last cell (3, 3): 0.55
    ], np.float32)
    points, valid = salient_points(image_points, _alpha(), 8, count=8, n_max=5, n_min=2)
    expected = np.array([[1.5, 2.5], [1.0, 3.9], [2.5, 5.5], [4.5, 0.5], [8.0, 8.0]]) / 2  # n_max = 5 largest
    assert points.shape == (8, 2) and points.dtype == np.float32 and valid.dtype == bool
    np.testing.assert_allclose(points[:5], expected)
    assert valid.tolist() == [True] * 5 + [False] * 3
    np.testing.assert_array_equal(points[5:], 0)


def test_points_where_alpha_is_zero_are_dropped():
    image_points = np.array([[0.5, 6.5], [0.5, 2.5], [1.5, 7.5]], np.float32)  # cells (0, 3), (0, 1), (0, 3)
    points, valid = salient_points(image_points, _alpha(), 8, count=4, n_max=4, n_min=1)
    np.testing.assert_allclose(points[valid], [[0.25, 1.25]])
    assert valid.tolist() == [True, False, False, False]


def test_too_few_points_fall_back_to_the_cells_of_largest_alpha():
    image_points = np.array([[1.5, 2.5], [4.5, 0.5]], np.float32)  # 2 < n_min = 3
    points, valid = salient_points(image_points, _alpha(), 8, count=5, n_max=4, n_min=3)
    np.testing.assert_allclose(points[:3], [[0.5, 1.5], [1.5, 2.5], [2.5, 1.5]])  # 0.9, 0.8, 0.7: cell centres
    assert valid.tolist() == [True, True, True, False, False]


def test_the_fallback_on_a_small_map_takes_every_positive_cell_in_order():
    alpha = np.array([[0.5, 0.0], [0.5, 0.7]], np.float32)  # a tie in row-major order, a zero left out
    points, valid = salient_points(np.zeros((0, 2), np.float32), alpha, 64, count=6)  # n_min = 300 > 4 cells
    np.testing.assert_allclose(points[valid], [[1.5, 1.5], [0.5, 0.5], [1.5, 0.5]])
    assert valid.sum() == 3 and points.shape == (6, 2)


def test_an_all_zero_map_gives_no_point():
    points, valid = salient_points(np.array([[3.0, 3.0]], np.float32), np.zeros((4, 4), np.float32), 8,
                                   count=3, n_max=2, n_min=1)
    assert not valid.any() and points.shape == (3, 2)


def test_count_truncates_keeping_the_strongest():
    image_points = np.array([[4.5, 0.5], [1.5, 2.5], [2.5, 5.5]], np.float32)  # 0.6, 0.9, 0.8
    points, valid = salient_points(image_points, _alpha(), 8, count=2, n_max=3, n_min=1)
    np.testing.assert_allclose(points, [[0.75, 1.25], [1.25, 2.75]])
    assert valid.all()


def test_an_all_white_image_gives_the_fallback_and_static_shapes():
    alpha = np.random.default_rng(0).random((7, 7)).astype(np.float32) + 0.01
    white, _ = detect_points(np.full((S, S, 3), 255, np.uint8))
    points, valid = salient_points(white, alpha, S, count=64)
    order = np.argsort(-alpha.ravel())
    np.testing.assert_allclose(points[:49], np.stack([order // 7, order % 7], -1) + 0.5)
    assert valid.tolist() == [True] * 49 + [False] * 15

    image, _ = _mark()
    detected, _ = detect_points(image)
    alpha = np.ones((28, 28), np.float32)
    mark_points, mark_valid = salient_points(detected, alpha, S, count=64, n_min=10)
    kept = min(len(detected), 64)
    assert 10 <= len(detected) and mark_points.shape == points.shape and mark_valid.shape == valid.shape
    assert mark_valid.tolist() == [True] * kept + [False] * (64 - kept)
    np.testing.assert_allclose(mark_points[:kept], to_cells(detected[:kept], S, (28, 28)))  # all tie: detector order


def test_the_points_feed_the_candidate_region_kernels():
    image, _ = _mark()
    detected, _ = detect_points(image)
    alpha = np.linspace(0.01, 1, 14 * 14, dtype=np.float32).reshape(14, 14)
    points, valid = salient_points(detected, alpha, S, count=512, n_min=20)
    labels = jax.jit(cluster_points, static_argnums=2)(points, valid, 3)
    masks, region_valid = jax.jit(hull_masks, static_argnums=(3, 4, 5))(points, valid, labels, 3, 14, 14)
    assert masks.shape == (8, 14, 14) and bool(region_valid[-1])
    assert np.all((points[valid] >= 0) & (points[valid] <= 14))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.zeros((3,)), np.ones((2, 2)), 8), {}, r"\(P, 2\)"),
        ((np.array([[np.nan, 1.0]]), np.ones((2, 2)), 8), {}, "finite"),
        ((np.array([[9.0, 1.0]]), np.ones((2, 2)), 8), {}, "8-pixel square"),
        ((np.array([[-0.5, 1.0]]), np.ones((2, 2)), 8), {}, "8-pixel square"),
        ((np.zeros((0, 2)), np.ones((2, 2)), 0), {}, "image_size"),
        ((np.zeros((0, 2)), np.ones((2, 2, 1)), 8), {}, r"\(h, w\)"),
        ((np.zeros((0, 2)), np.array([[1.0, np.inf]]), 8), {}, "finite"),
        ((np.zeros((0, 2)), np.ones((2, 2)), 8), {"count": 0}, "count"),
        ((np.zeros((0, 2)), np.ones((2, 2)), 8), {"n_min": 5, "n_max": 4}, "n_min"),
    ],
)
def test_bad_arguments_are_refused(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        salient_points(*args, **{"count": 4, **kwargs})


# ----------------------------------------------------------------------------------------------------------
# Points in the load workers: padded to N_MAX per image, in Batch.points


def test_padded_points_keep_the_strongest_detected_points_in_fixed_shapes():
    image, _ = _mark()
    detected, _ = detect_points(image)
    positions, valid = padded_points(image)
    assert positions.shape == (N_MAX, 2) and positions.dtype == np.float32 and valid.dtype == bool
    assert valid.tolist() == [True] * len(detected) + [False] * (N_MAX - len(detected))
    np.testing.assert_array_equal(positions[:len(detected)], detected)
    np.testing.assert_array_equal(positions[len(detected):], 0)
    few, few_valid = padded_points(image, count=5)  # more points than room: the strongest five
    np.testing.assert_array_equal(few, detected[:5])
    assert few_valid.all()
    both, both_valid = batch_points(np.stack([image, np.full_like(image, 255)]), count=5)
    assert both.shape == (2, 5, 2) and both_valid.tolist() == [[True] * 5, [False] * 5]  # white: none
    assert batch_points(np.zeros((0, 8, 8, 3), np.uint8))[0].shape == (0, N_MAX, 2)


def test_iter_batches_detects_salient_points_on_the_squares_the_backbone_sees():
    image, _ = _mark()
    wide = np.asarray(Image.fromarray(image).resize((S, S // 2)))
    source = ArraySource([image, wide, image[:100]])
    batches = list(iter_batches(source, (64, S), 2, FailureLog(), point_sizes=(S,)))
    assert [b.ids for b in batches] == [["0", "1"], ["2"]]
    for batch, rows in zip(batches, ([image, wide], [image[:100]])):
        assert list(batch.points) == [S]
        positions, valid = batch.points[S]
        assert positions.shape == (2, N_MAX, 2) and valid.shape == (2, N_MAX)
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(batch.images[1][i], prepare(row, S))
            expected, expected_valid = padded_points(prepare(row, S))
            np.testing.assert_array_equal(positions[i], expected)
            np.testing.assert_array_equal(valid[i], expected_valid)
            assert expected_valid.any()
    assert not batches[1].points[S][1][1].any()  # the padding row has no points
    assert next(iter(iter_batches(source, (64,), 2, FailureLog()))).points == {}  # not asked for: none


def test_iter_batches_reports_an_image_whose_points_cannot_be_found_and_goes_on(monkeypatch):
    image, _ = _mark()
    original = tmrjax.data.sources.padded_points

    def fails_on_black(square):
        if square.min() == 0 and square.max() == 0:
            raise MemoryError("detector out of memory")
        return original(square)

    monkeypatch.setattr(tmrjax.data.sources, "padded_points", fails_on_black)
    failures = FailureLog()
    black = np.zeros((32, 32, 3), np.uint8)
    batches = list(iter_batches(ArraySource([image, black, image]), (32,), 4, failures, point_sizes=(32,)))
    assert [b.ids for b in batches] == [["0", "2"]]
    assert failures.failures == [("1", "unexpected MemoryError: detector out of memory")]


def test_iter_batches_refuses_point_sizes_outside_its_sizes():
    with pytest.raises(ValueError, match=r"point_sizes \(96,\) must be among the sizes \(64,\)"):
        iter_batches(ArraySource([]), (64,), 2, FailureLog(), point_sizes=(96,))
