"""Proposed, 256 M, ImageNet EfficientNet-Lite0 head.

jeong2017 Table 1 'Proposed, 256 M', as configs/jeong2017.py builds it, on the shipped EfficientNet-Lite0
(ImageNet; 320 px, configs/shipped.py) at its last convolution, the 1,280-channel ``head`` (after
ReLU6) rather than the ``stage7`` the other Lite0 configs tap: the method assumes non-negative
responses, as VGG19's conv5_4 gives (Eq. 1 sums them into spatial weights, Eq. 2 counts the
positive ones), and stage7 is a linear projection whose channel sums go negative.
"""

from . import jeong2017
from .shipped import on_shipped


def get_config():
    c = on_shipped(jeong2017.get_config(), 'lite0')
    c.backbone.tap = 'head'
    c.paper_row = 'Proposed, 256 M, ImageNet EfficientNet-Lite0 head'
    return c
