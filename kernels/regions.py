"""R-MAC region sampling (Tolias et al. ICLR 2016; tursun2021 Sec. 3, "region sampling").

Boxes are static: they are computed with numpy from the static feature-map size
at trace time, so every kernel that uses them keeps static shapes. A box is
``[y0, x0, y1, x1)`` in feature-map cells, half-open, rows first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

# Tolias et al.: neighbouring regions of one level should overlap by about 40%,
# and the longer side of a non-square map gets 1 to 6 extra regions per level.
_OVERLAP = 0.4
_LONG_SIDE_STEPS = (2, 3, 4, 5, 6, 7)


def _check_positive_int(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"tmrjax.kernels.regions.{where}: {name} must be an int >= 1, got {value!r}"
        )


def _extra_long_side_regions(h: int, w: int) -> int:
    """Extra regions per level along the longer side (0 for a square map).

    The number of steps is the one whose overlap between consecutive full-height
    regions is closest to 40%. The arithmetic is float32, as in cirtorch, so that
    near-ties (e.g. a 3x11 map) are broken exactly as cirtorch breaks them.
    """
    if h == w:
        return 0
    short, long = min(h, w), max(h, w)
    steps = np.asarray(_LONG_SIDE_STEPS, dtype=np.float32)
    stride = (long - short) / (steps - 1)
    overlap = (short**2 - short * stride) / short**2
    return int(np.argmin(np.abs(overlap - _OVERLAP))) + 1


def _window_starts(length: int, width: int, count: int) -> np.ndarray:
    """First cell of ``count`` windows of ``width`` spread evenly over ``length``.

    Mirrors cirtorch: the centres ``floor(half + k * stride)`` are computed in
    float32 and shifted back by ``half = floor(width / 2 - 1)``, so the boxes match
    cirtorch cell for cell (exact rational arithmetic differs on some sizes).
    """
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    stride = np.float32((length - width) / (count - 1))
    half = math.floor(width / 2 - 1)
    centres = np.floor(np.float32(half) + np.arange(count, dtype=np.float32) * stride)
    return centres.astype(np.int64) - half


def rmac_regions(
    h: int, w: int, levels: int = 3, include_full_map: bool = False
) -> np.ndarray:
    """The R-MAC region grid of an ``h x w`` feature map (tursun2021 Sec. 3, Eq. 2).

    Level ``l = 1..levels`` holds square regions of width ``floor(2 min(h, w) / (l + 1))``
    on an ``l x l`` grid with about 40% overlap; the longer side of a non-square map
    gets extra regions per level chosen by the overlap criterion (steps 2..7). This is
    the grid of Tolias et al. as cirtorch's ``roipool`` computes it, cell for cell.
    Levels whose width floors to 0 are skipped. A square map has 14 regions for
    ``levels=3`` and 30 for ``levels=4`` (tursun2021: "S=4, N=30").

    ``include_full_map`` prepends the whole map ``[0, 0, h, w)`` as region 0: cirtorch
    does this, tursun2021 does not (its N=30 excludes it).

    Returns:
      (R, 4) int32 boxes ``[y0, x0, y1, x1)``, half-open, in cells; within one level
      ordered row-major (top-to-bottom, then left-to-right).
    """
    _check_positive_int("rmac_regions", "h", h)
    _check_positive_int("rmac_regions", "w", w)
    _check_positive_int("rmac_regions", "levels", levels)
    h, w, levels = int(h), int(w), int(levels)

    extra = _extra_long_side_regions(h, w)
    extra_h = extra if h > w else 0
    extra_w = extra if w > h else 0

    boxes = [np.array([[0, 0, h, w]])] if include_full_map else []
    for level in range(1, levels + 1):
        width = 2 * min(h, w) // (level + 1)
        if width == 0:
            continue
        ys = _window_starts(h, width, level + extra_h)
        xs = _window_starts(w, width, level + extra_w)
        y0, x0 = (a.reshape(-1) for a in np.meshgrid(ys, xs, indexing="ij"))
        boxes.append(np.stack([y0, x0, y0 + width, x0 + width], axis=1))
    return np.concatenate(boxes, axis=0).astype(np.int32)


def _check_boxes(boxes: np.ndarray, h: int, w: int, where: str) -> np.ndarray:
    """Validate static boxes ``[y0, x0, y1, x1)`` against an ``h x w`` map.

    Returns them as an (R, 4) int64 numpy array; raises where they are traced,
    malformed, empty or outside the map.
    """
    prefix = f"tmrjax.kernels.regions.{where}"
    if isinstance(boxes, jax.core.Tracer):
        raise TypeError(
            f"{prefix}: boxes must be static (a numpy array from rmac_regions), "
            "got a traced array; close over them instead of passing them to jit"
        )
    _check_positive_int(where, "h", h)
    _check_positive_int(where, "w", w)
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise ValueError(f"{prefix}: boxes must have shape (R >= 1, 4), got {boxes.shape}")
    if not np.issubdtype(boxes.dtype, np.integer):
        raise ValueError(f"{prefix}: boxes must be integers, got dtype {boxes.dtype}")
    boxes = boxes.astype(np.int64)
    y0, x0, y1, x1 = boxes.T
    bad = (y0 < 0) | (x0 < 0) | (y1 > h) | (x1 > w) | (y1 <= y0) | (x1 <= x0)
    if bad.any():
        raise ValueError(
            f"{prefix}: box {boxes[np.argmax(bad)].tolist()} is empty or outside the "
            f"{h}x{w} map; expected 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}"
        )
    return boxes


def _interval_masks(starts: np.ndarray, stops: np.ndarray, length: int) -> np.ndarray:
    cells = np.arange(length)
    return (cells >= starts[:, None]) & (cells < stops[:, None])


def region_masks(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """0/1 masks of the boxes on an ``h x w`` map, for sum/mean pooling as a matmul.

    Returns:
      (R, H, W) float32, 1 inside box r.
    """
    boxes = _check_boxes(boxes, h, w, "region_masks")
    rows = _interval_masks(boxes[:, 0], boxes[:, 2], h)
    cols = _interval_masks(boxes[:, 1], boxes[:, 3], w)
    return (rows[:, :, None] & cols[:, None, :]).astype(np.float32)


class RegionIntervals(NamedTuple):
    """Boxes as products of a row interval and a column interval (for separable max).

    Attributes:
      rows: (Ur, H) bool, the distinct row intervals.
      cols: (Uc, W) bool, the distinct column intervals.
      row_index: (R,) int32, box r covers rows ``rows[row_index[r]]``.
      col_index: (R,) int32, box r covers columns ``cols[col_index[r]]``.
    """

    rows: np.ndarray
    cols: np.ndarray
    row_index: np.ndarray
    col_index: np.ndarray


def region_intervals(boxes: np.ndarray, h: int, w: int) -> RegionIntervals:
    """Split boxes into distinct row and column intervals; ``mask[r] = rows[i] x cols[j]``."""
    boxes = _check_boxes(boxes, h, w, "region_intervals")
    row_spans, row_index = np.unique(boxes[:, [0, 2]], axis=0, return_inverse=True)
    col_spans, col_index = np.unique(boxes[:, [1, 3]], axis=0, return_inverse=True)
    return RegionIntervals(
        rows=_interval_masks(row_spans[:, 0], row_spans[:, 1], h),
        cols=_interval_masks(col_spans[:, 0], col_spans[:, 1], w),
        row_index=row_index.reshape(-1).astype(np.int32),
        col_index=col_index.reshape(-1).astype(np.int32),
    )
