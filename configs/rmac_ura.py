"""R-MAC w/URA.

tursun2021 Table 2 'R-MAC w/URA' (256-d; 29.6 MAP@100, NAR 0.039): each post-processed
region weighted by the IDF of its word in a 1,024-word k-means codebook learned on the
gallery (Eq. 4).
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'rmac_ura'
    c.paper_row = 'R-MAC w/URA'
    c.embed.regions = 'rmac'
    c.embed.region_levels = 4
    c.embed.pooling = 'mac'
    c.embed.pca_whitening_dim = 256
    c.embed.region_weights = 'idf'
    return c
