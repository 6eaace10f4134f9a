"""R-MAC.

tursun2021 Table 2 'R-MAC' (256-d, ResNet50 conv4, S=4: 30 regions; 27.3 MAP@100, NAR
0.051): regional MAC, per region l2 -> PCA-w 256 -> l2, sum (Eq. 2), l2.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'rmac'
    c.paper_row = 'R-MAC'
    c.embed.regions = 'rmac'
    c.embed.region_levels = 4
    c.embed.pooling = 'mac'
    c.embed.pca_whitening_dim = 256
    return c
