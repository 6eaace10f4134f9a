"""Proposed + QE, 256 M, HED VGG16 conv4_3.

jeong2017 Table 1 'Proposed + QE, 256 M', as configs/jeong2017_qe.py builds it, on the shipped
HED VGG16 (ImageNet VGG16 fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these settings.
"""

from . import jeong2017_qe
from .shipped import on_shipped


def get_config():
    return on_shipped(jeong2017_qe.get_config(), 'hed')
