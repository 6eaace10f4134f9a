"""tmrjax/train/losses.py against float64 numpy loops from the formulas and hand-worked cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmrjax.train import losses

# Everything runs jitted: one compilation per function and shape keeps the suite fast
# (eager grads compile every primitive separately) and checks that the losses jit.
co2_consistency = jax.jit(losses.co2_consistency)
cosface = jax.jit(losses.cosface)
hard_negative_mask = jax.jit(losses.hard_negative_mask, static_argnames="min_negatives")
info_nce = jax.jit(losses.info_nce)
koleo = jax.jit(losses.koleo, static_argnames="axis_name")
moco_loss = jax.jit(losses.moco_loss, static_argnames=("threshold", "min_negatives", "axis_name"))

B, K, D, C = 6, 11, 5, 4
TAU, TAU_CON = 0.2, 0.05


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def batch(seed, b=B, k=K, d=D):
    """q, a positive key near q, and a queue: unit float32 rows."""
    rng = np.random.default_rng(seed)
    q = unit(rng.normal(size=(b, d)))
    k_pos = unit(q + 0.5 * rng.normal(size=(b, d)))
    queue = unit(rng.normal(size=(k, d)))
    return tuple(x.astype(np.float32) for x in (q, k_pos, queue))


# ------------------------------------------------------------ slow references


def ref_info_nce(q, k_pos, queue, tau, mask=None):
    """Eq. 2 per row over the positive and the kept negatives only, then the mean."""
    total = 0.0
    for b in range(len(q)):
        pos = float(np.dot(q[b], k_pos[b])) / tau
        denom = math.exp(pos)
        for i in range(len(queue)):
            if mask is None or mask[b, i]:
                denom += math.exp(float(np.dot(q[b], queue[i])) / tau)
        total += math.log(denom) - pos
    return total / len(q)


def ref_hard_mask(q, queue, threshold, min_negatives=0):
    out = np.zeros((len(q), len(queue)), bool)
    for b in range(len(q)):
        sims = [float(np.dot(q[b], n)) for n in queue]
        nth = sorted(sims, reverse=True)[min_negatives - 1] if min_negatives else np.inf
        for i, s in enumerate(sims):
            out[b, i] = s >= threshold or s >= nth
    return out


def ref_co2(q, p, queue, tau_con, mask=None):
    """Eq. 3-4: symmetric KL of the softmaxes over the kept negatives; empty rows add 0."""
    total = 0.0
    for b in range(len(q)):
        kept = [i for i in range(len(queue)) if mask is None or mask[b, i]]
        if not kept:
            continue
        eq = [math.exp(float(np.dot(q[b], queue[i])) / tau_con) for i in kept]
        ep = [math.exp(float(np.dot(p[b], queue[i])) / tau_con) for i in kept]
        qd = [e / sum(eq) for e in eq]
        pd = [e / sum(ep) for e in ep]
        kl_pq = sum(pi * math.log(pi / qi) for pi, qi in zip(pd, qd))
        kl_qp = sum(qi * math.log(qi / pi) for pi, qi in zip(pd, qd))
        total += 0.5 * (kl_pq + kl_qp)
    return total / len(q)


def ref_koleo(x, eps=1e-8):
    x = unit(x)
    total = 0.0
    for i in range(len(x)):
        rho = min(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
        total += math.log(rho + eps)
    return -total / len(x)


def ref_cosface(e, labels, w, s, m):
    e, w = unit(e), unit(w)
    total = 0.0
    for b in range(len(e)):
        y = labels[b]
        target = math.exp(s * (float(np.dot(e[b], w[y])) - m))
        others = sum(math.exp(s * float(np.dot(e[b], w[j]))) for j in range(len(w)) if j != y)
        total += -math.log(target / (target + others))
    return total / len(e)


# ------------------------------------------------------------------- InfoNCE


def test_info_nce_hand_worked():
    # q = (1, 0), k+ = (0.6, 0.8), queue = (0, 1), (-1, 0), tau = 0.5:
    # logits = (0.6, 0, -1) / 0.5 = (1.2, 0, -2)
    # loss = log(e^1.2 + e^0 + e^-2) - 1.2 = log(4.455452) - 1.2 = 0.2941286
    q = jnp.array([[1.0, 0.0]])
    k_pos = jnp.array([[0.6, 0.8]])
    queue = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    loss, logits = info_nce(q, k_pos, queue, 0.5)
    np.testing.assert_allclose(loss, 0.2941285610404085, atol=1e-6)
    np.testing.assert_allclose(logits, [[1.2, 0.0, -2.0]], atol=1e-6)
    # Masking the (0, 1) negative: loss = log(e^1.2 + e^-2) - 1.2 = log(1 + e^-3.2) = 0.0399533
    loss, logits = info_nce(q, k_pos, queue, 0.5, jnp.array([[False, True]]))
    np.testing.assert_allclose(loss, 0.039953333162430306, atol=1e-6)
    assert logits[0, 1] == -1e9


@pytest.mark.parametrize("masked", [False, True])
def test_info_nce_matches_reference(masked):
    q, k_pos, queue = batch(0)
    mask = np.random.default_rng(1).random((B, K)) < 0.5 if masked else None
    loss, logits = info_nce(q, k_pos, queue, TAU, None if mask is None else jnp.asarray(mask))
    assert loss.shape == () and loss.dtype == jnp.float32
    assert logits.shape == (B, 1 + K) and logits.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_info_nce(q, k_pos, queue, TAU, mask), rtol=1e-5, atol=1e-5)


def test_info_nce_all_masked_row_is_finite():
    q, k_pos, queue = batch(2)
    mask = np.ones((B, K), bool)
    mask[3] = False  # row 3 keeps no negative: its loss is -log(1) = 0
    loss, _ = info_nce(q, k_pos, queue, TAU, jnp.asarray(mask))
    np.testing.assert_allclose(loss, ref_info_nce(q, k_pos, queue, TAU, mask), rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda x: info_nce(x, k_pos, queue, TAU, jnp.asarray(mask))[0])(jnp.asarray(q))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[3], 0.0)


def test_info_nce_gradient_pulls_q_to_positive():
    q, k_pos, queue = batch(3)
    grads = jax.grad(lambda a, b, c: info_nce(a, b, c, TAU)[0], argnums=(0, 1, 2))(q, k_pos, queue)
    g_q, g_k, g_queue = (np.asarray(g) for g in grads)
    assert np.all(np.isfinite(g_q))
    # A descent step -g moves each q towards its positive key ...
    assert np.all(np.sum(-g_q * k_pos, axis=1) > 0)
    # ... and away from the negatives on average (softmax-weighted negative mean).
    sims = q @ queue.T / TAU
    weights = np.exp(sims) / np.exp(sims).sum(1, keepdims=True)
    assert np.all(np.sum(-g_q * (weights @ queue), axis=1) < np.sum(-g_q * k_pos, axis=1))
    # Keys are momentum-encoder outputs: no gradient.
    np.testing.assert_array_equal(g_k, 0.0)
    np.testing.assert_array_equal(g_queue, 0.0)


# -------------------------------------------------------- hard negative mask


def test_hard_negative_mask_hand_made_queue():
    # q = (1, 0): the cosine to (x, y) on the unit circle is x. 0.4 exactly is KEPT
    # (hu2024 excludes similarity "below" the threshold); 0.39999 is dropped.
    q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    xs = [0.4, 0.39999, 0.9, -1.0, 0.41, 0.0]
    queue = jnp.array([[x, math.sqrt(1 - x * x)] for x in xs], jnp.float32)
    mask = hard_negative_mask(q, queue)
    assert mask.shape == (2, len(xs)) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask[0], [True, False, True, False, True, False])
    # Second anchor (0, 1): cosines are sqrt(1 - x^2) = .917, .917, .436, 0, .912, 1.
    np.testing.assert_array_equal(mask[1], [True, True, True, False, True, True])


def test_hard_negative_mask_min_negatives():
    # Cosines (0.1, 0.3, -0.5, 0.2): none reaches 0.4, so the paper keeps none;
    # min_negatives=2 keeps the two most similar (0.3 and 0.2).
    q = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    xs = [0.1, 0.3, -0.5, 0.2]
    queue = jnp.array([[x, math.sqrt(1 - x * x)] for x in xs], jnp.float32)
    np.testing.assert_array_equal(hard_negative_mask(q, queue)[0], [False] * 4)
    np.testing.assert_array_equal(
        hard_negative_mask(q, queue, min_negatives=2)[0], [False, True, False, True]
    )
    # Enough pass the threshold: min_negatives adds nothing.
    np.testing.assert_array_equal(
        hard_negative_mask(q, queue, threshold=0.0, min_negatives=2)[0], [True, True, False, True]
    )
    with pytest.raises(ValueError, match="min_negatives"):
        hard_negative_mask(q, queue, min_negatives=5)


@pytest.mark.parametrize("threshold,min_negatives", [(0.4, 0), (0.2, 3)])
def test_hard_negative_mask_matches_reference(threshold, min_negatives):
    q, _, queue = batch(4, k=40)
    mask = hard_negative_mask(q, queue, threshold, min_negatives)
    np.testing.assert_array_equal(mask, ref_hard_mask(q, queue, threshold, min_negatives))


# ----------------------------------------------------------------------- CO2


@pytest.mark.parametrize("masked", [False, True])
def test_co2_matches_reference(masked):
    q, k_pos, queue = batch(5)
    mask = np.random.default_rng(6).random((B, K)) < 0.5 if masked else None
    if masked:
        mask[2] = False  # an empty row adds 0 and stays finite
    loss = co2_consistency(q, k_pos, queue, TAU_CON, None if mask is None else jnp.asarray(mask))
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_co2(q, k_pos, queue, TAU_CON, mask), rtol=1e-5, atol=1e-5)


def test_co2_zero_when_views_agree_and_gradient_follows_pseudo_label():
    q, _, queue = batch(7)
    np.testing.assert_allclose(co2_consistency(q, q, queue, TAU_CON), 0.0, atol=1e-7)
    # p is close to negative 0, q is not: the gradient must raise q . n_0 (follow P).
    q = jnp.array([[1.0, 0.0, 0.0]])
    p = jnp.array([[0.0, 1.0, 0.0]])
    queue = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    grads = jax.grad(lambda a, b, c: co2_consistency(a, b, c, 0.5), argnums=(0, 1, 2))(q, p, queue)
    assert np.all(np.isfinite(grads[0]))
    assert float(jnp.dot(-grads[0][0], queue[0])) > 0
    np.testing.assert_array_equal(grads[1], 0.0)  # P is the pseudo label
    np.testing.assert_array_equal(grads[2], 0.0)


# --------------------------------------------------------------------- KoLeo


def test_koleo_hand_worked():
    # (1,0), (0,1), (0.6,0.8): d01 = sqrt 2, d02 = sqrt .8, d12 = sqrt .4, so the
    # nearest-neighbour distances are sqrt .8, sqrt .4, sqrt .4 and
    # L = -(log sqrt .8 + 2 log sqrt .4) / 3 = 0.3426208
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    np.testing.assert_allclose(koleo(x), 0.3426208358437533, atol=1e-6)
    # (1,0), (0,1), (-1,0): every nearest distance is sqrt 2, L = -log sqrt 2 = -0.3465736;
    # the input is l2-normalised first, so scaling rows changes nothing.
    x = jnp.array([[2.0, 0.0], [0.0, 0.5], [-1.0, 0.0]])
    np.testing.assert_allclose(koleo(x), -0.34657359027997264, atol=1e-6)


def test_koleo_matches_reference():
    x = np.random.default_rng(8).normal(size=(9, D)).astype(np.float32)
    loss = koleo(x)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_koleo(x), rtol=1e-5, atol=1e-5)


def test_koleo_gradient_pushes_nearest_neighbours_apart():
    x = unit([[1.0, 0.1, 0.0], [1.0, -0.1, 0.05], [-1.0, 0.3, 0.2], [0.0, -1.0, 0.4]]).astype(
        np.float32
    )
    g = np.asarray(jax.grad(koleo)(jnp.asarray(x)))
    assert np.all(np.isfinite(g))
    # Rows 0 and 1 are each other's nearest neighbour: descent increases their distance.
    assert np.dot(-g[0], x[0] - x[1]) > 0
    assert np.dot(-g[1], x[1] - x[0]) > 0
    # Identical points: finite value -log(eps) and finite gradient.
    dup = jnp.asarray(np.stack([x[0], x[0], x[2]]))
    assert np.isfinite(koleo(dup)) and np.all(np.isfinite(jax.grad(koleo)(dup)))


def test_koleo_sharded_equals_global():
    """With axis_name, per-shard values and gradients average to the global batch's."""
    x = jnp.asarray(np.random.default_rng(9).normal(size=(8, D)).astype(np.float32))
    shards = x.reshape(4, 2, D)
    per_shard = jax.vmap(lambda s: koleo(s, axis_name="d"), axis_name="d")(shards)
    np.testing.assert_allclose(jnp.mean(per_shard), koleo(x), rtol=1e-6)
    grads = jax.vmap(jax.grad(lambda s: koleo(s, axis_name="d")), axis_name="d")(shards)
    # Each device's gradient w.r.t. its own rows is that of the sum of all devices'
    # losses; the trainer's mean over devices makes it the gradient of the mean.
    np.testing.assert_allclose(grads.reshape(8, D) / 4, jax.grad(koleo)(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- CosFace


def test_cosface_hand_worked():
    # e = (3, 0) -> (1, 0); W = (1, 0), (0, 2) -> cosines (1, 0); label 0, s = 2, m = 0.5:
    # logits = 2 * (1 - 0.5, 0) = (1, 0), loss = log(1 + e^-1) = 0.3132617
    loss = cosface(
        jnp.array([[3.0, 0.0]]), jnp.array([0]), jnp.array([[1.0, 0.0], [0.0, 2.0]]), 2.0, 0.5
    )
    np.testing.assert_allclose(loss, 0.31326168751822286, atol=1e-6)


def test_cosface_matches_reference_and_gradient_sign():
    rng = np.random.default_rng(10)
    e = rng.normal(size=(B, D)).astype(np.float32)
    w = rng.normal(size=(C, D)).astype(np.float32)
    labels = rng.integers(0, C, size=B)
    loss = cosface(e, jnp.asarray(labels), w, scale=8.0)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_cosface(e, labels, w, 8.0, 0.35), rtol=1e-5, atol=1e-5)
    # Paper defaults s = 64, m = 0.35 (large logits: log-sum-exp must hold).
    np.testing.assert_allclose(
        cosface(e, jnp.asarray(labels), w),
        ref_cosface(e, labels, w, 64.0, 0.35),
        rtol=1e-5,
        atol=1e-4,
    )
    g_e, g_w = jax.grad(lambda a, b: cosface(a, jnp.asarray(labels), b), argnums=(0, 1))(e, w)
    assert np.all(np.isfinite(g_e)) and np.all(np.isfinite(g_w))
    # Descent turns each embedding towards its class weight.
    assert np.all(np.sum(-np.asarray(g_e) * unit(w)[labels], axis=1) > 0)


# ------------------------------------------------------------- the objective


def test_moco_loss_composes_the_terms():
    q, k_pos, queue = batch(11, k=30)
    total, terms = moco_loss(q, k_pos, queue, temperature=TAU, co2_temperature=TAU_CON)
    mask = ref_hard_mask(q, queue, 0.4)
    expected = {
        "info_nce": ref_info_nce(q, k_pos, queue, TAU, mask),
        "co2": ref_co2(q, k_pos, queue, TAU_CON, mask),
        "koleo": ref_koleo(q),
        "hard_negatives": mask.sum(1).mean(),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(
        total, expected["info_nce"] + 0.02 * expected["co2"] + 0.05 * expected["koleo"], rtol=1e-5
    )
    assert 0.0 <= float(terms["accuracy"]) <= 1.0
    # threshold=None: every queue entry is a negative (the ablation's "SSL" row).
    _, terms = moco_loss(q, k_pos, queue, temperature=TAU, co2_temperature=TAU_CON, threshold=None)
    np.testing.assert_allclose(terms["info_nce"], ref_info_nce(q, k_pos, queue, TAU), rtol=1e-5)
    assert float(terms["hard_negatives"]) == 30


def test_moco_loss_jit_bf16_and_gradients():
    q, k_pos, queue = batch(12, k=30)
    step = jax.jit(
        jax.value_and_grad(
            lambda a, b, c: moco_loss(a, b, c, temperature=TAU, co2_temperature=TAU_CON),
            has_aux=True,
        )
    )
    (total, terms), grad = step(q, k_pos, queue)
    assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in terms.values())
    assert np.all(np.isfinite(grad))
    eager, _ = moco_loss(q, k_pos, queue, temperature=TAU, co2_temperature=TAU_CON)
    np.testing.assert_allclose(total, eager, rtol=1e-6)
    # bf16 inputs: float32 math on the bf16 values, float32 results.
    q16, k16, queue16 = (jnp.asarray(x, jnp.bfloat16) for x in (q, k_pos, queue))
    (total16, _), grad16 = step(q16, k16, queue16)
    assert total16.dtype == jnp.float32 and grad16.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(grad16, np.float32)))
    as32 = [np.asarray(x, np.float32) for x in (q16, k16, queue16)]
    np.testing.assert_allclose(
        total16, moco_loss(*as32, temperature=TAU, co2_temperature=TAU_CON)[0], rtol=1e-6
    )
    loss16, logits16 = info_nce(q16, k16, queue16, TAU)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, ref_info_nce(*as32, TAU), rtol=1e-5, atol=1e-5)
    assert (
        koleo(q16).dtype == jnp.float32
        and cosface(q16, jnp.arange(B) % 3, queue16[:3]).dtype == jnp.float32
    )


def test_shape_errors_name_the_function():
    """Checked where the input enters, before any tracing (the temperature only when static)."""
    q, k_pos, queue = batch(13)
    with pytest.raises(ValueError, match="info_nce: queue"):
        losses.info_nce(q, k_pos, queue[:, :3], TAU)
    with pytest.raises(ValueError, match="co2_consistency: negative_mask"):
        losses.co2_consistency(q, k_pos, queue, TAU_CON, jnp.ones((B, K + 1), bool))
    with pytest.raises(ValueError, match="koleo: needs a batch of at least 2"):
        losses.koleo(q[:1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.info_nce(q, k_pos, queue, 0.0)
