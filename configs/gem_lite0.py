"""GeM, ImageNet EfficientNet-Lite0 stage7.

Not a paper row: GeM as configs/gem.py builds it (for comparison with tursun2021 Table 2), on the
shipped EfficientNet-Lite0 (ImageNet; stage7, 320 px, or 224/320/448 px for a multi-resolution row);
configs/shipped.py says why these settings.
"""

from . import gem
from .shipped import on_shipped


def get_config():
    return on_shipped(gem.get_config(), 'lite0')
