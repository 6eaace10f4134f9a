"""The paper pipelines on the shipped backbones: which tap and input sizes each backbone gets.

ImageNet VGG16/ResNet50 files cannot be shipped, so every paper config has a variant on the
backbones that install with pip: EfficientNet-Lite0 (ImageNet, Apache-2.0) and HED's VGG16
(ImageNet VGG16 fine-tuned for edges on BSDS500, MIT). A variant keeps its paper row's pooling,
regions, whitening and URA; the tap and the input sizes below were chosen by measurement on
logo_groups/small, fitting on distractors only (benchmarks/RESULTS.md, "Settings of the shipped
backbones"). Multi-resolution rows keep the papers' size ratios (160 : 224 : 320) around the
backbone's best single size.
"""

from ml_collections import ConfigDict

# name in configs -> (arch, shipped weights, tap, single-resolution input, multi-resolution inputs, description)
BACKBONES = {
    "lite0": ("efficientnet_lite0", "efficientnet_lite0", "stage7", (320,), (224, 320, 448),
              "ImageNet EfficientNet-Lite0 stage7"),
    "hed": ("vgg16", "hed_vgg16", "conv4_3", (224,), (160, 224, 320), "HED VGG16 conv4_3"),
}


def on_shipped(c: ConfigDict, backbone: str) -> ConfigDict:
    """Paper config `c` moved onto shipped `backbone` (a BACKBONES key); named ``<name>_<backbone>``."""
    arch, weights, tap, single, multi, description = BACKBONES[backbone]
    c.name = f"{c.name}_{backbone}"
    c.paper_row = f"{c.paper_row}, {description}"
    c.backbone.arch, c.backbone.weights, c.backbone.tap = arch, weights, tap
    c.embed.resolutions = multi if len(c.embed.resolutions) > 1 else single
    return c
