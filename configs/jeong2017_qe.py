"""Regional second-order descriptors, region matching and regional query expansion (jeong2017).

jeong2017 Table 1 'Proposed + QE, 256 M' (Oxford 0.791, Paris 0.862 mAP): configs/jeong2017.py,
then the query searched again with the mean of the best-matched regions of its N_QE = 10
top-ranked images (Sec. 4.2, Eq. 8).
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_qe'
    c.paper_row = 'Proposed + QE, 256 M'
    c.search.query_expansion = 10
    return c
