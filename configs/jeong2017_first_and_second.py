"""First- and second-order regional descriptors side by side, with region matching.

Not a paper row ('O1 + O2'): jeong2017 Fig. 1 finds the two orders complementary (O1 and O2 over the same
regions); this config pools both per region (Eq. 9 and Eq. 5, each l2-normalised, scaled by
1/sqrt(2) and concatenated) before one PCA-whitening to 256 (Eq. 6), over the M = 8 candidate
regions of configs/jeong2017.py, matched region by region (Eq. 7).
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_first_and_second'
    c.paper_row = 'O1 + O2'
    c.embed.pooling = 'first_and_second_order'
    return c
