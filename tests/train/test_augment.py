"""tmrjax/train/augment.py against numpy transcriptions of torchvision's formulas, np.rot90,
colorsys and PIL.

Full-pipeline programs take seconds to compile on CPU, so the geometric and flip tests share
one jitted ``apply_params`` (H=48 -> S=32) and pass their parameters as traced arrays.
"""

import colorsys
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tmrjax.train.augment import (
    AugmentConfig,
    AugmentParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_params,
    augment_batch,
    color_jitter,
    gaussian_blur,
    rgb_to_grayscale,
    sample_crop,
    sample_params,
    two_views,
)

H, S = 48, 32
CONFIG = AugmentConfig(output_size=S)
LUMA = np.array([0.299, 0.587, 0.114])

_apply = jax.jit(apply_params, static_argnames="config")


def smooth_image(h, w, seed=0):
    """uint8 (h, w, 3) of a few low-frequency sinusoids: resampling filters barely differ on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = []
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 120 * np.sin(2 * np.pi * (fy * y + fx * x) + phase))
    return np.stack(channels, -1).round().astype(np.uint8)


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def params(crop, flip=False, angle=0.0, jitter=False, factors=(1, 1, 1, 0), order=(0, 1, 2, 3),
           grayscale=False, blur=False, sigma=1.0, invert=False):  # fmt: skip
    return AugmentParams(
        crop=jnp.array(crop, jnp.float32),
        flip=jnp.array(flip),
        angle=jnp.array(angle, jnp.float32),
        jitter=jnp.array(jitter),
        factors=jnp.array(factors, jnp.float32),
        order=jnp.array(order, jnp.int32),
        grayscale=jnp.array(grayscale),
        blur=jnp.array(blur),
        sigma=jnp.array(sigma, jnp.float32),
        invert=jnp.array(invert),
    )


def ref_bilinear_resize(image, size):
    """Half-pixel-centre bilinear resize (torch ``interpolate(align_corners=False)``, no antialias)."""
    img = image.astype(np.float64)
    h, w = img.shape[:2]

    def axis(n_in):
        src = (np.arange(size) + 0.5) * n_in / size - 0.5
        lo = np.clip(np.floor(src).astype(int), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        return lo, hi, src - np.floor(src)

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------- geometry


def test_full_crop_is_a_bilinear_resize():
    """The affine crop of the whole image (scale = ratio = 1), no flip/rotation/colour, is a
    plain 48 -> 32 resize.

    Against the half-pixel bilinear formula to float32 precision. Against PIL's BILINEAR only
    loosely: PIL widens the triangle filter by the 1.5x reduction (antialiasing) and rounds to
    uint8, while the augmentation point-samples; on a smooth image that moves pixels by a few
    grey levels at most.
    """
    smooth, rough = smooth_image(H, H, 0), random_image(H, H, 1)
    views = {}
    for name, image in (("smooth", smooth), ("rough", rough)):
        views[name] = np.asarray(_apply(image, params(crop=(0, 0, H, H)), CONFIG))
        np.testing.assert_allclose(views[name], ref_bilinear_resize(image, S), atol=2e-3)
    pil = np.asarray(Image.fromarray(smooth).resize((S, S), Image.BILINEAR), np.float64)
    difference = np.abs(views["smooth"] - pil)
    assert difference.mean() < 1.0 and difference.max() < 6.0, (difference.mean(), difference.max())


def test_invert_is_255_minus_the_warped_view_before_the_colour_ops():
    """Inversion comes right after the geometry: the white fill becomes black, and jitter and
    blur then act on the inverted view (blur and grayscale commute with 255 - x; jitter does not)."""
    image = random_image(H, H, 3)
    geometry = {"crop": (3, 5, 40, 36), "angle": 20.0}
    plain = np.asarray(_apply(image, params(**geometry), CONFIG))
    inverted = np.asarray(_apply(image, params(**geometry, invert=True), CONFIG))
    np.testing.assert_allclose(inverted, 255.0 - plain, atol=1e-4)
    jitter = {"jitter": True, "factors": (1.3, 1.0, 1.0, 0.0)}  # brightness x 1.3, then clip
    jittered = np.asarray(_apply(image, params(**geometry, **jitter, invert=True), CONFIG))
    np.testing.assert_allclose(jittered, np.clip(1.3 * (255.0 - plain), 0, 255), atol=1e-3)


def test_flip_mirrors_the_whole_view():
    """Folding the flip into the affine map equals MoCo v2's flip-last, colour and blur included."""
    image = random_image(H, H, 2)
    common = {"crop": (3, 5, 40, 36), "angle": 20.0, "jitter": True, "blur": True, "sigma": 1.3,
              "factors": (1.2, 0.7, 1.3, 0.07), "order": (2, 3, 0, 1)}  # fmt: skip
    plain = np.asarray(_apply(image, params(**common, flip=False), CONFIG))
    flipped = np.asarray(_apply(image, params(**common, flip=True), CONFIG))
    np.testing.assert_allclose(flipped, plain[:, ::-1], atol=2e-3)


@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (0.0, 0)])
def test_rotation_by_90_is_rot90(angle, k):
    """Positive angles turn the content counter-clockwise on screen, as ``np.rot90(k=1)``.

    A 32-pixel crop at an integer offset sampled at 32 x 32 hits pixel centres exactly, so the
    only error is float32 sin/cos (cos 90 deg ~ -4e-8).
    """
    image = random_image(H, H, 3)
    out = np.asarray(_apply(image, params(crop=(8, 8, S, S), angle=angle), CONFIG))
    np.testing.assert_allclose(out, np.rot90(image[8:40, 8:40], k=k), atol=1e-2)


def test_rotation_fills_uncovered_corners_with_white():
    image = np.zeros((H, H, 3), np.uint8)
    out = np.asarray(_apply(image, params(crop=(0, 0, H, H), angle=45.0), CONFIG))
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        np.testing.assert_array_equal(corner, [255.0, 255.0, 255.0])
    np.testing.assert_allclose(out[S // 2 - 4 : S // 2 + 4, S // 2 - 4 : S // 2 + 4], 0.0, atol=1e-3)
    # Along the rotated edge, samples straddling the border blend black and white.
    assert ((out > 0) & (out < 255)).any()


def ref_crop(uniforms, height, width, scale, ratio):
    """torchvision ``RandomResizedCrop.get_params`` line by line, fed the given uniforms."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for u_scale, u_ratio, u_top, u_left in uniforms.T.astype(np.float64):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_sampling_follows_torchvision():
    config = AugmentConfig(output_size=160)
    uniforms = np.random.default_rng(0).random((4000, 4, config.crop_attempts), dtype=np.float32)
    boxes = np.asarray(jax.jit(jax.vmap(lambda u: sample_crop(u, 224, 224, config)))(uniforms))
    top, left, h, w = boxes.T

    expected = np.array([ref_crop(u, 224, 224, config.crop_scale, config.crop_ratio) for u in uniforms])
    same = (boxes == expected).all(axis=1)
    assert same.mean() > 0.995, same.mean()  # float32 vs float64 may round a boundary case apart
    assert np.abs(boxes - expected).max() <= 1

    np.testing.assert_array_equal(boxes, np.round(boxes))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    # Area fraction in [0.5, 1] and aspect in [3/4, 4/3], up to rounding w and h to integers.
    fraction, aspect = h * w / 224**2, w / h
    assert fraction.min() >= 0.5 - 2 / 224 and fraction.max() <= 1.0
    assert aspect.min() >= 0.75 * (1 - 1 / 150) and aspect.max() <= 4 / 3 * (1 + 1 / 150)
    # ... and they span those ranges, log-uniform aspect centred on 1.
    assert fraction.min() < 0.51 and fraction.max() > 0.98
    assert aspect.min() < 0.76 and aspect.max() > 1.32
    assert abs(np.log(aspect).mean()) < 0.01


@pytest.mark.parametrize(
    "height, width, scale, ratio, expected",
    [
        (H, H, (1.0, 1.0), (1.0, 1.0), (0, 0, H, H)),  # scale = ratio = 1: the whole image
        (40, 100, (1.0, 1.0), (3 / 4, 4 / 3), (0, 23, 40, 53)),  # never fits: centre, ratio 4/3
        (100, 40, (1.0, 1.0), (3 / 4, 4 / 3), (23, 0, 53, 40)),  # never fits: centre, ratio 3/4
    ],
)
def test_crop_of_whole_image_and_fallback(height, width, scale, ratio, expected):
    """scale = 1 never fits a 2.5:1 image with ratio in [3/4, 4/3]: torchvision's centre fallback."""
    config = AugmentConfig(crop_scale=scale, crop_ratio=ratio)
    uniforms = np.random.default_rng(1).random((4, config.crop_attempts), dtype=np.float32)
    box = jax.jit(sample_crop, static_argnums=(1, 2, 3))(jnp.asarray(uniforms), height, width, config)
    np.testing.assert_array_equal(box, expected)
    assert ref_crop(uniforms, height, width, config.crop_scale, config.crop_ratio) == expected


# --------------------------------------------------------------------------- colour


def ref_luma(x):
    return x @ LUMA


def ref_blend(x, other, factor):
    return np.clip(factor * x + (1 - factor) * other, 0, 255)


def ref_brightness(x, f):
    return ref_blend(x, 0.0, f)


def ref_contrast(x, f):
    return ref_blend(x, ref_luma(x).mean(), f)


def ref_saturation(x, f):
    return ref_blend(x, ref_luma(x)[..., None], f)


def ref_hue(x, shift):
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*(x[index] / 255.0))
        out[index] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255.0
    return out


def colour_test_image():
    """Random colours plus greys, black, white, primaries and ties for the HSV branches."""
    x = np.random.default_rng(4).uniform(0, 255, (6, 6, 3))
    x[0, :6] = [[0, 0, 0], [255, 255, 255], [90, 90, 90], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    x[1, :4] = [[200, 200, 10], [10, 200, 200], [200, 10, 200], [120, 40, 120]]
    return x


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
@pytest.mark.parametrize(
    "ours, ref",
    [(adjust_brightness, ref_brightness), (adjust_contrast, ref_contrast), (adjust_saturation, ref_saturation)],
)
def test_blend_ops_match_torchvision_formulas(ours, ref, factor):
    x = colour_test_image()
    np.testing.assert_allclose(jax.jit(ours)(jnp.asarray(x, jnp.float32), factor), ref(x, factor), atol=2e-3)


@pytest.mark.parametrize("shift", [-0.1, -0.03, 0.0, 0.05, 0.1, 0.5])
def test_hue_matches_colorsys(shift):
    x = colour_test_image()
    out = jax.jit(adjust_hue)(jnp.asarray(x, jnp.float32), shift)
    np.testing.assert_allclose(out, ref_hue(x, shift), atol=2e-3)


def test_grayscale_is_itu_r_601_2_luma_on_three_channels():
    x = colour_test_image()
    out = np.asarray(jax.jit(rgb_to_grayscale)(jnp.asarray(x, jnp.float32)))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, np.repeat(ref_luma(x)[..., None], 3, -1), atol=2e-3)


def test_color_jitter_applies_the_ops_in_the_given_order():
    x = colour_test_image()
    factors = (1.3, 0.6, 1.4, 0.08)
    jitter = jax.jit(color_jitter)
    refs = [lambda y: ref_brightness(y, factors[0]), lambda y: ref_contrast(y, factors[1]),
            lambda y: ref_saturation(y, factors[2]), lambda y: ref_hue(y, factors[3])]  # fmt: skip
    outputs = []
    for order in itertools.permutations(range(4)):
        expected = x
        for op in order:
            expected = refs[op](expected)
        out = np.asarray(jitter(jnp.asarray(x, jnp.float32), jnp.array(factors), jnp.array(order)))
        np.testing.assert_allclose(out, expected, atol=5e-3, err_msg=f"order {order}")
        outputs.append(out)
    assert len({o.tobytes() for o in outputs}) > 12  # the order matters


# --------------------------------------------------------------------------- blur


def ref_gaussian_blur(x, sigma, size):
    """Separable Gaussian with reflect padding, one tap at a time."""
    taps = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    r = size // 2
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(kernel[t] * np.take(padded, np.arange(t, t + n), axis=axis) for t in range(size))
    return x


def test_blur_kernel_is_about_ten_percent_of_the_output_and_odd():
    assert AugmentConfig().blur_kernel_size == 17  # S = 160 (hu2024)
    assert AugmentConfig(output_size=224).blur_kernel_size == 23  # SimCLR's 224 -> 23


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_matches_numpy_separable_convolution(sigma):
    x = random_image(S, S + 5, 5).astype(np.float64)
    blur = jax.jit(gaussian_blur, static_argnames="kernel_size")
    out = np.asarray(blur(jnp.asarray(x, jnp.float32), sigma, kernel_size=17))
    np.testing.assert_allclose(out, ref_gaussian_blur(x, sigma, 17), atol=2e-3)
    white = np.asarray(blur(jnp.full((S, S, 3), 255.0), sigma, kernel_size=17))
    np.testing.assert_allclose(white, 255.0, atol=1e-3)


# --------------------------------------------------------------------------- whole views


def test_sampled_parameters_have_the_configured_probabilities_and_ranges():
    n = 2000
    keys = jax.random.split(jax.random.key(7), n)
    p = jax.jit(jax.vmap(lambda k: sample_params(k, 224, 224, AugmentConfig())))(keys)
    p = jax.tree.map(np.asarray, p)
    rotated = p.angle != 0
    for drawn, probability in [(p.flip, 0.5), (rotated, 0.15), (p.jitter, 0.8), (p.grayscale, 0.2), (p.blur, 0.5)]:
        assert abs(drawn.mean() - probability) < 0.045, (drawn.mean(), probability)
    assert np.abs(p.angle).max() <= 90 and p.angle.min() < -80 and p.angle.max() > 80
    assert ((p.factors[:, :3] >= 0.6) & (p.factors[:, :3] <= 1.4)).all()
    assert (np.abs(p.factors[:, 3]) <= 0.1).all()
    assert ((p.sigma >= 0.1) & (p.sigma <= 2.0)).all()
    assert not p.invert.any()  # off by default: hu2024 does not invert
    inverted = jax.jit(jax.vmap(lambda k: sample_params(k, 224, 224, AugmentConfig(invert_prob=0.3))))(keys)
    assert abs(np.asarray(inverted.invert).mean() - 0.3) < 0.045
    np.testing.assert_array_equal(np.sort(p.order, axis=1), np.tile(np.arange(4), (n, 1)))
    assert len({tuple(o) for o in p.order}) == 24
    top, left, h, w = p.crop.T  # the crop through the PRNG path: in range, and spanning it
    fraction, aspect = h * w / 224**2, w / h
    assert fraction.min() >= 0.5 - 2 / 224 and fraction.max() <= 1.0 and fraction.min() < 0.52
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35 and aspect.min() < 0.77 and aspect.max() > 1.3
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()


def test_augment_batch_shapes_dtype_range_and_keys():
    images = np.stack([random_image(H, H, 8)] * 3 + [smooth_image(H, H, 9)])
    key = jax.random.key(11)
    out = augment_batch(key, images, CONFIG)
    assert out.shape == (4, S, S, 3) and out.dtype == jnp.float32
    out = np.asarray(out)
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(out, np.asarray(augment_batch(key, images, CONFIG)))  # deterministic
    assert not np.allclose(out, np.asarray(augment_batch(jax.random.key(12), images, CONFIG)))
    # One key per image: equal inputs get different views, and a view depends on its image only.
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    changed = images.copy()
    changed[3] = 255 - changed[3]
    np.testing.assert_array_equal(np.asarray(augment_batch(key, changed, CONFIG))[:3], out[:3])


def test_two_views_are_augment_batch_with_split_keys():
    images = np.stack([random_image(H, H, 10)] * 3 + [smooth_image(H, H, 11)])
    key = jax.random.key(3)
    view_q, view_k = two_views(key, images, CONFIG)
    assert view_q.shape == view_k.shape == (4, S, S, 3) and view_q.dtype == jnp.float32
    key_q, key_k = jax.random.split(key)
    np.testing.assert_array_equal(view_q, augment_batch(key_q, images, CONFIG))
    np.testing.assert_array_equal(view_k, augment_batch(key_k, images, CONFIG))
    assert not np.allclose(view_q, view_k)


def test_bad_inputs_are_refused_where_they_enter():
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\).*float32"):
        augment_batch(jax.random.key(0), np.zeros((1, H, H, 3), np.float32), CONFIG)
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="rotation_prob"):
        AugmentConfig(rotation_prob=1.5)
    with pytest.raises(ValueError, match="blur_kernel_fraction"):
        AugmentConfig(output_size=8, blur_kernel_fraction=1.0)


def test_config_from_ml_collections():
    ml_collections = pytest.importorskip("ml_collections")
    settings = ml_collections.ConfigDict({"output_size": 224, "crop_scale": [0.2, 1.0], "rotation_prob": 0.0})
    config = AugmentConfig(**settings)
    assert config.crop_scale == (0.2, 1.0) and config.output_size == 224
    hash(config)  # a static jit argument
