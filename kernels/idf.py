"""Unsupervised regional attention (URA), tursun2021 Sec. 3, Eq. 4.

Each regional descriptor is a visual word (its nearest k-means centroid) and each
image a document; a region is weighted by the inverse document frequency of its
word, learned once on the gallery.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def assign_words(descriptors: jax.Array, centroids: jax.Array) -> jax.Array:
    """Nearest centroid by squared L2 distance (the visual word of each descriptor).

    (..., D), (K, D) -> int32 (...). Ties go to the lower word id.
    """
    descriptors = jnp.asarray(descriptors, jnp.float32)
    centroids = jnp.asarray(centroids, jnp.float32)
    if descriptors.shape[-1] != centroids.shape[-1] or centroids.ndim != 2:
        raise ValueError(
            "tmrjax.kernels.idf.assign_words: descriptors (..., D) and centroids (K, D) "
            f"must share D, got {descriptors.shape} and {centroids.shape}"
        )
    # ||d - c||^2 = ||d||^2 - 2 d.c + ||c||^2; ||d||^2 does not change the argmin.
    cross = jnp.einsum("...d,kd->...k", descriptors, centroids, precision=_HIGHEST)
    distances = jnp.sum(centroids**2, axis=-1) - 2.0 * cross
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def document_frequency(word_ids: jax.Array, valid: jax.Array, num_words: int) -> jax.Array:
    """Number of images (documents) in which each word occurs at least once.

    A word seen in several regions of one image counts once; regions with
    ``valid = False`` (padding) are ignored. Word ids must lie in [0, num_words).
    (N, R) int, (N, R) bool -> int32 (K,) with K = num_words.
    """
    word_ids = jnp.asarray(word_ids)
    valid = jnp.asarray(valid, bool)
    if word_ids.ndim != 2 or valid.shape != word_ids.shape:
        raise ValueError(
            "tmrjax.kernels.idf.document_frequency: word_ids and valid must both be "
            f"(N, R), got {word_ids.shape} and {valid.shape}"
        )
    # Sort each image's words (padding becomes id num_words, past the last word) and
    # count only the first of each run, so every word counts once per image.
    ids = jnp.sort(jnp.where(valid, word_ids, num_words), axis=-1)
    first = jnp.concatenate(
        [jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=-1
    )
    counts = jnp.zeros(num_words, jnp.int32)
    return counts.at[ids].add(first.astype(jnp.int32), mode="drop")


def idf_from_document_frequency(
    df: jax.Array, num_documents: int | jax.Array
) -> jax.Array:
    """Smoothed inverse document frequency ``1 + log((1 + N) / (1 + df))``, tursun2021 Eq. 4.

    The paper does not give its IDF variant; this is the smooth IDF of scikit-learn's
    TfidfTransformer (its default). The +1 inside (one phantom document holding every
    word) keeps a word never seen in the gallery finite, ``1 + log(1 + N)``, the largest
    weight; the +1 outside keeps a word found in every image at weight 1 rather than 0,
    so no image can end up with all regions weighted 0 (a zero descriptor that cannot
    be ranked). (K,) -> float32 (K,).
    """
    df = jnp.asarray(df, jnp.float32)
    return 1.0 + jnp.log((1.0 + jnp.asarray(num_documents, jnp.float32)) / (1.0 + df))


def idf_weights(descriptors: jax.Array, centroids: jax.Array, idf: jax.Array) -> jax.Array:
    """Per-region URA weight ``IDF(f_R)``, tursun2021 Eq. 4: the IDF of the nearest word.

    (..., D), (K, D), (K,) -> float32 (...).
    """
    return jnp.asarray(idf, jnp.float32)[assign_words(descriptors, centroids)]
