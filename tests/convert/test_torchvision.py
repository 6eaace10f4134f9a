"""torchvision -> tmrjax conversion: tap-by-tap parity with torchvision itself, and error paths.

The reference is torchvision's own ResNet50/VGG16/VGG19 with random weights and calibrated,
non-trivial BatchNorm statistics, fed the same uint8 images normalised as a torchvision user
does. Every tap must agree to 1e-4 of the tap's largest activation (float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402

from tmrjax import WeightsError, load_backbone  # noqa: E402
from tmrjax.convert import convert_checkpoint  # noqa: E402
from tmrjax.convert import torchvision as tv  # noqa: E402

torch.set_num_threads(2)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RTOL = 1e-4
BATCH = 2

# (arch, (H, W)): ResNet50 at every size, VGG at fewer (each size is one XLA compile).
PARITY_CASES = [
    ("resnet50", (200, 320)),
    ("resnet50", (160, 160)),
    ("resnet50", (224, 224)),
    ("resnet50", (320, 320)),
    ("vgg16", (200, 320)),
    ("vgg16", (224, 224)),
    ("vgg19", (160, 160)),
]
# VGG19 is converted from .safetensors, the others from .pth.
FILE_FORMAT = {"resnet50": ".pth", "vgg16": ".pth", "vgg19": ".safetensors"}


def torch_model(arch: str) -> torch.nn.Module:
    """torchvision `arch`, random weights, BN with random affine params and calibrated stats."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # running stats become the average over the calibration passes
    if norms:
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 3, 96, 96))
    return model.eval()


def save_state_dict(model: torch.nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)


class Checkpoints:
    """Torch models, their saved files and converted backbones, each built once per module."""

    def __init__(self, root):
        self.root = root
        self.models: dict = {}
        self.converted: dict = {}

    def model(self, arch: str) -> tuple[torch.nn.Module, Path]:
        if arch not in self.models:
            model = torch_model(arch)
            path = self.root / f"{arch}{FILE_FORMAT[arch]}"
            save_state_dict(model, path)
            self.models[arch] = (model, path)
        return self.models[arch]

    def backbone(self, arch: str):
        if arch not in self.converted:
            _, path = self.model(arch)
            out = convert_checkpoint("torchvision", arch, path, self.root / f"{arch}_flax")
            module, variables, meta = load_backbone(out, arch=arch, layout="torchvision")
            self.converted[arch] = (out, jax.jit(module.apply), variables, meta)
        return self.converted[arch]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("torchvision"))


def torch_taps(model: torch.nn.Module, arch: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run torchvision on uint8 RGB NHWC images; return tmrjax's taps as NHWC arrays."""
    modules = {}
    if arch == "resnet50":
        # model.relu runs once, in the stem (each Bottleneck owns its own ReLU).
        modules["conv1"] = model.relu
        for stage in range(1, 5):
            modules[f"conv{stage + 1}"] = getattr(model, f"layer{stage}")
    else:
        block, conv = 1, 0
        for layer in model.features:
            if isinstance(layer, torch.nn.ReLU):
                conv += 1
                modules[f"conv{block}_{conv}"] = layer
            elif isinstance(layer, torch.nn.MaxPool2d):
                modules[f"pool{block}"] = layer
                block, conv = block + 1, 0
    outputs = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach().clone())
        )
        for name, module in modules.items()
    ]
    try:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: out.permute(0, 2, 3, 1).numpy() for name, out in outputs.items()}


@pytest.mark.parametrize("arch,size", PARITY_CASES, ids=[f"{a}-{h}x{w}" for a, (h, w) in PARITY_CASES])
def test_parity_with_torchvision(checkpoints, arch, size, record_property, taps_match):
    model, _ = checkpoints.model(arch)
    _, apply, variables, meta = checkpoints.backbone(arch)
    images = np.random.default_rng(sum(size)).integers(0, 256, (BATCH, *size, 3), dtype=np.uint8)

    expected = torch_taps(model, arch, images)
    got = jax.device_get(apply(variables, images))

    taps_match(got, expected, meta["taps"], RTOL, f"{arch} {size}", record_property)


def test_meta_names_source_and_dropped_head(checkpoints):
    _, _, _, meta = checkpoints.backbone("resnet50")
    assert meta["arch"] == "resnet50" and meta["layout"] == "torchvision"
    assert meta["source"]["framework"] == "torchvision"
    assert meta["source"]["file"] == "resnet50.pth"
    assert meta["source"]["dropped_head_keys"] == ["fc.bias", "fc.weight"]
    assert len(meta["source"]["sha256"]) == 64


def test_wrapped_and_data_parallel_state_dict(checkpoints, tmp_path):
    model, path = checkpoints.model("resnet50")
    wrapped = tmp_path / "wrapped.pt"
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, wrapped)

    plain, plain_dropped = tv.read_checkpoint(path, "resnet50")
    flat, dropped = tv.read_checkpoint(wrapped, "resnet50")
    assert sorted(flat) == sorted(plain) and sorted(dropped) == sorted(plain_dropped)
    for key in [("params", "conv1", "kernel"), ("batch_stats", "conv5_block3", "bn3", "var")]:
        np.testing.assert_array_equal(flat[key], plain[key])
    assert flat[("params", "conv1", "kernel")].shape == (7, 7, 3, 64)


@pytest.mark.parametrize(
    "file_arch,requested", [("resnet50", "vgg16"), ("vgg16", "resnet50"), ("vgg16", "vgg19")]
)
def test_wrong_architecture(checkpoints, file_arch, requested, tmp_path):
    _, path = checkpoints.model(file_arch)
    wrong = f"looks like a torchvision {file_arch} checkpoint, not {requested}"
    with pytest.raises(WeightsError, match=wrong):
        convert_checkpoint("torchvision", requested, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_torchvision_networks_are_named(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="looks like a torchvision resnet18 checkpoint, not resnet50"):
        tv.read_checkpoint(path, "resnet50")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(checkpoints, suffix, tmp_path):
    arch = "resnet50" if suffix == ".pth" else "vgg19"
    _, path = checkpoints.model(arch)
    assert path.suffix == suffix
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        convert_checkpoint("torchvision", arch, truncated, tmp_path / "out")
    assert str(truncated) in str(info.value)


def modified_resnet50(checkpoints, tmp_path, edit) -> Path:
    model, _ = checkpoints.model("resnet50")
    state = dict(model.state_dict())
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


def test_missing_keys_are_listed(checkpoints, tmp_path):
    def drop(state):
        for key in ("layer2.1.conv2.weight", "bn1.running_var", "layer4.0.downsample.1.bias"):
            del state[key]

    path = modified_resnet50(checkpoints, tmp_path, drop)
    with pytest.raises(WeightsError, match=r"missing keys \(3\)") as info:
        convert_checkpoint("torchvision", "resnet50", path, tmp_path / "out")
    message = str(info.value)
    assert str(path) in message
    for flax_key in ("params/conv3_block2/conv2/kernel", "batch_stats/bn1/var",
                     "params/conv5_block1/shortcut_bn/bias"):
        assert flax_key in message
    assert "unexpected" not in message


def test_unexpected_keys_are_listed(checkpoints, tmp_path):
    def add(state):
        state["projector.weight"] = torch.zeros(128, 2048)
        state["layer1.0.conv1.bias"] = torch.zeros(64)  # torchvision's ResNet convs have no bias
        state["layer1.1.downsample.0.weight"] = torch.zeros(256, 256, 1, 1)

    path = modified_resnet50(checkpoints, tmp_path, add)
    with pytest.raises(WeightsError, match=r"unexpected keys \(3\)") as info:
        convert_checkpoint("torchvision", "resnet50", path, tmp_path / "out")
    message = str(info.value)
    for key in ("projector.weight", "layer1.0.conv1.bias", "layer1.1.downsample.0.weight"):
        assert key in message
    assert "missing" not in message


def test_shape_mismatch_names_key_expected_and_got(checkpoints, tmp_path):
    def reshape(state):
        state["layer3.0.conv2.weight"] = torch.zeros(256, 256, 5, 5)
        state["bn1.weight"] = torch.ones(32)

    path = modified_resnet50(checkpoints, tmp_path, reshape)
    with pytest.raises(WeightsError, match="shape mismatches") as info:
        convert_checkpoint("torchvision", "resnet50", path, tmp_path / "out")
    message = str(info.value)
    assert "params/conv4_block1/conv2/kernel: expected (3, 3, 256, 256), got (5, 5, 256, 256)" in message
    assert "params/bn1/scale: expected (64,), got (32,)" in message


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Conv2d(3, 4, 3), path)
    with pytest.raises(WeightsError, match=r"model\.state_dict\(\)") as info:
        tv.read_checkpoint(path, "resnet50")
    assert str(path) in str(info.value)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(WeightsError, match=r"expected \.pth, \.pt or \.safetensors"):
        tv.read_checkpoint(path, "vgg16")


@pytest.mark.parametrize("field,value", [("arch", "vgg16"), ("layout", "keras")])
def test_load_backbone_refuses_other_arch_or_layout(checkpoints, field, value):
    out, _, _, _ = checkpoints.backbone("resnet50")
    with pytest.raises(WeightsError, match=f"checkpoint is {field}=.*but '{value}' was requested"):
        load_backbone(out, **{field: value})


def test_load_backbone_needs_meta_json(tmp_path):
    with pytest.raises(WeightsError, match="no meta.json"):
        load_backbone(tmp_path)


def test_official_files():
    assert tv.LAYOUT == "torchvision"
    assert set(tv.OFFICIAL) == {"resnet50", "vgg16", "vgg19"}
    for files in tv.OFFICIAL.values():
        for official in files:
            assert official.url.startswith("https://download.pytorch.org/models/")
            assert official.hash_name == "sha256"
            assert official.filename.endswith(f"-{official.digest}.pth")
    assert tv.OFFICIAL["resnet50"][0].filename == "resnet50-0676ba61.pth"  # IMAGENET1K_V1
