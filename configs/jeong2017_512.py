"""Regional second-order descriptors with region matching (jeong2017), D = 512.

jeong2017 Table 1 'Proposed, 512 M': configs/jeong2017.py with PCA-whitening to D = 512 (Eq. 6).
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_512'
    c.paper_row = 'Proposed, 512 M'
    c.embed.pca_whitening_dim = 512
    return c
