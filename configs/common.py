"""Defaults shared by the off-the-shelf retrieval configs; each method file overrides them.

Fields under `backbone` and `embed` define the vectors (they are hashed: artefacts and
indexes fitted for one config are refused by another). `fit`, `index` and `batch_size`
only say how to compute them.
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
    c.embed.resolutions = (224,)  # input sizes; the image is padded to a white square first
    c.embed.region_levels = 0  # 0: one global region; L: the R-MAC grid of levels 1..L
    c.embed.include_full_map = False  # add the whole map as an extra region (cirtorch) or not (tursun2021)
    c.embed.pooling = "mac"  # mac | spoc | gem | smac | crow | identity (the tap is a vector) | flatten
    c.embed.center_prior = False  # SPoC's Gaussian centre prior (Babenko & Lempitsky 2015)
    c.embed.gem_p = 3.0
    c.embed.pca_whitening_dim = 0  # 0: no PCA-whitening; else l2 -> PCA-w to this dim -> l2 per region
    c.embed.whitening_power = 0.5  # eigenvalue ** -power: 0.5 full whitening, smaller values partial
    c.embed.attention = "none"  # none | idf (tursun2021 URA, Eq. 4)
    c.embed.codebook_size = 1024

    c.fit = ConfigDict()
    c.fit.num_images = 30000  # gallery images sampled for PCA-w / codebook / IDF (tursun2021)
    c.fit.max_descriptors = 200000  # regional descriptors kept for PCA and k-means
    c.fit.kmeans_iterations = 20
    c.fit.seed = 0

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
    c.batch_size = min(part.batch_size for part in parts.values())
    return c
