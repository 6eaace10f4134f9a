"""MR-R-MAC w/URA.

tursun2021 Table 1/2 'MR-R-MAC w/URA' (256-d; 30.6 MAP@100, NAR 0.033): multi-resolution
R-MAC with unsupervised regional attention (Eq. 4).
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'mr_rmac_ura'
    c.paper_row = 'MR-R-MAC w/URA'
    c.embed.resolutions = (160, 224, 320)
    c.embed.regions = 'rmac'
    c.embed.region_levels = 4
    c.embed.pooling = 'mac'
    c.embed.pca_whitening_dim = 256
    c.embed.region_weights = 'idf'
    return c
