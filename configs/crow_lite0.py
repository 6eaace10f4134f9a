"""CRoW, ImageNet EfficientNet-Lite0 stage7.

tursun2019 Table 5 / tursun2021 Table 1 'CRoW [10]', as configs/crow.py builds it, on the shipped
EfficientNet-Lite0 (ImageNet; stage7, 320 px, or 224/320/448 px for a multi-resolution row);
configs/shipped.py says why these settings. One exception: CRoW's spatial weights are square
roots of channel sums, so it needs non-negative activations; stage7 is a linear projection (it
gives NaN), so CRoW taps the head (after ReLU6).
"""

from . import crow
from .shipped import on_shipped


def get_config():
    c = on_shipped(crow.get_config(), 'lite0')
    c.backbone.tap = 'head'
    return c
