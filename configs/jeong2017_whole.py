"""Second-order descriptor of the whole image (jeong2017 Fig. 1, O2_W).

jeong2017 Fig. 1 'O2_W': configs/jeong2017.py with only the biggest region R_M (the whole map):
one alpha-weighted log-covariance descriptor per image, PCA-whitened to 256; no region matching.
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_whole'
    c.paper_row = 'O2_W'
    c.embed.regions = 'global'
    c.embed.output = 'image'
    return c
