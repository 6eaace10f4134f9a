"""Keras -> tmrjax conversion: tap-by-tap parity with keras.applications itself, and error paths.

The reference is keras.applications' own ResNet50/VGG16/VGG19 with random weights (random
conv biases, BatchNorm gamma/beta/moving statistics), saved in the legacy HDF5 weights format
of the official downloads and fed the same uint8 images through
``keras.applications.*.preprocess_input`` as a Keras user does. Every tap must agree to 1e-4
of the tap's largest activation (float32). The other formats (full include_top file, legacy
full model, Keras 3 ``.weights.h5``, the official files' weight names) must convert to the
very same arrays.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "jax"  # the converter itself never imports Keras
keras = pytest.importorskip("keras")

import jax  # noqa: E402

from tmrjax import WeightsError, load_backbone  # noqa: E402
from tmrjax.convert import convert_checkpoint  # noqa: E402
from tmrjax.convert import keras as kc  # noqa: E402
from tmrjax.models import available_taps  # noqa: E402
from tmrjax.weights import expected_variables  # noqa: E402

# Keras' JAX backend warns about numpy 2's __array__ copy keyword on every weight access.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RTOL = 1e-4
BATCH = 2

# (arch, (H, W)): ResNet50 at every size, VGG at fewer (each size is one XLA compile per side).
PARITY_CASES = [
    ("resnet50", (200, 320)),
    ("resnet50", (160, 160)),
    ("resnet50", (224, 224)),
    ("resnet50", (320, 320)),
    ("vgg16", (200, 320)),
    ("vgg16", (224, 224)),
    ("vgg19", (160, 160)),
]
RESNET_LAYERS = {
    "conv1": "conv1_relu",
    "conv2": "conv2_block3_out",
    "conv3": "conv3_block4_out",
    "conv4": "conv4_block6_out",
    "conv5": "conv5_block3_out",
}


def keras_layer_of_tap(arch: str, tap: str) -> str:
    """The Keras layer whose output is tmrjax's `tap` (conv5_3 -> block5_conv3, pool5 -> block5_pool)."""
    if arch == "resnet50":
        return RESNET_LAYERS[tap]
    if tap.startswith("pool"):
        return f"block{tap[4:]}_pool"
    block, conv = tap[4:].split("_")
    return f"block{block}_conv{conv}"


def keras_model(arch: str) -> keras.Model:
    """keras.applications `arch` with random weights and non-trivial BatchNorm.

    Kernels, biases, gamma and beta are random; the moving statistics are those of random
    images (one training-mode pass with momentum 0), then jittered, so that every BN has its
    own mean and variance while activations keep a sane scale through ResNet's 16 blocks.
    """
    build = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16,
             "vgg19": keras.applications.VGG19}[arch]
    model = build(weights=None, include_top=False)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        shape, name = tuple(variable.shape), variable.name
        if name == "kernel":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif name == "bias":  # VGG's activations are in the hundreds, ResNet's BN-scaled
            value = rng.normal(0.0, 0.5 if arch == "resnet50" else 10.0, shape)
        elif name == "beta":
            value = rng.normal(0.0, 0.5, shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 2.0, shape)
        elif name in ("moving_mean", "moving_variance"):
            continue  # calibrated below
        else:
            raise AssertionError(f"unexpected Keras variable {variable.path}")
        variable.assign(value.astype(np.float32))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if norms:
        for bn in norms:
            bn.momentum = 0.0
        images = rng.integers(0, 256, (4, 96, 96, 3)).astype(np.float32)
        model(keras.applications.resnet50.preprocess_input(images), training=True)
        for bn in norms:
            bn.momentum = 0.99
            mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
            mean = mean + 0.2 * np.sqrt(var) * rng.normal(size=mean.shape)
            var = var * rng.uniform(0.5, 2.0, var.shape)
            bn.moving_mean.assign(mean.astype(np.float32))
            bn.moving_variance.assign(var.astype(np.float32))
    return model


def save_legacy_weights(model: keras.Model, path: Path) -> Path:
    """Write `model` in the legacy HDF5 weights format of the official keras.applications files."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)
    return path


class Checkpoints:
    """Keras models, their legacy weight files and converted backbones, each built once per module."""

    def __init__(self, root: Path):
        self.root = root
        self.models: dict = {}
        self.converted: dict = {}

    def model(self, arch: str) -> tuple[keras.Model, Path]:
        if arch not in self.models:
            model = keras_model(arch)
            path = save_legacy_weights(model, self.root / f"{arch}_notop.h5")
            layers = [model.get_layer(keras_layer_of_tap(arch, t)) for t in available_taps(arch)]
            taps = keras.Model(model.input, [layer.output for layer in layers])
            self.models[arch] = (model, path, taps)
        model, path, _ = self.models[arch]
        return model, path

    def keras_taps(self, arch: str, images: np.ndarray) -> dict[str, np.ndarray]:
        """Keras' activations at tmrjax's taps, for uint8 RGB images, preprocessed as Keras users do."""
        self.model(arch)
        preprocess = {"resnet50": keras.applications.resnet50, "vgg16": keras.applications.vgg16,
                      "vgg19": keras.applications.vgg19}[arch].preprocess_input
        outputs = self.models[arch][2].predict(preprocess(images.astype(np.float32)), verbose=0)
        return dict(zip(available_taps(arch), outputs))

    def backbone(self, arch: str):
        if arch not in self.converted:
            _, path = self.model(arch)
            out = convert_checkpoint("keras", arch, path, self.root / f"{arch}_flax")
            module, variables, meta = load_backbone(out, arch=arch, layout="keras")
            self.converted[arch] = (out, jax.jit(module.apply), variables, meta)
        return self.converted[arch]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("keras"))


@pytest.mark.parametrize("arch,size", PARITY_CASES, ids=[f"{a}-{h}x{w}" for a, (h, w) in PARITY_CASES])
def test_parity_with_keras(checkpoints, arch, size, record_property, taps_match):
    _, apply, variables, meta = checkpoints.backbone(arch)
    images = np.random.default_rng(sum(size)).integers(0, 256, (BATCH, *size, 3), dtype=np.uint8)

    expected = checkpoints.keras_taps(arch, images)
    got = jax.device_get(apply(variables, images))

    taps_match(got, expected, meta["taps"], RTOL, f"{arch} {size}", record_property)


def test_meta_names_source(checkpoints):
    _, _, _, meta = checkpoints.backbone("resnet50")
    assert meta["arch"] == "resnet50" and meta["layout"] == "keras"
    assert meta["preprocessing"]["name"] == "caffe"
    assert meta["source"]["framework"] == "keras"
    assert meta["source"]["file"] == "resnet50_notop.h5"
    assert meta["source"]["dropped_head_keys"] == []
    assert len(meta["source"]["sha256"]) == 64


def assert_same_arrays(flat: dict, reference: dict) -> None:
    assert sorted(flat) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(flat[key], value, err_msg="/".join(key))


def test_full_file_with_classifier_head(checkpoints, tmp_path):
    """An include_top=True file converts to the same backbone; its head is dropped and listed."""
    model, path = checkpoints.model("resnet50")
    full = keras.applications.ResNet50(weights=None, include_top=True)
    for layer in model.layers:
        if layer.weights:
            full.get_layer(layer.name).set_weights(layer.get_weights())
    full_path = save_legacy_weights(full, tmp_path / "resnet50_full.h5")

    reference, _ = kc.read_checkpoint(path, "resnet50")
    flat, dropped = kc.read_checkpoint(full_path, "resnet50")
    assert_same_arrays(flat, reference)
    assert sorted(dropped) == ["predictions/bias", "predictions/kernel"]

    out = convert_checkpoint("keras", "resnet50", full_path, tmp_path / "out")
    _, variables, meta = load_backbone(out)
    assert meta["source"]["dropped_head_keys"] == ["predictions/bias", "predictions/kernel"]
    np.testing.assert_array_equal(
        variables["batch_stats"]["conv5_block3"]["bn3"]["var"],
        reference[("batch_stats", "conv5_block3", "bn3", "var")],
    )


def test_legacy_full_model_and_keras3_weights_files(checkpoints, tmp_path):
    """model.save('x.h5') and model.save_weights('x.weights.h5') convert to the same arrays."""
    model, path = checkpoints.model("resnet50")
    reference, _ = kc.read_checkpoint(path, "resnet50")
    saved_model = tmp_path / "resnet50_model.h5"
    model.save(saved_model)
    weights_h5 = tmp_path / "resnet50.weights.h5"
    model.save_weights(weights_h5)
    for file in (saved_model, weights_h5):
        flat, dropped = kc.read_checkpoint(file, "resnet50")
        assert_same_arrays(flat, reference)
        assert dropped == []


KERAS1_NAMES = {"kernel": "W", "bias": "b"}


def as_str(names) -> list[str]:
    """An HDF5 string-list attribute (bytes or str items) as a list of str."""
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def rename_legacy_weights(src: Path, dst: Path, rename: Callable[[str, str], str]) -> Path:
    """Copy a legacy weights file, renaming each layer's datasets to rename(layer, 'kernel'|...)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        for layer in as_str(f.attrs["layer_names"]):
            group = f[layer]
            names = as_str(group.attrs["weight_names"])
            if not names:
                continue
            arrays = [group[n][()] for n in names]
            for child in list(group):
                del group[child]
            new_names = [rename(layer, n.rsplit("/", 1)[-1]) for n in names]
            for name, array in zip(new_names, arrays):
                group.create_dataset(name, data=array)
            group.attrs["weight_names"] = np.array([n.encode() for n in new_names])
    return dst


@pytest.mark.parametrize(
    "arch,rename",
    [
        # keras-applications/resnet/*.h5 (Keras 2): conv1_conv/kernel:0, conv1_bn/moving_mean:0
        ("resnet50", lambda layer, w: f"{layer}/{w}:0"),
        # keras-applications/vgg16, vgg19 (Keras 1 era): block1_conv1_W_1:0, block1_conv1_b_1:0
        ("vgg16", lambda layer, w: f"{layer}_{KERAS1_NAMES[w]}_1:0"),
    ],
    ids=["keras2-names", "keras1-names"],
)
def test_weight_names_of_the_official_files(checkpoints, arch, rename, tmp_path):
    _, path = checkpoints.model(arch)
    reference, _ = kc.read_checkpoint(path, arch)
    renamed = rename_legacy_weights(path, tmp_path / "official_names.h5", rename)
    flat, _ = kc.read_checkpoint(renamed, arch)
    assert_same_arrays(flat, reference)


def edited_copy(src: Path, dst: Path, edit: Callable[[h5py.File], None]) -> Path:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def set_layer_names(f: h5py.File, names: list[str]) -> None:
    f.attrs["layer_names"] = np.array([n.encode() for n in names])


def add_layer(f: h5py.File, layer: str, weights: dict[str, np.ndarray]) -> None:
    group = f.create_group(layer)
    for name, value in weights.items():
        group.create_dataset(name, data=value)
    group.attrs["weight_names"] = np.array([n.encode() for n in weights])
    set_layer_names(f, as_str(f.attrs["layer_names"]) + [layer])


def test_vgg_classifier_head_is_dropped(checkpoints, tmp_path):
    _, path = checkpoints.model("vgg16")

    def add_head(f):
        add_layer(f, "flatten", {})
        for layer, (n_in, n_out) in {"fc1": (8, 4), "fc2": (4, 4), "predictions": (4, 3)}.items():
            add_layer(f, layer, {f"{layer}_W_1:0": np.zeros((n_in, n_out), np.float32),
                                 f"{layer}_b_1:0": np.zeros(n_out, np.float32)})

    full = edited_copy(path, tmp_path / "vgg16_full.h5", add_head)
    flat, dropped = kc.read_checkpoint(full, "vgg16")
    assert set(flat) == set(expected_variables("vgg16", "keras"))
    assert sorted(dropped) == sorted(
        f"{layer}/{layer}_{w}_1:0" for layer in ("fc1", "fc2", "predictions") for w in "Wb"
    )


@pytest.mark.parametrize(
    "file_arch,requested",
    [("resnet50", "vgg16"), ("vgg16", "resnet50"), ("vgg16", "vgg19"), ("vgg19", "vgg16")],
)
def test_wrong_architecture(checkpoints, file_arch, requested, tmp_path):
    _, path = checkpoints.model(file_arch)
    wrong = f"{path}: this looks like a Keras {file_arch} checkpoint, not {requested}"
    with pytest.raises(WeightsError, match=re.escape(wrong)):
        convert_checkpoint("keras", requested, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_keras_resnets_are_named(tmp_path):
    path = tmp_path / "resnet101_layers.h5"
    with h5py.File(path, "w") as f:
        set_layer_names(f, [])
        for block in range(1, 24):
            add_layer(f, f"conv4_block{block}_1_conv", {})
    with pytest.raises(WeightsError, match="looks like a Keras resnet101 checkpoint, not resnet50"):
        kc.read_checkpoint(path, "resnet50")


def test_truncated_file(checkpoints, tmp_path):
    _, path = checkpoints.model("vgg16")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        convert_checkpoint("keras", "vgg16", truncated, tmp_path / "out")
    assert str(truncated) in str(info.value)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"<html>404 Not Found</html>\n" * 50)
    with pytest.raises(WeightsError, match="not HDF5 at all") as info:
        kc.read_checkpoint(path, "resnet50")
    assert str(path) in str(info.value)


def test_hdf5_file_without_keras_weights(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((4, 8), np.float32))
    with pytest.raises(WeightsError, match=r"not Keras weights.*'features'") as info:
        kc.read_checkpoint(path, "vgg16")
    assert str(path) in str(info.value)


def test_layer_listed_but_absent(checkpoints, tmp_path):
    _, path = checkpoints.model("vgg16")
    broken = edited_copy(path, tmp_path / "broken.h5", lambda f: f.__delitem__("block2_conv1"))
    with pytest.raises(WeightsError, match="lists 'block2_conv1' but the file has no such group") as info:
        kc.read_checkpoint(broken, "vgg16")
    assert str(broken) in str(info.value)


def test_missing_layers_and_weights_are_listed(checkpoints, tmp_path):
    _, path = checkpoints.model("resnet50")

    def drop(f):
        del f["conv3_block2_2_bn"]
        set_layer_names(f, [n for n in as_str(f.attrs["layer_names"]) if n != "conv3_block2_2_bn"])
        conv = f["conv5_block1_0_conv"]  # a shortcut conv saved without its bias
        del conv["conv5_block1_0_conv/bias"]
        conv.attrs["weight_names"] = np.array([b"conv5_block1_0_conv/kernel"])

    edited = edited_copy(path, tmp_path / "missing.h5", drop)
    with pytest.raises(WeightsError, match=r"missing keys \(5\)") as info:
        convert_checkpoint("keras", "resnet50", edited, tmp_path / "out")
    message = str(info.value)
    assert str(edited) in message
    for flax_key in ("params/conv3_block2/bn2/scale", "params/conv3_block2/bn2/bias",
                     "batch_stats/conv3_block2/bn2/mean", "batch_stats/conv3_block2/bn2/var",
                     "params/conv5_block1/shortcut_conv/bias"):
        assert flax_key in message
    assert "unexpected" not in message


def test_unexpected_layers_are_listed(checkpoints, tmp_path):
    _, path = checkpoints.model("resnet50")

    def add(f):
        add_layer(f, "projection", {"projection/kernel:0": np.zeros((2048, 128), np.float32)})
        add_layer(f, "conv1_extra_conv", {"conv1_extra_conv/kernel:0": np.zeros((1, 1, 64, 64), np.float32)})

    edited = edited_copy(path, tmp_path / "extra.h5", add)
    with pytest.raises(WeightsError, match=r"unexpected keys \(2\)") as info:
        convert_checkpoint("keras", "resnet50", edited, tmp_path / "out")
    message = str(info.value)
    assert "projection/kernel:0" in message and "conv1_extra_conv/kernel:0" in message
    assert "missing" not in message


def test_shape_mismatch_names_key_expected_and_got(checkpoints, tmp_path):
    _, path = checkpoints.model("resnet50")

    def reshape(f):
        kernel = f["conv1_conv/conv1_conv/kernel"]
        value = kernel[()]
        del f["conv1_conv/conv1_conv/kernel"]
        f["conv1_conv/conv1_conv"].create_dataset("kernel", data=value.transpose(3, 2, 0, 1))  # OIHW
        del f["conv4_block2_2_bn/conv4_block2_2_bn/moving_variance"]
        f["conv4_block2_2_bn/conv4_block2_2_bn"].create_dataset("moving_variance", data=np.ones(128))

    edited = edited_copy(path, tmp_path / "reshaped.h5", reshape)
    with pytest.raises(WeightsError, match="shape mismatches") as info:
        convert_checkpoint("keras", "resnet50", edited, tmp_path / "out")
    message = str(info.value)
    assert "params/conv1/kernel: expected (7, 7, 3, 64), got (64, 3, 7, 7)" in message
    assert "batch_stats/conv4_block2/bn2/var: expected (256,), got (128,)" in message


def test_official_files():
    assert kc.LAYOUT == "keras"
    assert set(kc.OFFICIAL) == {"resnet50", "vgg16", "vgg19"}
    for arch, (notop, full) in kc.OFFICIAL.items():
        for official in (notop, full):
            assert official.url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
            assert official.hash_name == "md5" and len(official.digest) == 32
            assert official.filename.startswith(f"{arch}_weights_tf_dim_ordering_tf_kernels")
        assert notop.filename.endswith("_notop.h5") and not full.filename.endswith("_notop.h5")
    assert kc.OFFICIAL["resnet50"][0].digest == "4d473c1dd8becc155b73f8504c6f6626"
