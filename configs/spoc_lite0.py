"""SPoC with centre prior, ImageNet EfficientNet-Lite0 stage7.

tursun2019 Table 5 'SPoC PCAwc [3]', as configs/spoc.py builds it, on the shipped EfficientNet-Lite0
(ImageNet; stage7, 320 px, or 224/320/448 px for a multi-resolution row); configs/shipped.py says
why these settings.
"""

from . import spoc
from .shipped import on_shipped


def get_config():
    return on_shipped(spoc.get_config(), 'lite0')
