"""O2_W, HED VGG16 conv4_3.

jeong2017 Fig. 1 'O2_W', as configs/jeong2017_whole.py builds it, on the shipped
HED VGG16 (ImageNet VGG16 fine-tuned on BSDS500 edges; conv4_3, 224 px); configs/shipped.py says why these settings.
"""

from . import jeong2017_whole
from .shipped import on_shipped


def get_config():
    return on_shipped(jeong2017_whole.get_config(), 'hed')
