"""MAC, HED VGG16 conv4_3.

tursun2019 Table 5 'MAC [25]', as configs/mac.py builds it, on the shipped HED VGG16 (ImageNet VGG16
fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these settings.
"""

from . import mac
from .shipped import on_shipped


def get_config():
    return on_shipped(mac.get_config(), 'hed')
