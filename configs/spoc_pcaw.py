"""SPoC, no centre prior.

tursun2019 Table 5 'SPoC PCAw [3]' (256-d, VGG16 conv5_3; 18.9 MAP@100) and tursun2021 Table
1 'SPoC': sum pooling without the centre prior, l2 -> PCA-w 256 -> l2.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'spoc_pcaw'
    c.paper_row = 'SPoC, no centre prior'
    c.backbone.arch = 'vgg16'
    c.backbone.tap = 'conv5_3'
    c.embed.resolutions = (300,)  # tursun2019 Sec. 4.1: marks padded to a white square, 300x300
    c.embed.pooling = 'spoc'
    c.embed.pca_whitening_dim = 256
    return c
