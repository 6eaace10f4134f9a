"""EfficientNet-Lite building blocks against independent references (the converted weights are
checked against timm in tests/convert/test_efficientnet_lite.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmrjax.models import build_backbone
from tmrjax.models.efficientnet_lite import (
    HEAD_CHANNELS,
    STEM_CHANNELS,
    TAPS,
    depthwise_conv,
    round_channels,
    same_padding,
    stages,
)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(8, 3, 1), (9, 3, 2), (10, 5, 2), (7, 5, 1), (13, 3, 2)])
def test_depthwise_conv_equals_grouped_convolution(size, kernel, stride):
    rng = np.random.default_rng(size * kernel * stride)
    x = jnp.asarray(rng.standard_normal((2, size, size + 3, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, 6)), jnp.float32)
    reference = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6,
                                             precision=jax.lax.Precision.HIGHEST)
    got = depthwise_conv(x, w, stride)
    assert got.shape == reference.shape == (2, -(-size // stride), -(-(size + 3) // stride), 6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference), atol=1e-5)


def test_same_padding_is_tensorflows():
    """TF: total = max((ceil(n/s) - 1) s + k - n, 0), the extra row after."""
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(14, 5, 1) == (2, 2)


def test_channel_rounding_and_stage_depths():
    assert [round_channels(c * 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [s[4] for s in stages("efficientnet_lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[4] for s in stages("efficientnet_lite1")] == [1, 3, 3, 4, 4, 5, 1]  # first and last kept
    assert [s[4] for s in stages("efficientnet_lite2")] == [1, 3, 3, 4, 4, 5, 1]
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        stages("efficientnet_lite9")


def test_taps_strides_and_channels():
    module = build_backbone("efficientnet_lite2", "efficientnet-lite", TAPS)
    shapes = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], jnp.zeros((1, 64, 64, 3)))
    assert {t: shapes[t].shape for t in TAPS} == {
        "stem": (1, 32, 32, STEM_CHANNELS), "stage1": (1, 32, 32, 16), "stage2": (1, 16, 16, 24),
        "stage3": (1, 8, 8, 48), "stage4": (1, 4, 4, 88), "stage5": (1, 4, 4, 120), "stage6": (1, 2, 2, 208),
        "stage7": (1, 2, 2, 352), "head": (1, 2, 2, HEAD_CHANNELS)}


def test_stops_at_the_deepest_tap():
    module = build_backbone("efficientnet_lite0", "efficientnet-lite", ("stage3",))
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert "block4" in variables["params"]  # stage3 of Lite0 is blocks 3-4
    assert "block5" not in variables["params"] and "head_conv" not in variables["params"]
    with pytest.raises(ValueError, match="no weight layout 'torchvision'"):
        build_backbone("efficientnet_lite0", "torchvision", ("head",))
