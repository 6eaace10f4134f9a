"""First-order regional descriptors with region matching (jeong2017 Fig. 1, O1_R).

jeong2017 Fig. 1 'O1_R': configs/jeong2017.py with the alpha-weighted first-order pooling of
Eq. 9 (beta o sum of alpha-weighted cells) in place of the log-covariance, over the same M = 8
candidate regions, PCA-whitened to 256 and matched region by region (Eq. 7).
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_first_order'
    c.paper_row = 'O1_R'
    c.embed.pooling = 'first_order'
    return c
