"""R-SMAC, ImageNet EfficientNet-Lite0 stage7.

tursun2021 Table 2 'R-SMAC', as configs/rsmac.py builds it, on the shipped EfficientNet-Lite0
(ImageNet; stage7, 320 px, or 224/320/448 px for a multi-resolution row); configs/shipped.py says
why these settings.
"""

from . import rsmac
from .shipped import on_shipped


def get_config():
    return on_shipped(rsmac.get_config(), 'lite0')
