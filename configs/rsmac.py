"""R-SMAC.

tursun2021 Table 2 'R-SMAC' (256-d; 27.8 MAP@100, NAR 0.045): R-MAC with each region's sum
and max pooling concatenated (Sec. 3, SMAC) before l2 -> PCA-w 256 -> l2.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'rsmac'
    c.paper_row = 'R-SMAC'
    c.embed.regions = 'rmac'
    c.embed.region_levels = 4
    c.embed.pooling = 'smac'
    c.embed.pca_whitening_dim = 256
    return c
