"""kernels/idf.py (URA, tursun2021 Eq. 4) against brute-force loops and hand-worked IDFs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tmrjax.kernels import (
    assign_words,
    document_frequency,
    idf_from_document_frequency,
    idf_weights,
)


def ref_assign(descriptors, centroids):
    flat = descriptors.reshape(-1, descriptors.shape[-1])
    words = []
    for d in flat:
        distances = [float(((d - c) ** 2).sum()) for c in centroids]
        words.append(int(np.argmin(distances)))
    return np.array(words).reshape(descriptors.shape[:-1])


def ref_document_frequency(word_ids, valid, num_words):
    df = np.zeros(num_words, np.int64)
    for ids, keep in zip(word_ids, valid):
        for word in {int(i) for i, k in zip(ids, keep) if k}:
            df[word] += 1
    return df


def test_assign_words_matches_brute_force_jit_and_vmap():
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((9, 8))
    for batch in (1, 7):
        descriptors = rng.standard_normal((batch, 30, 8))
        expected = ref_assign(descriptors, centroids)
        d32, c32 = jnp.asarray(descriptors, jnp.float32), jnp.asarray(centroids, jnp.float32)
        got = jax.jit(assign_words)(d32, c32)
        assert got.dtype == jnp.int32 and got.shape == (batch, 30)
        np.testing.assert_array_equal(got, expected)
        per_image = jax.jit(jax.vmap(assign_words, in_axes=(0, None)))(d32, c32)
        np.testing.assert_array_equal(per_image, expected)


def test_assign_words_accepts_bfloat16_descriptors():
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((5, 4)) * 3
    d16 = jnp.asarray(rng.standard_normal((7, 4)) * 3, jnp.bfloat16)
    got = jax.jit(assign_words)(d16, jnp.asarray(centroids, jnp.float32))
    np.testing.assert_array_equal(got, ref_assign(np.asarray(d16, np.float64), centroids))


def test_assign_words_rejects_mismatched_descriptor_size():
    with pytest.raises(ValueError, match=r"must share D, got \(3, 4\) and \(5, 6\)"):
        assign_words(jnp.zeros((3, 4)), jnp.zeros((5, 6)))


def test_document_frequency_counts_each_word_once_per_image_worked_by_hand():
    word_ids = jnp.array([[0, 0, 2, 2], [2, 1, 1, 3], [3, 3, 3, 3]])
    valid = jnp.array([[True] * 4, [True] * 4, [True, False, False, False]])
    # image 0: {0, 2}; image 1: {1, 2, 3}; image 2: {3} (padding ignored); word 4 unseen.
    got = jax.jit(document_frequency, static_argnums=2)(word_ids, valid, 5)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, [1, 1, 2, 2, 0])


def test_document_frequency_matches_set_loop_on_random_padded_images():
    rng = np.random.default_rng(2)
    for num_images in (1, 7):
        word_ids = rng.integers(0, 6, size=(num_images, 30))
        valid = rng.random((num_images, 30)) < 0.7
        got = jax.jit(document_frequency, static_argnums=2)(word_ids, valid, 6)
        np.testing.assert_array_equal(got, ref_document_frequency(word_ids, valid, 6))


def test_document_frequency_of_shards_under_vmap_sums_to_the_whole():
    rng = np.random.default_rng(4)
    word_ids = rng.integers(0, 6, size=(7, 30))
    valid = rng.random((7, 30)) < 0.7
    # 7 images as shards of 1 (batch size 1 per shard) under vmap.
    per_shard = jax.jit(jax.vmap(lambda ids, keep: document_frequency(ids, keep, 6)))(
        word_ids[:, None], valid[:, None]
    )
    assert per_shard.shape == (7, 6)
    np.testing.assert_array_equal(per_shard.sum(0), ref_document_frequency(word_ids, valid, 6))


def test_document_frequency_rejects_mismatched_valid_mask():
    with pytest.raises(ValueError, match=r"\(N, R\), got \(2, 3\) and \(2, 4\)"):
        document_frequency(jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 4), bool), 5)


def test_idf_worked_by_hand_is_finite_for_unseen_words():
    # N = 3 images: 1 + log(4 / 1), 1 + log(4 / 2), 1 + log(4 / 4).
    got = jax.jit(idf_from_document_frequency)(jnp.array([0, 1, 3]), 3)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, [1 + math.log(4.0), 1 + math.log(2.0), 1.0], rtol=1e-6, atol=1e-7)


def test_idf_weights_are_the_idf_of_the_nearest_word_jit_and_vmap():
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((6, 5))
    gallery = rng.standard_normal((7, 30, 5))
    queries = rng.standard_normal((1, 30, 5))

    words = ref_assign(gallery, centroids)
    df = ref_document_frequency(words, np.ones_like(words, bool), 6)
    idf = np.array([1 + math.log((1 + 7) / (1 + count)) for count in df])
    expected = np.array([[idf[w] for w in row] for row in ref_assign(queries, centroids)])

    c32 = jnp.asarray(centroids, jnp.float32)

    @jax.jit
    def learned_idf(descriptors):
        words = assign_words(descriptors, c32)
        counts = document_frequency(words, jnp.ones(words.shape, bool), 6)
        return idf_from_document_frequency(counts, descriptors.shape[0])

    learned = learned_idf(jnp.asarray(gallery, jnp.float32))
    np.testing.assert_allclose(learned, idf, rtol=1e-6, atol=1e-7)
    q32 = jnp.asarray(queries, jnp.float32)
    got = jax.jit(idf_weights)(q32, c32, learned)
    assert got.dtype == jnp.float32 and got.shape == (1, 30)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    per_region = jax.jit(jax.vmap(idf_weights, in_axes=(1, None, None), out_axes=1))
    np.testing.assert_allclose(per_region(q32, c32, learned), expected, rtol=1e-6, atol=1e-7)
