"""Proposed, 256 M, HED VGG16 conv4_3.

jeong2017 Table 1 'Proposed, 256 M', as configs/jeong2017.py builds it, on the shipped
HED VGG16 (ImageNet VGG16 fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these settings.
"""

from . import jeong2017
from .shipped import on_shipped


def get_config():
    return on_shipped(jeong2017.get_config(), 'hed')
