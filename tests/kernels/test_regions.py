"""kernels/regions.py against cirtorch's R-MAC grid, hand-worked boxes and slow masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tmrjax.kernels import region_intervals, region_masks, rmac_regions


def reference_rmac_regions(h, w, levels, include_full_map=False):
    """cirtorch ``roipool`` region loop, step by step, in float32 scalars like torch."""
    f32 = np.float32
    short = min(h, w)
    best, chosen = None, 0
    for index, step in enumerate([2, 3, 4, 5, 6, 7]):
        stride = f32(max(h, w) - short) / (f32(step) - f32(1))
        overlap = (f32(short * short) - f32(short) * stride) / f32(short * short)
        distance = abs(overlap - f32(0.4))
        if best is None or distance < best:
            best, chosen = distance, index
    extra_w = chosen + 1 if h < w else 0
    extra_h = chosen + 1 if h > w else 0

    boxes = [[0, 0, h, w]] if include_full_map else []
    for level in range(1, levels + 1):
        width = math.floor(2 * short / (level + 1))
        half = math.floor(width / 2 - 1)
        starts = {}
        for axis, length, count in (("y", h, level + extra_h), ("x", w, level + extra_w)):
            stride = 0.0 if count == 1 else (length - width) / (count - 1)
            starts[axis] = [
                int(np.floor(f32(half) + f32(k) * f32(stride))) - half for k in range(count)
            ]
        for y in starts["y"]:
            for x in starts["x"]:
                if width == 0:
                    continue
                boxes.append([y, x, y + width, x + width])
    return np.array(boxes).reshape(-1, 4)


def test_rmac_regions_3x3_boxes_worked_by_hand():
    expected = [
        [0, 0, 3, 3],
        [0, 0, 2, 2], [0, 1, 2, 3], [1, 0, 3, 2], [1, 1, 3, 3],
        [0, 0, 1, 1], [0, 1, 1, 2], [0, 2, 1, 3],
        [1, 0, 2, 1], [1, 1, 2, 2], [1, 2, 2, 3],
        [2, 0, 3, 1], [2, 1, 3, 2], [2, 2, 3, 3],
    ]  # fmt: skip
    np.testing.assert_array_equal(rmac_regions(3, 3, levels=3), expected)


def test_rmac_regions_4x4_boxes_worked_by_hand():
    # level 1: width 4; level 2: width floor(8/3) = 2, stride 2; level 3: width 2, stride 1.
    level3 = [[y, x, y + 2, x + 2] for y in (0, 1, 2) for x in (0, 1, 2)]
    expected = [[0, 0, 4, 4], [0, 0, 2, 2], [0, 2, 2, 4], [2, 0, 4, 2], [2, 2, 4, 4]] + level3
    np.testing.assert_array_equal(rmac_regions(4, 4, levels=3), expected)


def test_rmac_regions_5x8_boxes_worked_by_hand():
    # Overlap 1 - b/5 for steps 2..7 (b = 3/(step-1)) is closest to 0.4 at step 2: one
    # extra column per level. Level 1: width 5, x0 in {0, 3}. Level 2: width 3,
    # y0 in {0, 2}, x0 in floor(0, 2.5, 5). Level 3: width 2, y0 in floor(0, 1.5, 3),
    # x0 in {0, 2, 4, 6}.
    expected = [[0, 0, 5, 5], [0, 3, 5, 8]]
    expected += [[y, x, y + 3, x + 3] for y in (0, 2) for x in (0, 2, 5)]
    expected += [[y, x, y + 2, x + 2] for y in (0, 1, 3) for x in (0, 2, 4, 6)]
    boxes = rmac_regions(5, 8, levels=3)
    np.testing.assert_array_equal(boxes, expected)
    # The transposed map gets the transposed grid (same boxes, rows and columns swapped).
    transposed = rmac_regions(8, 5, levels=3)[:, [1, 0, 3, 2]]
    assert sorted(map(tuple, transposed)) == sorted(map(tuple, boxes))


def test_rmac_regions_3x11_breaks_overlap_tie_like_cirtorch_float32():
    # Steps 5 and 6 are exactly tied (|1/3 - 0.4| = |7/15 - 0.4|); float32 arithmetic,
    # as in cirtorch, picks step 6: six level-1 regions of width 3, x0 = floor(k * 1.6).
    level1 = rmac_regions(3, 11, levels=1)
    np.testing.assert_array_equal(level1[:, 1], [0, 1, 3, 4, 6, 8])
    assert np.all(level1[:, [0, 2]] == [0, 3]) and np.all(level1[:, 3] - level1[:, 1] == 3)


def test_rmac_regions_square_counts_match_tursun2021():
    for size in (7, 20, 40):
        assert rmac_regions(size, size, levels=4).shape == (30, 4)  # "S=4, N=30"
        assert rmac_regions(size, size, levels=3).shape == (14, 4)
    assert rmac_regions(20, 20, levels=4, include_full_map=True).shape == (31, 4)


def test_rmac_regions_skips_zero_width_levels():
    # 2x2, level 4: width floor(4/5) = 0; 1x1: only level 1 has width 1.
    assert rmac_regions(2, 2, levels=4).shape == (14, 4)
    np.testing.assert_array_equal(rmac_regions(1, 1, levels=3), [[0, 0, 1, 1]])
    # 1x6: level 2 is skipped; level 1 puts 1 + 6 unit regions at x0 = floor(k * 5/6)
    # shifted as cirtorch does, which repeats x0 = 0 (kept, as in cirtorch).
    boxes = rmac_regions(1, 6, levels=2)
    np.testing.assert_array_equal(boxes[:, 1], [0, 0, 1, 2, 3, 4, 5])
    assert np.all(boxes[:, 2] - boxes[:, 0] == 1) and np.all(boxes[:, 3] - boxes[:, 1] == 1)


def test_rmac_regions_full_map_is_prepended():
    boxes = rmac_regions(7, 11, levels=3, include_full_map=True)
    np.testing.assert_array_equal(boxes[0], [0, 0, 7, 11])
    np.testing.assert_array_equal(boxes[1:], rmac_regions(7, 11, levels=3))


def test_rmac_regions_match_cirtorch_loop_on_all_small_maps():
    # Levels come in order, so levels=5 also checks every smaller `levels`.
    for h in range(1, 41):
        for w in range(1, 41):
            got = rmac_regions(h, w, levels=5)
            np.testing.assert_array_equal(
                got, reference_rmac_regions(h, w, 5), err_msg=f"{h}x{w}"
            )
            assert got.dtype == np.int32
            assert np.all(got[:, 2] <= h) and np.all(got[:, 3] <= w) and np.all(got >= 0)
    for h, w in ((20, 30), (30, 20), (14, 14), (10, 40), (64, 23)):
        np.testing.assert_array_equal(
            rmac_regions(h, w, 4, include_full_map=True),
            reference_rmac_regions(h, w, 4, include_full_map=True),
        )


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 5), "h must be an int >= 1, got 0"),
        ((5, -2), "w must be an int >= 1, got -2"),
        ((5, 5, 0), "levels must be an int >= 1, got 0"),
        ((5.5, 5), "h must be an int >= 1, got 5.5"),
    ],
)
def test_rmac_regions_rejects_bad_sizes_naming_the_value(args, message):
    with pytest.raises(ValueError, match=message):
        rmac_regions(*args)


def test_region_masks_match_pixel_loop_on_non_square_map():
    h, w = 7, 11
    boxes = rmac_regions(h, w, levels=3, include_full_map=True)
    expected = np.zeros((len(boxes), h, w), np.float32)
    for r, (y0, x0, y1, x1) in enumerate(boxes):
        for i in range(h):
            for j in range(w):
                expected[r, i, j] = float(y0 <= i < y1 and x0 <= j < x1)
    masks = region_masks(boxes, h, w)
    assert masks.dtype == np.float32 and masks.shape == (len(boxes), h, w)
    np.testing.assert_array_equal(masks, expected)


def test_region_intervals_rebuild_the_masks_from_distinct_rows_and_columns():
    for h, w in ((13, 5), (20, 20)):
        boxes = rmac_regions(h, w, levels=4)
        intervals = region_intervals(boxes, h, w)
        rebuilt = (
            intervals.rows[intervals.row_index][:, :, None]
            & intervals.cols[intervals.col_index][:, None, :]
        )
        np.testing.assert_array_equal(rebuilt, region_masks(boxes, h, w).astype(bool))
        assert len(np.unique(intervals.rows, axis=0)) == len(intervals.rows)
        assert len(intervals.cols) <= len(boxes)
    assert region_intervals(rmac_regions(20, 20, 4), 20, 20).cols.shape == (10, 20)


def test_region_masks_reject_empty_outside_malformed_and_traced_boxes():
    with pytest.raises(ValueError, match=r"box \[0, 0, 8, 2\] is empty or outside the 7x11"):
        region_masks(np.array([[0, 0, 2, 2], [0, 0, 8, 2]]), 7, 11)
    with pytest.raises(ValueError, match="empty or outside"):
        region_masks(np.array([[1, 1, 1, 3]]), 7, 11)
    with pytest.raises(ValueError, match=r"shape \(R >= 1, 4\), got \(3,\)"):
        region_masks(np.array([0, 0, 2]), 7, 11)
    with pytest.raises(ValueError, match="must be integers"):
        region_masks(np.array([[0.0, 0.0, 2.0, 2.0]]), 7, 11)
    with pytest.raises(TypeError, match="boxes must be static"):
        jax.jit(lambda b: region_masks(b, 7, 11))(jnp.zeros((1, 4), jnp.int32))
