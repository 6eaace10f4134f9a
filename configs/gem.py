"""GeM.

Not a row of the trademark papers: generalised-mean pooling (Radenovic et al., p=3) on
ResNet50 conv4, l2 -> PCA-w 256 -> l2, for comparison with the tursun2021 Table 2 rows at
the same backbone and dimension.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'gem'
    c.paper_row = 'GeM'
    c.embed.pooling = 'gem'
    c.embed.pca_whitening_dim = 256
    return c
