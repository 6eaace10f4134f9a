"""The stages a pipeline's embedding function is composed of, each a small registry keyed by a config field.

One resolution's feature map (B, h, w, C), with the salient points detected in its images when the
config asks for them (`DetectedPoints`), goes through, in order:

    embed.regions            REGIONS             -> which cells each region holds: static boxes or per-image masks
      embed.salient_points   SALIENT_POINTS      -> candidates: the points the hulls are built on
    embed.spatial_attention  SPATIAL_ATTENTIONS  -> a weight per cell (B, h, w), or none
    embed.pooling            POOLINGS            -> one raw descriptor per region (B, R, D')
    (post-processing)        `postprocess`       -> l2 -> PCA-whitening -> l2 when fitted (B, R, d)
    embed.region_weights     REGION_WEIGHTS      -> a weight per region (B, R), 0 for invalid regions

and `aggregate` sums the weighted regions into one vector per image (tursun2021 Eq. 2-4), or
`region_vectors` keeps them as R vectors per image for region matching (jeong2017 Eq. 7). A method is a choice
of one entry per stage in its config; adding one means adding an entry, not a branch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from .kernels import aggregation, candidates, crow, idf, pooling, regions, whitening

Arrays = Mapping[str, jax.Array]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["positions", "valid"], meta_fields=["image_size"])
@dataclasses.dataclass(frozen=True)
class DetectedPoints:
    """Salient points detected in one resolution's images on the host (`tmrjax.data.salient_points`):
    `positions` (B, P, 2) float32 (row, column) pixel positions in the image_size-pixel square the
    backbone sees, strongest response first; `valid` (B, P) bool, False for padding. A pytree whose
    image_size is static, so it passes through jit and vmap with the feature maps."""

    positions: jax.Array
    valid: jax.Array
    image_size: int

    @classmethod
    def none(cls, batch: int, image_size: int) -> DetectedPoints:
        """No point in any image (every image then takes its largest-alpha cells): a stand-in for tracing."""
        return cls(jnp.zeros((batch, 1, 2), jnp.float32), jnp.zeros((batch, 1), bool), image_size)


class StageError(ValueError):
    """A stage given input it cannot take (e.g. a global-only pooling asked for regions)."""


# ----------------------------------------------------------------------------------------
# Regions


@dataclasses.dataclass(frozen=True)
class Regions:
    """The regions of one batch's feature maps: static boxes shared by every image, or masks per image.

    `boxes` (R, 4) int32 [y0, x0, y1, x1) cells (R-MAC grid, the whole map), or `masks` (B, R, h, w)
    float32 0/1 (jeong2017's candidate hulls). `valid` (B, R) bool: False for a padded region
    (a candidate subset without a cell); such regions get weight 0 and are never matched.
    """

    boxes: np.ndarray | None
    masks: jax.Array | None
    valid: jax.Array
    whole_map: bool = False  # the one region is the whole map: a pooling's global form applies

    def as_masks(self, h: int, w: int) -> jax.Array:
        """(B, R, h, w) or (R, h, w) 0/1 masks of these regions."""
        return self.masks if self.masks is not None else jnp.asarray(regions.region_masks(self.boxes, h, w))


def global_region(features: jax.Array, embed: ConfigDict, points: DetectedPoints | None) -> Regions:
    """The whole map as the one region."""
    box = np.array([[0, 0, features.shape[1], features.shape[2]]], np.int32)
    return Regions(boxes=box, masks=None, valid=jnp.ones((features.shape[0], 1), bool), whole_map=True)


def rmac_grid(features: jax.Array, embed: ConfigDict, points: DetectedPoints | None) -> Regions:
    """The R-MAC grid of levels 1..L (tursun2021 Sec. 3; `kernels.regions.rmac_regions`)."""
    boxes = regions.rmac_regions(features.shape[1], features.shape[2], levels=embed.region_levels,
                                 include_full_map=embed.include_full_map)
    return Regions(boxes=boxes, masks=None, valid=jnp.ones((features.shape[0], len(boxes)), bool))


@dataclasses.dataclass(frozen=True)
class SalientPoints:
    """Where candidate regions take their salient points: `find(alpha (h, w), one image's detected
    points or None, embed) -> (points (candidate_points, 2) map cells, valid)`; `detected`: it ranks
    points detected in the image, which the host finds (`tmrjax.data.salient_points`) and passes along."""

    find: Callable[[jax.Array, DetectedPoints | None, ConfigDict], tuple[jax.Array, jax.Array]]
    detected: bool = False


SALIENT_POINTS: dict[str, SalientPoints] = {
    # The strongest local maxima of alpha: no detector, the map's own peaks.
    "alpha_peaks": SalientPoints(lambda alpha, detected, e: candidates.alpha_peaks(alpha, e.candidate_points)),
    # jeong2017 Sec. 2 and 5: image points (det-of-Hessian standing in for Hessian-affine) ranked by alpha,
    # the N_max = candidate_points largest kept, below N_min = candidate_points_min the largest-alpha cells.
    "hessian": SalientPoints(
        lambda alpha, detected, e: candidates.salient_point_set(
            detected.positions, detected.valid, alpha, detected.image_size, e.candidate_points,
            e.candidate_points, e.candidate_points_min),
        detected=True),
}


def candidate_hulls(features: jax.Array, embed: ConfigDict, points: DetectedPoints | None) -> Regions:
    """jeong2017 Sec. 2: salient points (`SALIENT_POINTS[embed.salient_points]`, ranked by the spatial
    weights alpha, Eq. 1), k-means of their positions into L = `candidate_clusters` clusters, and the
    convex hull of every non-empty subset plus the whole map: M = 2^L regions."""
    h, w = features.shape[1:3]
    clusters, rule = embed.candidate_clusters, SALIENT_POINTS[embed.salient_points]
    if rule.detected and points is None:
        raise StageError(f"salient_points={embed.salient_points!r} builds regions on points detected in the "
                         "images; pass them with the feature maps (DetectedPoints, tmrjax.data.salient_points)")

    def one(f, detected):
        found, valid = rule.find(aggregation.spatial_weights(f), detected, embed)
        labels = candidates.cluster_points(found, valid, clusters)
        return candidates.hull_masks(found, valid, labels, clusters, h, w)

    points = points if rule.detected else None
    if features.shape[0] == 1:  # XLA:CPU ran k-means vmapped over one image's 4,000 points 6x slower than unbatched
        masks, valid = jax.tree.map(lambda x: x[None], one(features[0], jax.tree.map(lambda x: x[0], points)))
    else:
        masks, valid = jax.vmap(one)(features, points)
    return Regions(boxes=None, masks=masks, valid=valid)


REGIONS: dict[str, Callable[[jax.Array, ConfigDict, DetectedPoints | None], Regions]] = {
    "global": global_region,
    "rmac": rmac_grid,
    "candidates": candidate_hulls,
}


# ----------------------------------------------------------------------------------------
# Spatial attention: a weight per cell, applied by the pooling


SPATIAL_ATTENTIONS: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "none": None,
    # jeong2017 Eq. 1: the channel sum of the map, l2-normalised over the cells.
    "channel_sum": aggregation.spatial_weights,
}


# ----------------------------------------------------------------------------------------
# Pooling: raw regional descriptors


@dataclasses.dataclass(frozen=True)
class Pooling:
    """One pooling in the forms it has: over the whole map, over static boxes, over masks.

    whole (B, h, w, C) -> (B, D'); boxes (features, boxes) -> (B, R, D'); masks (features, masks,
    alpha, artefacts, embed) -> (B, R, D'), alpha (B, h, w) the spatial weights (ones without
    attention). A pooling without a mask form takes spatial attention as a reweighted map.
    `local_projection`: it needs the fitted PCA bases of local descriptors (jeong2017 Eq. 4).
    """

    whole: Callable[[jax.Array, ConfigDict], jax.Array] | None
    boxes: Callable[[jax.Array, np.ndarray, ConfigDict], jax.Array] | None = None
    masks: Callable[[jax.Array, jax.Array, jax.Array, Arrays, ConfigDict], jax.Array] | None = None
    local_projection: bool = False

    def regional(self, kind: str) -> bool:
        """Whether this pooling takes the regions of REGIONS[kind]."""
        if kind == "global":
            return self.whole is not None or self.masks is not None
        if kind == "rmac":
            return self.boxes is not None or self.masks is not None
        return self.masks is not None


def first_order(features: jax.Array, masks: jax.Array, alpha: jax.Array, arts: Arrays, embed: ConfigDict) -> jax.Array:
    """jeong2017 Eq. 3 (Eq. 9 with spatial attention): l2(beta o sum of the region's (weighted) cells)."""
    return aggregation.first_order_pool(features, crow.crow_channel_weights(features), alpha, masks)


def second_order(features: jax.Array, masks: jax.Array, alpha: jax.Array, arts: Arrays, embed: ConfigDict) -> jax.Array:
    """jeong2017 Eq. 4-5: local descriptors U^T (beta o f) -> alpha-weighted log-covariance per region, l2."""
    local = aggregation.reduce_local(features, crow.crow_channel_weights(features), arts["local_projection"])
    return aggregation.log_cov_pool(local, alpha, masks, embed.eigenvalue_floor)


def first_and_second_order(features, masks, alpha, arts, embed) -> jax.Array:
    """Both orders side by side, each l2-normalised and scaled by 1/sqrt(2) (a unit vector whose cosine is
    the mean of the two orders' cosines before PCA-whitening)."""
    both = [first_order(features, masks, alpha, arts, embed), second_order(features, masks, alpha, arts, embed)]
    return jnp.concatenate(both, axis=-1) / np.sqrt(2.0).astype(np.float32)


def _single_position(features: jax.Array) -> jax.Array:
    """(B, 1, 1, D) -> (B, D); any other map is an error (it would need a real pooling)."""
    if features.shape[1:3] != (1, 1):
        raise StageError(
            f"pooling 'identity' takes a global vector (a 1 x 1 tap such as hu2024's 'feature'), "
            f"got a {features.shape[1]} x {features.shape[2]} map; pool it with mac, spoc, gem, smac or crow"
        )
    return features[:, 0, 0, :]


POOLINGS: dict[str, Pooling] = {
    "mac": Pooling(lambda x, e: pooling.mac(x), lambda x, b, e: pooling.regional_mac(x, b)),
    "spoc": Pooling(lambda x, e: pooling.spoc(x, center_prior=e.center_prior),
                    lambda x, b, e: pooling.regional_spoc(x, b)),
    "gem": Pooling(lambda x, e: pooling.gem(x, p=e.gem_p), lambda x, b, e: pooling.regional_gem(x, b, p=e.gem_p)),
    "smac": Pooling(lambda x, e: pooling.smac(x), lambda x, b, e: pooling.regional_smac(x, b)),
    "crow": Pooling(lambda x, e: crow.crow(x)),
    # The tap is a global vector already (a 1 x 1 map), e.g. the hu2024 encoder's "feature".
    "identity": Pooling(lambda x, e: _single_position(x)),
    # Every cell of the map, in order: the pixel baseline (the ink thumbnail).
    "flatten": Pooling(lambda x, e: x.reshape(x.shape[0], -1)),
    "first_order": Pooling(None, masks=first_order),
    "second_order": Pooling(None, masks=second_order, local_projection=True),
    "first_and_second_order": Pooling(None, masks=first_and_second_order, local_projection=True),
}


def describe(
    features: jax.Array, embed: ConfigDict, arts: Arrays, points: DetectedPoints | None = None
) -> tuple[jax.Array, jax.Array]:
    """Raw regional descriptors of a feature map and their valid flags: (B, h, w, C) -> ((B, R, D')
    float32, (B, R) bool), through the config's regions (on `points`, when they need them), spatial
    attention and pooling stages."""
    spec = POOLINGS[embed.pooling]
    found = REGIONS[embed.regions](features, embed, points)
    attend = SPATIAL_ATTENTIONS[embed.spatial_attention]
    alpha = attend(features) if attend is not None else None
    if spec.masks is not None:
        alpha = alpha if alpha is not None else jnp.ones(features.shape[:3], jnp.float32)
        out = spec.masks(features, found.as_masks(*features.shape[1:3]), alpha, arts, embed)
    else:
        if alpha is not None:
            features = features * alpha[..., None].astype(features.dtype)
        out = spec.whole(features, embed)[:, None, :] if found.whole_map else spec.boxes(features, found.boxes, embed)
    return out.astype(jnp.float32), found.valid


def first_order_regions(
    features: jax.Array, embed: ConfigDict, points: DetectedPoints | None = None
) -> tuple[jax.Array, jax.Array]:
    """jeong2017 Eq. 3 over the config's regions, (B, R, C) and valid (B, R): the descriptors whose PCA
    bases reduce the local descriptors of second-order pooling (Eq. 4)."""
    found = REGIONS[embed.regions](features, embed, points)
    ones = jnp.ones(features.shape[:3], jnp.float32)
    return first_order(features, found.as_masks(*features.shape[1:3]), ones, {}, embed), found.valid


# ----------------------------------------------------------------------------------------
# Post-processing and region weights


def postprocess(descriptors: jax.Array, arts: Arrays) -> jax.Array:
    """Per region: l2 -> PCA-whitening -> l2 when fitted, else l2 (tursun2021 '^', jeong2017 Eq. 6)."""
    x = pooling.l2_normalize(descriptors)
    if "pca_projection" in arts:
        x = pooling.l2_normalize(whitening.apply_pca_whitening(x, arts["pca_mean"], arts["pca_projection"]))
    return x


REGION_WEIGHTS: dict[str, Callable[[jax.Array, Arrays], jax.Array]] = {
    "uniform": lambda post, arts: jnp.ones(post.shape[:-1], post.dtype),
    # tursun2021 URA (Eq. 4): the IDF of each region's visual word.
    "idf": lambda post, arts: idf.idf_weights(post, arts["centroids"], arts["idf"]),
}


def aggregate(features: jax.Array, embed: ConfigDict, arts: Arrays, points: DetectedPoints | None = None) -> jax.Array:
    """One resolution -> the unnormalised weighted sum of its regions, (B, d) (tursun2021 Eq. 2, 4);
    invalid regions weigh 0."""
    raw, valid = describe(features, embed, arts, points)
    post = postprocess(raw, arts)
    return jnp.einsum("brd,br->bd", post, REGION_WEIGHTS[embed.region_weights](post, arts) * valid)


def region_vectors(
    features: jax.Array, embed: ConfigDict, arts: Arrays, points: DetectedPoints | None = None
) -> jax.Array:
    """One resolution -> its post-processed regions for region matching, (B, R, d), invalid ones all zero."""
    raw, valid = describe(features, embed, arts, points)
    return postprocess(raw, arts) * valid[..., None]
