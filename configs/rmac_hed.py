"""R-MAC, HED VGG16 conv4_3.

tursun2021 Table 2 'R-MAC', as configs/rmac.py builds it, on the shipped HED VGG16 (ImageNet VGG16
fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these settings.
"""

from . import rmac
from .shipped import on_shipped


def get_config():
    return on_shipped(rmac.get_config(), 'hed')
