"""kernels/whitening.py against a float64 numpy PCA-whitening (Jegou & Chum 2012)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tmrjax.kernels import apply_pca_whitening, learn_pca_whitening

learn = jax.jit(learn_pca_whitening, static_argnames="dim")


def descriptors(num, seed):
    """Correlated data with well-separated variances along a random rotation."""
    rng = np.random.default_rng(seed)
    size = 12
    scales = 2.0 ** -np.arange(size) * 10.0
    rotation, _ = np.linalg.qr(rng.standard_normal((size, size)))
    return (rng.standard_normal((num, size)) * scales) @ rotation.T + rng.standard_normal(size)


def ref_pca_whitening(X, dim, eps=1e-6):
    """Loop over the kept components; sign: largest-magnitude entry positive."""
    mean = X.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(X, rowvar=False))
    projection = np.zeros((X.shape[1], dim))
    for k in range(dim):
        j = len(eigenvalues) - 1 - k
        vector = eigenvectors[:, j]
        vector = vector * np.sign(vector[np.argmax(np.abs(vector))])
        projection[:, k] = vector / np.sqrt(eigenvalues[j] + eps)
    return mean, projection


def test_learn_pca_whitening_matches_float64_reference():
    X = descriptors(500, seed=0)
    ref_mean, ref_projection = ref_pca_whitening(X, dim=5)
    mean, projection = learn(jnp.asarray(X, jnp.float32), dim=5)
    assert mean.shape == (12,) and projection.shape == (12, 5)
    assert mean.dtype == projection.dtype == jnp.float32
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    # float32 eigh: components agree to ~1e-5 of each component's largest entry.
    scale = np.abs(ref_projection).max(axis=0)
    np.testing.assert_allclose(projection / scale, ref_projection / scale, atol=2e-5)


def test_whitened_training_data_has_identity_covariance():
    X = descriptors(500, seed=1)
    mean, projection = learn(jnp.asarray(X, jnp.float32), dim=6)
    whitened = np.asarray(apply_pca_whitening(jnp.asarray(X, jnp.float32), mean, projection))
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(6), atol=1e-4)


def test_refits_agree_on_sign_and_value():
    X = descriptors(300, seed=2)
    first = learn(jnp.asarray(X, jnp.float32), dim=4)
    shuffled = X[np.random.default_rng(3).permutation(len(X))]
    second = learn(jnp.asarray(shuffled, jnp.float32), dim=4)
    np.testing.assert_allclose(first[0], second[0], rtol=1e-5, atol=1e-5)
    scale = np.abs(first[1]).max()
    np.testing.assert_allclose(first[1] / scale, second[1] / scale, atol=1e-5)
    projection = np.asarray(first[1])
    peaks = projection[np.argmax(np.abs(projection), axis=0), np.arange(4)]
    assert np.all(peaks > 0)


def test_learn_pca_whitening_under_vmap_fits_each_data_set_separately():
    stack = np.stack([descriptors(200, seed=6), descriptors(200, seed=7) * 3.0])
    means, projections = jax.jit(jax.vmap(lambda X: learn_pca_whitening(X, 3)))(
        jnp.asarray(stack, jnp.float32)
    )
    assert projections.shape == (2, 12, 3)
    for X, mean, projection in zip(stack, means, projections):
        ref_mean, ref_projection = ref_pca_whitening(X, dim=3)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
        scale = np.abs(ref_projection).max(axis=0)
        np.testing.assert_allclose(projection / scale, ref_projection / scale, atol=2e-5)


def test_apply_pca_whitening_matches_affine_map_jit_vmap_and_bfloat16():
    X = descriptors(200, seed=4)
    mean, projection = ref_pca_whitening(X, dim=5)
    mean32, projection32 = jnp.asarray(mean, jnp.float32), jnp.asarray(projection, jnp.float32)
    apply = jax.jit(apply_pca_whitening)
    for batch in (1, 7):
        x = descriptors(batch * 3, seed=5 + batch).reshape(batch, 3, 12)
        expected = (x - mean) @ projection
        got = apply(jnp.asarray(x, jnp.float32), mean32, projection32)
        assert got.dtype == jnp.float32 and got.shape == (batch, 3, 5)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
        per_image = jax.jit(jax.vmap(apply_pca_whitening, in_axes=(0, None, None)))
        np.testing.assert_allclose(
            per_image(jnp.asarray(x, jnp.float32), mean32, projection32),
            expected,
            rtol=1e-5,
            atol=1e-4,
        )
    x16 = jnp.asarray(X[:7], jnp.bfloat16)
    expected16 = (np.asarray(x16, np.float64) - mean) @ projection
    got16 = apply(x16, mean32, projection32)
    assert got16.dtype == jnp.float32
    np.testing.assert_allclose(got16, expected16, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "shape, dim, message",
    [
        ((10, 4), 5, r"dim must be in \[1, D = 4\], got dim = 5"),
        ((10, 4), 0, r"dim must be in \[1, D = 4\], got dim = 0"),
        ((1, 4), 2, "need N >= 2 descriptors .* got N = 1"),
        ((4,), 2, r"X must be \(N, D\), got \(4,\)"),
    ],
)
def test_learn_pca_whitening_rejects_bad_dim_and_too_few_descriptors(shape, dim, message):
    with pytest.raises(ValueError, match=message):
        learn_pca_whitening(jnp.zeros(shape), dim)


def test_partial_whitening_power_leaves_eigenvalue_to_the_one_minus_two_power():
    """power p scales component k by lambda_k ** -p: its variance becomes lambda_k ** (1 - 2p)."""
    X = descriptors(4000, seed=3)
    eigenvalues = np.linalg.eigvalsh(np.cov(X, rowvar=False))[::-1][:6]
    for power in (0.0, 0.25, 0.5):
        mean, projection = jax.jit(learn_pca_whitening, static_argnames=("dim", "power"))(
            jnp.asarray(X, jnp.float32), dim=6, power=power)
        whitened = (X - np.asarray(mean)) @ np.asarray(projection, np.float64)
        np.testing.assert_allclose(np.var(whitened, axis=0, ddof=1), eigenvalues ** (1 - 2 * power), rtol=2e-3)


def test_fewer_descriptors_than_dimensions_go_through_the_gram_matrix_to_the_same_projection():
    """N < D (2,400 second-order descriptors of 8,256 dims in a small fit): the eigenvectors of the N x N
    Gram matrix, mapped back, against the float64 reference of the D x D covariance."""
    rng = np.random.default_rng(4)
    size, num = 60, 40
    scales = 1.5 ** -np.arange(size) * 10.0
    rotation, _ = np.linalg.qr(rng.standard_normal((size, size)))
    X = (rng.standard_normal((num, size)) * scales) @ rotation.T + rng.standard_normal(size)
    ref_mean, ref_projection = ref_pca_whitening(X, dim=8)
    mean, projection = learn(jnp.asarray(X, jnp.float32), dim=8)
    assert projection.shape == (size, 8)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    scale = np.abs(ref_projection).max(axis=0)
    np.testing.assert_allclose(projection / scale, ref_projection / scale, atol=1e-4)
    whitened = np.asarray(apply_pca_whitening(jnp.asarray(X, jnp.float32), mean, projection))
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(8), atol=1e-3)
