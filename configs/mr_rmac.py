"""MR-R-MAC.

tursun2021 Table 2 'MR-R-MAC' (256-d; 29.1 MAP@100, NAR 0.040): R-MAC over 160/224/320
inputs, all 3x30 post-processed regions summed (Eq. 3).
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'mr_rmac'
    c.paper_row = 'MR-R-MAC'
    c.embed.resolutions = (160, 224, 320)
    c.embed.regions = 'rmac'
    c.embed.region_levels = 4
    c.embed.pooling = 'mac'
    c.embed.pca_whitening_dim = 256
    return c
