"""CRoW.

tursun2019 Table 5 / tursun2021 Table 1 'CRoW [10]' (256-d, VGG16 conv5_3; 19.8 MAP@100):
Kalantidis et al.'s spatial and channel weighting, sum, l2 -> PCA-w 256 -> l2.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'crow'
    c.paper_row = 'CRoW'
    c.backbone.arch = 'vgg16'
    c.backbone.tap = 'conv5_3'
    c.embed.resolutions = (300,)  # tursun2019 Sec. 4.1: marks padded to a white square, 300x300
    c.embed.pooling = 'crow'
    c.embed.pca_whitening_dim = 256
    return c
