"""SPoC, no centre prior, HED VGG16 conv4_3.

tursun2019 Table 5 'SPoC PCAw [3]', as configs/spoc_pcaw.py builds it, on the shipped HED VGG16
(ImageNet VGG16 fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these
settings.
"""

from . import spoc_pcaw
from .shipped import on_shipped


def get_config():
    return on_shipped(spoc_pcaw.get_config(), 'hed')
