"""SPoC with centre prior, HED VGG16 conv4_3.

tursun2019 Table 5 'SPoC PCAwc [3]', as configs/spoc.py builds it, on the shipped HED VGG16
(ImageNet VGG16 fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these
settings.
"""

from . import spoc
from .shipped import on_shipped


def get_config():
    return on_shipped(spoc.get_config(), 'hed')
