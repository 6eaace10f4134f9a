"""Defaults shared by the off-the-shelf retrieval configs; each method file overrides them.

Fields under `backbone` and `embed` define the vectors (they are hashed: artefacts and
indexes fitted for one config are refused by another). `fit`, `search`, `index` and
`batch_size` only say how to compute and search them.
"""

from ml_collections import ConfigDict

from ..index_kinds import config_defaults


def retrieval_config() -> ConfigDict:
    c = ConfigDict()
    c.name = ""
    c.paper_row = ""  # the paper table row the config reproduces

    c.backbone = ConfigDict()
    c.backbone.arch = "resnet50"
    c.backbone.tap = "conv4"
    # Default weights: a shipped backbone's name (efficientnet_lite0, hed_vgg16: real pretrained
    # weights from pip packages), a converted backbone directory, "random" (random initialisation,
    # only when asked for) or "" (none: the user passes --weights, e.g. ImageNet ResNet50/VGG16
    # converted with `tmrjax convert`). Not hashed: the weights used carry their own digest.
    c.backbone.weights = ""

    c.embed = ConfigDict()
    # One entry of each stage registry in tmrjax/stages.py, in the order the map goes through them.
    c.embed.resolutions = (224,)  # input sizes; the image is padded to a white square first
    c.embed.regions = "global"  # global (the whole map) | rmac (the R-MAC grid) | candidates (jeong2017 hulls)
    c.embed.region_levels = 0  # rmac: the grid's levels 1..L; 0 for the other regions
    c.embed.include_full_map = False  # rmac: add the whole map as an extra region (cirtorch) or not (tursun2021)
    # candidates: where the salient points come from: alpha_peaks (the strongest local maxima of jeong2017
    # Eq. 1 on the map) | hessian (jeong2017 Sec. 2: points detected in the image, ranked by Eq. 1;
    # tmrjax/data/salient_points.py, scikit-image's det-of-Hessian for Hessian-affine)
    c.embed.salient_points = "alpha_peaks"
    c.embed.candidate_points = 300  # candidates: salient points kept (hessian: N_max, jeong2017 Sec. 5: 4,000)
    c.embed.candidate_points_min = 300  # hessian: N_min; fewer points -> the N_min largest-alpha cells
    c.embed.candidate_clusters = 3  # candidates: L clusters -> 2^L regions (jeong2017 Sec. 2)
    c.embed.spatial_attention = "none"  # none | channel_sum (jeong2017 Eq. 1): a weight per cell
    # mac | spoc | gem | smac | crow | identity (the tap is a vector) | flatten (every cell)
    # | first_order | second_order | first_and_second_order (jeong2017 Eq. 3/9, 4-5; over region masks)
    c.embed.pooling = "mac"
    c.embed.center_prior = False  # SPoC's Gaussian centre prior (Babenko & Lempitsky 2015)
    c.embed.gem_p = 3.0
    c.embed.local_dim = 128  # second_order: K', the PCA-reduced local descriptors (jeong2017 Eq. 4)
    # second_order: covariance eigenvalues below this fraction of the largest are raised to it before
    # the matrix log (Eq. 5), above float32 eigh noise (kernels.aggregation.spd_log)
    c.embed.eigenvalue_floor = 1e-4
    c.embed.pca_whitening_dim = 0  # 0: no PCA-whitening; else l2 -> PCA-w to this dim -> l2 per region
    c.embed.whitening_power = 0.5  # eigenvalue ** -power: 0.5 full whitening, smaller values partial
    c.embed.region_weights = "uniform"  # uniform | idf (tursun2021 URA, Eq. 4)
    c.embed.codebook_size = 1024  # idf: the visual words
    c.embed.output = "image"  # image (weighted sum of the regions) | regions (R vectors, region matching)

    c.fit = ConfigDict()
    c.fit.num_images = 30000  # gallery images sampled for PCA-w / codebook / IDF (tursun2021)
    c.fit.max_descriptors = 200000  # regional descriptors kept for PCA and k-means
    c.fit.kmeans_iterations = 20
    c.fit.seed = 0

    # Search-time post-processing of the vectors (tmrjax/rerank.py); not hashed: the vectors stay the same.
    c.search = ConfigDict()
    c.search.query_expansion = 0  # n > 0: alpha-QE over the n top images (regions: jeong2017 Eq. 8, N_QE = 10)
    c.search.qe_alpha = 3.0  # alpha-QE's score exponent (0: average QE); regional QE averages (Eq. 8)
    c.search.database_augmentation = 0  # n > 0: DBA, each image summed with its n nearest images
    c.search.dba_alpha = 3.0

    # kind (flat | ivfpq | hnsw) and every kind's parameters (nlist, ..., ef_search): tmrjax/index_kinds.py
    c.index = ConfigDict(config_defaults())

    c.batch_size = 16
    return c


def combined_config(name: str, paper_row: str, parts: dict, weights: dict) -> ConfigDict:
    """Several pipelines' vectors side by side (tmrjax.pipeline.CombinedPipeline).

    `parts`: {part name: retrieval config}; `weights`: {part name: w}: the cosine of two marks is
    the w-weighted mean of their parts' cosines. Indexing and batching follow the first part.
    """
    c = ConfigDict()
    c.name = name
    c.paper_row = paper_row
    c.parts = ConfigDict(parts)
    c.part_weights = ConfigDict(weights)
    first = next(iter(parts.values()))
    c.index = first.index
    c.search = first.search
    c.batch_size = min(part.batch_size for part in parts.values())
    return c
