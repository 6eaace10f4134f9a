"""Pure, jit/vmap-compiled array kernels (installed as ``tmrjax.kernels``).

Feature maps are NHWC, (..., H, W, C); kernels accumulate in float32 and depend on
jax and numpy only. No name here is also a submodule's: the CRoW feature is
``tmrjax.kernels.crow.crow``, so ``tmrjax.kernels.crow`` stays the module.
"""

from .aggregation import first_order_pool, log_cov_pool, reduce_local, spatial_weights, spd_log, vec_upper
from .candidates import alpha_peaks, cluster_points, cluster_subsets, hull_masks
from .crow import crow_channel_weights, crow_spatial_weights
from .expansion import average_query_expansion, database_augmentation, regional_database_augmentation
from .idf import assign_words, document_frequency, idf_from_document_frequency, idf_weights
from .matching import region_similarity, regional_query_expansion
from .pooling import (
    gem,
    l2_normalize,
    mac,
    regional_gem,
    regional_mac,
    regional_smac,
    regional_spoc,
    smac,
    spoc,
)
from .regions import RegionIntervals, region_intervals, region_masks, rmac_regions
from .whitening import apply_pca_whitening, learn_pca_whitening

__all__ = [
    "RegionIntervals",
    "alpha_peaks",
    "apply_pca_whitening",
    "assign_words",
    "average_query_expansion",
    "cluster_points",
    "cluster_subsets",
    "crow_channel_weights",
    "crow_spatial_weights",
    "database_augmentation",
    "document_frequency",
    "first_order_pool",
    "gem",
    "hull_masks",
    "idf_from_document_frequency",
    "idf_weights",
    "l2_normalize",
    "learn_pca_whitening",
    "log_cov_pool",
    "mac",
    "reduce_local",
    "region_intervals",
    "region_masks",
    "region_similarity",
    "regional_database_augmentation",
    "regional_gem",
    "regional_mac",
    "regional_query_expansion",
    "regional_smac",
    "regional_spoc",
    "rmac_regions",
    "smac",
    "spatial_weights",
    "spd_log",
    "spoc",
    "vec_upper",
]
