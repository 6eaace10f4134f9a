"""MAC, ImageNet EfficientNet-Lite0 stage7.

tursun2019 Table 5 'MAC [25]', as configs/mac.py builds it, on the shipped EfficientNet-Lite0
(ImageNet; stage7, 320 px, or 224/320/448 px for a multi-resolution row); configs/shipped.py says
why these settings.
"""

from . import mac
from .shipped import on_shipped


def get_config():
    return on_shipped(mac.get_config(), 'lite0')
