"""Proposed, 256 M, det-of-Hessian salient points: jeong2017 with salient points detected in the image.

jeong2017 Table 1 'Proposed, 256 M' as configs/jeong2017.py builds it, with the salient points of
Sec. 2 found as the paper finds them rather than as the map's own peaks: points detected in the
image, sorted by the spatial weights alpha (Eq. 1) at their positions, the N_max = 4,000 largest
kept, and the N_min = 300 largest values of alpha instead when fewer than N_min are found (Sec. 5).
The detector is scikit-image's determinant-of-Hessian (box filters, no affine adaptation),
standing in for the Hessian-affine detector, which neither scikit-image nor OpenCV ships; only
the locations are used (tmrjax/data/salient_points.py says how the two differ). The load workers
run it on every image at each resolution (README, "Region matching").
"""

from . import jeong2017


def get_config():
    c = jeong2017.get_config()
    c.name = 'jeong2017_hessian'
    c.paper_row = 'Proposed, 256 M, det-of-Hessian salient points'
    c.embed.salient_points = 'hessian'
    c.embed.candidate_points = 4000  # N_max
    c.embed.candidate_points_min = 300  # N_min
    return c
