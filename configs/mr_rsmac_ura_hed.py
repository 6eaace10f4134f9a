"""MR-R-SMAC w/URA, HED VGG16 conv4_3.

tursun2021 Table 2 'MR-R-SMAC w/URA', as configs/mr_rsmac_ura.py builds it, on the shipped
HED VGG16 (ImageNet VGG16 fine-tuned on BSDS500 edges; conv4_3 at 160/224/320 px, the paper's
ratios around HED's 224 px); configs/shipped.py says why these settings.
"""

from . import mr_rsmac_ura
from .shipped import on_shipped


def get_config():
    return on_shipped(mr_rsmac_ura.get_config(), 'hed')
