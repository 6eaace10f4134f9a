"""Regional second-order descriptors with region matching (jeong2017), D = 128.

jeong2017 Table 1 'Proposed, 128 M': configs/jeong2017.py with PCA-whitening to D = 128 (Eq. 6).
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_128'
    c.paper_row = 'Proposed, 128 M'
    c.embed.pca_whitening_dim = 128
    return c
