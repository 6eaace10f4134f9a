"""Regional second-order descriptors with region matching (jeong2017), D = 256.

jeong2017 Table 1 'Proposed, 256 M' (Oxford 0.725, Paris 0.798, Holidays 0.882 mAP): VGG19's
last convolution (conv5_4, K = 512); salient points (the strongest local maxima of the spatial
weights, Eq. 1) clustered into L = 3 groups, the convex hulls of the 2^3 - 1 subsets plus the
whole map (M = 8 regions); per region, local descriptors reduced to K' = 128 by PCA bases of
first-order regional descriptors (Eq. 4), their alpha-weighted log-covariance (Eq. 5), l2,
PCA-whitening to D = 256 (Eq. 6), l2; images ranked by their best-matched pair of regions (Eq. 7).
The paper keeps the images' own sizes (up to 1,024 px); marks are padded to a 448 px square.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'jeong2017'
    c.paper_row = 'Proposed, 256 M'
    c.backbone.arch = 'vgg19'
    c.backbone.tap = 'conv5_4'
    c.embed.resolutions = (448,)
    c.embed.regions = 'candidates'
    c.embed.candidate_clusters = 3
    c.embed.spatial_attention = 'channel_sum'
    c.embed.pooling = 'second_order'
    c.embed.local_dim = 128
    c.embed.pca_whitening_dim = 256
    c.embed.output = 'regions'
    c.batch_size = 8
    return c
