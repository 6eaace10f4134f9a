"""MoCo v2 augmentation with hu2024's changes (Sec. 3.2), on device in pure JAX.

One view of one image is: random resized crop (scale 0.5-1, hu2024; torchvision's sampling)
-> random rotation in [-90, 90] degrees with p = 0.15 (hu2024; uncovered corners white)
-> colour jitter with p = 0.8 (torchvision ``ColorJitter``: factors in random order)
-> random grayscale p = 0.2 -> Gaussian blur p = 0.5 (sigma in [0.1, 2]) -> horizontal flip p = 0.5.
One step of ours, off by default: colour inversion (``invert_prob``) right after the geometry.

Crop, rotation and flip are one affine map from output pixel to input pixel, sampled once
(bilinear, the input lies on a white canvas). The flip is folded into that map although MoCo v2
flips last: every later op is mirror-equivariant (pointwise colour ops, an image-wide mean,
a symmetric kernel with symmetric padding), so the result is the same.

Everything works on one image with static shapes and takes one PRNG key per image;
``augment_batch`` and ``two_views`` vmap it over the batch. Input is uint8 (B, H, W, 3) RGB,
output float32 (B, S, S, 3) in [0, 255]; the encoder normalises. Colour ops follow
torchvision's tensor formulas on floats, without the uint8 rounding that MoCo v2's PIL path
does after each op, and with ITU-R 601-2 luma weights (0.299, 0.587, 0.114) as PIL.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601-2 luma (PIL ``convert("L")``); torchvision's tensor path rounds R's weight to 0.2989.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# ``AugmentParams.order`` codes, torchvision ``ColorJitter``'s ``fn_idx``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def _range(name: str, value, low: float, high: float, positive: bool = False) -> tuple[float, ...]:
    """``value`` as a float pair ``low <= lo <= hi <= high`` (``lo > 0`` if ``positive``)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"AugmentConfig.{name}: expected a pair (lo, hi), got {value!r}") from None
    if not low <= lo <= hi <= high or (positive and lo <= 0):
        bound = "0 < lo" if positive else f"{low} <= lo"
        raise ValueError(f"AugmentConfig.{name}: expected {bound} <= hi <= {high}, got {value!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one augmented view; defaults are hu2024 (MoCo v2 with its Sec. 3.2 changes).

    Frozen and hashable, so it is a static argument of ``jax.jit``. Built from an
    ``ml_collections.ConfigDict`` with ``AugmentConfig(**config.augment)``. A probability of 0
    switches a step off.
    """

    output_size: int = 160  # S: hu2024 trains at 160 x 160
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction; hu2024: MoCo v2's 0.2 -> 0.5
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height, sampled log-uniformly
    crop_attempts: int = 10  # torchvision's tries before the centre-crop fallback
    rotation_prob: float = 0.15  # hu2024
    rotation_degrees: tuple[float, float] = (-90.0, 90.0)  # > 0: counter-clockwise on screen
    flip_prob: float = 0.5
    fill: float = 255.0  # value outside the input image: white, as trademarks are on white
    jitter_prob: float = 0.8
    brightness: float = 0.4  # factor uniform in [max(0, 1 - b), 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift uniform in [-hue, hue] of the hue circle
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # MoCo v2, in output pixels
    blur_kernel_fraction: float = 0.1  # kernel ~ 10% of S, made odd (SimCLR)
    # Ours, not hu2024 (0 = off there): 255 - x after the geometry, so a dark mark on white and a
    # light mark on a dark field (two ways designers draw the same brand) become one instance.
    invert_prob: float = 0.0

    def __post_init__(self):
        for name in ("output_size", "crop_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AugmentConfig.{name}: expected an int >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        pairs = {
            "crop_scale": (0.0, math.inf, True),
            "crop_ratio": (0.0, math.inf, True),
            "rotation_degrees": (-180.0, 180.0, False),
            "blur_sigma": (0.0, math.inf, True),
        }
        for name, (low, high, positive) in pairs.items():
            object.__setattr__(self, name, _range(name, getattr(self, name), low, high, positive))
        limits = {
            "rotation_prob": 1.0, "flip_prob": 1.0, "jitter_prob": 1.0, "grayscale_prob": 1.0,
            "blur_prob": 1.0, "invert_prob": 1.0, "brightness": math.inf, "contrast": math.inf,
            "saturation": math.inf, "hue": 0.5, "fill": 255.0, "blur_kernel_fraction": 1.0,
        }  # fmt: skip
        for name, high in limits.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not 0.0 <= value <= high:
                raise ValueError(
                    f"AugmentConfig.{name}: expected a number in [0, {high}], got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        if self.blur_kernel_size > self.output_size:
            raise ValueError(
                f"AugmentConfig.blur_kernel_fraction: kernel of {self.blur_kernel_size} px is wider "
                f"than the {self.output_size} px output"
            )

    @property
    def blur_kernel_size(self) -> int:
        """Odd Gaussian kernel length: ``blur_kernel_fraction * S`` floored to even, plus one."""
        return int(self.blur_kernel_fraction * self.output_size) // 2 * 2 + 1


class AugmentParams(NamedTuple):
    """The random draws for one view of one image (a leading batch axis under vmap)."""

    crop: jax.Array  # (4,) float32: top, left, height, width in input pixels
    flip: jax.Array  # () bool
    angle: jax.Array  # () float32 degrees, 0 when not rotated
    jitter: jax.Array  # () bool
    factors: jax.Array  # (4,) float32: brightness, contrast, saturation factors, hue shift
    order: jax.Array  # (4,) int32: permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE
    grayscale: jax.Array  # () bool
    blur: jax.Array  # () bool
    sigma: jax.Array  # () float32
    invert: jax.Array  # () bool


# --------------------------------------------------------------------------- sampling


def sample_crop(uniforms: jax.Array, height: int, width: int, config: AugmentConfig) -> jax.Array:
    """torchvision ``RandomResizedCrop.get_params``, vectorised: (4,) top, left, h, w.

    ``uniforms`` (4, crop_attempts) in [0, 1) drive every candidate's scale, log-ratio, top and
    left; the first candidate that fits is kept, and if none does, the centre crop clamped to
    ``crop_ratio`` (torchvision's fallback).
    """
    u_scale, u_ratio, u_top, u_left = uniforms
    area = height * width
    lo, hi = config.crop_scale
    target = area * (lo + (hi - lo) * u_scale)
    log_lo, log_hi = math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = jnp.round(jnp.sqrt(target * aspect))  # round half to even, as Python's round()
    h = jnp.round(jnp.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # torch.randint(0, size - crop + 1): floor of a uniform, clipped against u -> 1 rounding.
    top = jnp.minimum(jnp.floor(u_top * (height - h + 1)), height - h)
    left = jnp.minimum(jnp.floor(u_left * (width - w + 1)), width - w)
    first = jnp.argmax(fits)
    sampled = jnp.stack([top[first], left[first], h[first], w[first]])

    # Fallback: static in the input shape.
    in_ratio = width / height
    if in_ratio < config.crop_ratio[0]:
        fw, fh = width, round(width / config.crop_ratio[0])
    elif in_ratio > config.crop_ratio[1]:
        fw, fh = round(height * config.crop_ratio[1]), height
    else:
        fw, fh = width, height
    fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.float32)
    return jnp.where(jnp.any(fits), sampled, fallback).astype(jnp.float32)


def sample_params(key: jax.Array, height: int, width: int, config: AugmentConfig) -> AugmentParams:
    """Draw every random choice for one view of one ``height x width`` image."""
    n = config.crop_attempts
    # One PRNG draw per image, sliced in order: each extra draw adds a threefry kernel to compile.
    u = jax.random.uniform(key, (4 * n + 16,))
    u_crop, u = u[: 4 * n].reshape(4, n), u[4 * n :]
    flip, rotate, angle, jitter, grayscale, blur, sigma = u[:7]
    u_factors, u_order, invert = u[7:11], u[11:15], u[15]

    def between(lo, hi, uniform):
        return lo + (hi - lo) * uniform

    low = jnp.array([max(0.0, 1.0 - config.brightness), max(0.0, 1.0 - config.contrast),
                     max(0.0, 1.0 - config.saturation), -config.hue])  # fmt: skip
    high = jnp.array([1.0 + config.brightness, 1.0 + config.contrast,
                      1.0 + config.saturation, config.hue])  # fmt: skip
    return AugmentParams(
        crop=sample_crop(u_crop, height, width, config),
        flip=flip < config.flip_prob,
        angle=jnp.where(
            rotate < config.rotation_prob, between(*config.rotation_degrees, angle), 0.0
        ),
        jitter=jitter < config.jitter_prob,
        factors=between(low, high, u_factors),
        order=jnp.argsort(u_order).astype(jnp.int32),  # a uniform random permutation
        grayscale=grayscale < config.grayscale_prob,
        blur=blur < config.blur_prob,
        sigma=between(*config.blur_sigma, sigma),
        invert=invert < config.invert_prob,
    )


# --------------------------------------------------------------------------- geometry


def affine_matrix(
    crop: jax.Array, flip: jax.Array, angle: jax.Array, output_size: int
) -> jax.Array:
    """(2, 3) map from output pixel (x, y, 1) to input pixel (u, v), pixel centres at integers.

    The output is the ``crop`` box (top, left, h, w) resized to S x S, rotated by ``angle``
    degrees counter-clockwise (as seen on screen) about its centre, then mirrored left-right
    if ``flip``; the matrix undoes these in reverse order.
    """
    s = output_size
    top, left, h, w = crop[0], crop[1], crop[2], crop[3]
    theta = jnp.deg2rad(angle)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    mirror = jnp.where(flip, -1.0, 1.0)
    # diag(w/S, h/S) @ R(-angle) @ diag(mirror, 1) in (x right, y down) coordinates, written out
    # rather than as matmuls, which run at reduced precision by default on GPU and TPU.
    a, b = w / s * cos * mirror, -w / s * sin
    c, d = h / s * sin * mirror, h / s * cos
    half = s / 2 - 0.5  # output centre
    tx = left + w / 2 - 0.5 - (a + b) * half
    ty = top + h / 2 - 0.5 - (c + d) * half
    return jnp.stack([jnp.stack([a, b, tx]), jnp.stack([c, d, ty])]).astype(jnp.float32)


def warp_affine(
    image: jax.Array, matrix: jax.Array, output_size: int, fill: float = 255.0
) -> jax.Array:
    """Bilinear sample of (H, W, C) ``image`` at ``matrix @ (x, y, 1)`` for an S x S output.

    The image lies on a canvas of ``fill``: a sample between an edge pixel and the outside
    blends the two, as torchvision's ``rotate``/``affine`` with ``fill``. Returns float32.
    """
    height, width = image.shape[-3], image.shape[-2]
    coords = jnp.arange(output_size, dtype=jnp.float32)
    y, x = jnp.meshgrid(coords, coords, indexing="ij")
    u = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    v = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    u0, v0 = jnp.floor(u), jnp.floor(v)
    fu, fv = u - u0, v - v0
    flat = image.reshape(height * width, -1).astype(jnp.float32)
    out = jnp.zeros((output_size, output_size, flat.shape[-1]), jnp.float32)
    covered = jnp.zeros((output_size, output_size, 1), jnp.float32)
    for du, wu in ((0, 1.0 - fu), (1, fu)):
        for dv, wv in ((0, 1.0 - fv), (1, fv)):
            col, row = u0.astype(jnp.int32) + du, v0.astype(jnp.int32) + dv
            inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
            weight = jnp.where(inside, wu * wv, 0.0)[..., None]
            index = jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1)
            out = out + weight * flat[index]
            covered = covered + weight
    return out + (1.0 - covered) * fill


# --------------------------------------------------------------------------- colour


def luma(image: jax.Array) -> jax.Array:
    """ITU-R 601-2 luma of (..., H, W, 3) RGB, keeping a channel axis: (..., H, W, 1)."""
    # A dot rather than a weighted sum of channel slices: XLA materialises a dot's input, where
    # a fused sum would recompute the whole producing chain once per channel read (2x slower on
    # CPU). HIGHEST keeps it float32 exact on GPU (no TF32) and TPU (no single bf16 pass).
    weights = jnp.array(LUMA_WEIGHTS, image.dtype)[:, None]
    return jnp.matmul(image, weights, precision=jax.lax.Precision.HIGHEST)


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
    """torchvision ``Grayscale(num_output_channels=3)``: luma copied to 3 channels."""
    return jnp.broadcast_to(luma(image), image.shape)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision ``_blend``: ``factor * image + (1 - factor) * other`` clipped to [0, 255]."""
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 255.0)


def _image_mean(values: jax.Array) -> jax.Array:
    return jnp.mean(values, axis=(-3, -2, -1), keepdims=True)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision ``adjust_brightness``: blend with black."""
    return _blend(image, 0.0, factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision ``adjust_contrast``: blend with the image's mean luma."""
    return _blend(image, _image_mean(luma(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision ``adjust_saturation``: blend with the grayscale image."""
    return _blend(image, luma(image), factor)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
    """torchvision ``adjust_hue``: rotate HSV hue by ``shift`` turns, keeping S and V.

    RGB -> HSV as torchvision's ``_rgb2hsv``; HSV -> RGB by the closed form
    ``c_n = V - V S clip(min(k, 4 - k), 0, 1)``, ``k = (n + 6 H) mod 6``, n = 5, 3, 1 for R, G, B.
    Channels are handled as separate planes, which vectorises far better on CPU.
    """
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    chroma = v - jnp.minimum(jnp.minimum(r, g), b)  # V * S
    divisor = jnp.where(chroma == 0, 1.0, chroma)
    rc, gc, bc = (v - r) / divisor, (v - g) / divisor, (v - b) / divisor
    # The first maximal channel (R, then G, then B, torchvision's precedence) picks the branch,
    # decided among r, g, b rather than by ``v == r``: XLA may recompute a fused input in two
    # places with different rounding, and an equality between the copies can fail for all three.
    red = r >= jnp.maximum(g, b)
    green = ~red & (g >= b)
    hue = jnp.where(red, bc - gc, jnp.where(green, 2.0 + rc - bc, 4.0 + gc - rc)) / 6.0 + shift
    hue = hue - jnp.floor(hue)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = n + 6.0 * hue
        k = jnp.where(k >= 6.0, k - 6.0, k)  # k in [0, 12): mod 6
        channels.append(v - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return jnp.stack(channels, axis=-1)


def color_jitter(image: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
    """torchvision ``ColorJitter`` with drawn ``factors`` (brightness, contrast, saturation,
    hue shift) applied in ``order``, a traced permutation of BRIGHTNESS..HUE.

    Brightness, contrast and saturation are all ``_blend(x, ref, a)``; they are run in order in
    three slots before the hue shift and three after, each slot active on the side of hue that
    the permutation puts it, so the costly HSV round trip runs once per image whatever the order.
    """
    linear = order[jnp.argsort(order == HUE, stable=True)[:3]]  # the three blends, in order
    hue_position = jnp.argmax(order == HUE)

    def blend_slot(x, slot, active):
        op = linear[slot]
        gray = luma(x)
        ref = jnp.where(op == CONTRAST, _image_mean(gray), jnp.where(op == SATURATION, gray, 0.0))
        return jnp.where(active, _blend(x, ref, factors[op]), x)

    x = image
    for slot in range(3):
        x = blend_slot(x, slot, slot < hue_position)
    x = adjust_hue(x, factors[HUE])
    for slot in range(3):
        x = blend_slot(x, slot, slot >= hue_position)
    return x


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(sigma: jax.Array, size: int) -> jax.Array:
    """torchvision ``_get_gaussian_kernel1d``: normalised Gaussian on ``size`` integer taps."""
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    pdf = jnp.exp(-0.5 * (x / sigma) ** 2)
    return pdf / jnp.sum(pdf)


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur of (H, W, C) with reflect padding (torchvision ``gaussian_blur``).

    ``sigma`` is traced, so each image of a vmapped batch gets its own kernel.
    """
    kernel = gaussian_kernel1d(sigma, kernel_size)
    radius = kernel_size // 2
    height, width = image.shape[0], image.shape[1]
    padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    x = sum(kernel[t] * padded[t : t + height] for t in range(kernel_size))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(kernel[t] * padded[:, t : t + width] for t in range(kernel_size))


# --------------------------------------------------------------------------- views


def apply_params(image: jax.Array, params: AugmentParams, config: AugmentConfig) -> jax.Array:
    """One view of one uint8 (H, W, 3) image from drawn ``params``: float32 (S, S, 3), [0, 255]."""
    s = config.output_size
    matrix = affine_matrix(params.crop, params.flip, params.angle, s)
    x = warp_affine(image, matrix, s, config.fill)
    x = jnp.where(params.invert, 255.0 - x, x)
    x = jnp.where(params.jitter, color_jitter(x, params.factors, params.order), x)
    x = jnp.where(params.grayscale, rgb_to_grayscale(x), x)
    x = jnp.where(params.blur, gaussian_blur(x, params.sigma, config.blur_kernel_size), x)
    return x


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
        raise ValueError(
            "tmrjax.train.augment: images must be uint8 (B, H, W, 3) RGB, "
            f"got {images.dtype} {tuple(images.shape)}"
        )


def _augment(keys: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    height, width = images.shape[1], images.shape[2]

    def one(key, image):
        return apply_params(image, sample_params(key, height, width, config), config)

    return jax.vmap(one)(keys, images)


@functools.partial(jax.jit, static_argnames=("config",))
def augment_batch(
    key: jax.Array, images: jax.Array, config: AugmentConfig = AugmentConfig()
) -> jax.Array:
    """One augmented view per image: uint8 (B, H, W, 3) -> float32 (B, S, S, 3) in [0, 255].

    Image ``i`` uses key ``jax.random.split(key, B)[i]``.
    """
    _check_images(images)
    return _augment(jax.random.split(key, images.shape[0]), images, config)


def two_views(
    key: jax.Array, images: jax.Array, config: AugmentConfig = AugmentConfig()
) -> tuple[jax.Array, jax.Array]:
    """MoCo's query and key views: ``augment_batch`` with each key of ``jax.random.split(key)``.

    Two calls of the compiled ``augment_batch`` rather than a program of its own; inside a
    jitted train step both are inlined.
    """
    key_q, key_k = jax.random.split(key)
    return augment_batch(key_q, images, config), augment_batch(key_k, images, config)
