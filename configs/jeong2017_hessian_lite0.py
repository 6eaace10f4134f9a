"""Proposed, 256 M, det-of-Hessian salient points, ImageNet EfficientNet-Lite0 head.

jeong2017 Table 1 'Proposed, 256 M' with the paper's salient points, as configs/jeong2017_hessian.py
builds it (Sec. 2 and 5: points detected in the image ranked by alpha, N_max = 4,000, N_min = 300;
scikit-image's det-of-Hessian standing in for Hessian-affine), on the shipped EfficientNet-Lite0
at its ``head``, 320 px, for the reasons configs/jeong2017_lite0.py gives.
"""

from . import jeong2017_hessian
from .shipped import on_shipped


def get_config():
    c = on_shipped(jeong2017_hessian.get_config(), 'lite0')
    c.backbone.tap = 'head'
    c.paper_row = 'Proposed, 256 M, det-of-Hessian salient points, ImageNet EfficientNet-Lite0 head'
    return c
