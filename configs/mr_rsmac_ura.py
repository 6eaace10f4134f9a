"""MR-R-SMAC w/URA.

tursun2021 Table 2 'MR-R-SMAC w/URA' (256-d; 31.0 MAP@100, NAR 0.028), the paper's best:
multi-resolution (160/224/320) R-SMAC on ResNet50 conv4, per region l2 -> PCA-w 256 -> l2,
weighted by IDF over a 1,024-word codebook (Eq. 4), summed over 3x30 regions, l2.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'mr_rsmac_ura'
    c.paper_row = 'MR-R-SMAC w/URA'
    c.embed.resolutions = (160, 224, 320)
    c.embed.regions = 'rmac'
    c.embed.region_levels = 4
    c.embed.pooling = 'smac'
    c.embed.pca_whitening_dim = 256
    c.embed.region_weights = 'idf'
    return c
