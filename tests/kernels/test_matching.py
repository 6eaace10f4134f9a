"""kernels/matching.py: jeong2017 Eq. 7-8 against numpy loops."""

import jax
import numpy as np
from tmrjax.kernels.matching import region_similarity, regional_query_expansion


def _unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(q, qv, t, tv):
    scores = np.full((len(q), len(t)), -np.inf)
    best = np.zeros((len(q), len(t)), int)
    for i in range(len(q)):
        for j in range(len(t)):
            for m in np.flatnonzero(qv[i]):
                for n in np.flatnonzero(tv[j]):
                    s = float(q[i, m] @ t[j, n])
                    if s > scores[i, j]:
                        scores[i, j], best[i, j] = s, n
    return scores, best


def test_region_similarity_is_the_best_valid_pair():
    rng = np.random.default_rng(0)
    q, t = _unit(rng, 3, 4, 8), _unit(rng, 5, 6, 8)
    qv = rng.uniform(size=(3, 4)) > 0.3
    tv = rng.uniform(size=(5, 6)) > 0.3
    qv[:, 0] = tv[:, 0] = True
    tv[4] = False  # an image without a valid region matches nothing
    scores, best = (np.asarray(a) for a in jax.jit(region_similarity)(q, qv, t, tv))
    ref_scores, ref_best = _reference(q, qv, t, tv)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    np.testing.assert_array_equal(best[:, :4], ref_best[:, :4])
    assert np.isneginf(scores[:, 4]).all() and best.dtype == np.int32


def test_one_region_per_side_is_the_cosine():
    rng = np.random.default_rng(1)
    q, t = _unit(rng, 2, 1, 5), _unit(rng, 3, 1, 5)
    scores, _ = region_similarity(q, np.ones((2, 1), bool), t, np.ones((3, 1), bool))
    np.testing.assert_allclose(np.asarray(scores), q[:, 0] @ t[:, 0].T, atol=1e-6)


def test_regional_query_expansion_averages_the_best_regions_of_the_top_results():
    rng = np.random.default_rng(2)
    q, t = _unit(rng, 2, 3, 6), _unit(rng, 7, 4, 6)
    qv, tv = np.ones((2, 3), bool), np.ones((7, 4), bool)
    scores, best = region_similarity(q, qv, t, tv)
    expanded = np.asarray(regional_query_expansion(t, scores, best, num_expansion=3))
    ref_scores, ref_best = _reference(q, qv, t, tv)
    for i in range(2):
        top = np.argsort(-ref_scores[i])[:3]
        mean = sum(t[j, ref_best[i, j]] for j in top)
        np.testing.assert_allclose(expanded[i], mean / np.linalg.norm(mean), atol=1e-5)
    # Eq. 8: the expanded vector is a one-region query
    again, _ = region_similarity(expanded[:, None], np.ones((2, 1), bool), t, tv)
    np.testing.assert_allclose(np.asarray(again), (t @ expanded.T).max(axis=1).T, atol=1e-5)
