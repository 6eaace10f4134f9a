"""R-MAC on Lite0 + HED: two shipped backbones side by side, tmrjax's default pipeline.

Not a paper row: tursun2021 Table 2's 'R-MAC' (regional MAC over the R-MAC grid, per region
l2 -> PCA-w 256 -> l2, summed, l2) computed on each of the two backbones tmrjax ships, and the
two 256-d vectors concatenated with equal weight (512 dims; the cosine of two marks is the mean
of the two cosines). ImageNet EfficientNet-Lite0 stage7 at 320 px sees what a mark depicts;
HED's VGG16 conv4_3 at 224 px, fine-tuned to find edges, sees how it is drawn. Grid level
L = 3 and the tap, size and whitening of each part were chosen by measurement on
logo_groups/small, fitting on distractors only; the pair beat either part alone there by a
clear margin (benchmarks/RESULTS.md, "Settings of the shipped backbones").
"""

from . import rmac_hed, rmac_lite0
from .common import combined_config


def get_config():
    parts = {"lite0": rmac_lite0.get_config(), "hed": rmac_hed.get_config()}
    for part in parts.values():
        part.embed.region_levels = 3
    return combined_config('rmac_lite0_hed', 'R-MAC on Lite0 + HED', parts, {"lite0": 1.0, "hed": 1.0})
