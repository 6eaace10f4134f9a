"""tmrjax/train/optim.py: CAME against a float64 numpy loop of Luo et al. 2023
Algorithm 1 (vectors as in the authors' reference implementation), and the hu2024
warm-up + cosine-with-restarts schedule against hand-worked values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tmrjax.train.optim import (
    ScaleByCameState,
    came,
    decay_mask,
    warmup_cosine_restarts,
)

B1, B2, B3, EPS1, EPS2, D = 0.9, 0.999, 0.9999, 1e-30, 1e-16, 1.0
SHAPES = {"dense": (5, 3), "conv": (3, 3, 2, 4), "bias": (4,), "scale": ()}


# ---------------------------------------------------------------- numpy reference


def ref_matrix_step(G, st):
    """Algorithm 1 on one n x m slice, with row/column *sums* as the paper writes them."""
    n, m = G.shape
    for i in range(n):
        st["r"][i] = B2 * st["r"][i] + (1 - B2) * sum(
            G[i, j] ** 2 + EPS1 for j in range(m)
        )
    for j in range(m):
        st["c"][j] = B2 * st["c"][j] + (1 - B2) * sum(
            G[i, j] ** 2 + EPS1 for i in range(n)
        )
    u = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            v = st["r"][i] * st["c"][j] / sum(st["r"])
            u[i, j] = G[i, j] / math.sqrt(v)
    return u


def ref_confidence(U, m_slice, st):
    n, m = U.shape
    for i in range(n):
        st["R"][i] = B3 * st["R"][i] + (1 - B3) * sum(U[i, j] + EPS2 for j in range(m))
    for j in range(m):
        st["C"][j] = B3 * st["C"][j] + (1 - B3) * sum(U[i, j] + EPS2 for i in range(n))
    out = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            S = st["R"][i] * st["C"][j] / sum(st["R"])
            out[i, j] = m_slice[i, j] / math.sqrt(S)
    return out


def ref_init(p):
    p = np.asarray(p, np.float64)
    st = {"m": np.zeros(p.shape)}
    if p.ndim >= 2:
        lead, (n, m) = p.shape[:-2], p.shape[-2:]
        st["slices"] = {
            idx: {
                "r": np.zeros(n),
                "c": np.zeros(m),
                "R": np.zeros(n),
                "C": np.zeros(m),
            }
            for idx in np.ndindex(*lead)
        }
    else:
        st["v"] = np.zeros(p.shape)
    return st


def ref_direction(g, st):
    """One CAME step for one parameter: returns m / sqrt(S) (matrices) or m (ndim < 2)."""
    g = np.asarray(g, np.float64)
    if g.ndim >= 2:
        u = np.zeros(g.shape)
        for idx, sl in st["slices"].items():
            u[idx] = ref_matrix_step(g[idx], sl)
    else:
        st["v"] = B2 * st["v"] + (1 - B2) * (g**2 + EPS1)
        u = g / np.sqrt(st["v"])
    rms = math.sqrt(np.sum(u**2) / u.size)
    u_hat = u / max(1.0, rms / D)
    st["m"] = B1 * st["m"] + (1 - B1) * u_hat
    if g.ndim < 2:
        return st["m"].copy()
    instability = (u_hat - st["m"]) ** 2
    out = np.zeros(g.shape)
    for idx, sl in st["slices"].items():
        out[idx] = ref_confidence(instability[idx], st["m"][idx], sl)
    return out


def ref_came_run(params, grads_seq, lrs, weight_decay, decayed):
    """Parameter steps (p_{t+1} - p_t) of CAME with decoupled weight decay, float64."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    states = {k: ref_init(v) for k, v in params.items()}
    steps = []
    for grads, lr in zip(grads_seq, lrs):
        step = {}
        for k in params:
            wd = weight_decay if decayed[k] else 0.0
            step[k] = -lr * wd * params[k] - lr * ref_direction(grads[k], states[k])
            params[k] = params[k] + step[k]
        steps.append(step)
    return steps


# ---------------------------------------------------------------- helpers


def make_problem(seed=0, num_steps=5):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    # Different scales per step and per leaf so the clipping and the ratios matter.
    grads_seq = [
        {
            k: (rng.normal(size=s) * 10.0 ** rng.uniform(-2, 1, size=s)).astype(
                np.float32
            )
            for k, s in SHAPES.items()
        }
        for _ in range(num_steps)
    ]
    return params, grads_seq


def run_came(opt, params, grads_seq, jit=False):
    params = jax.tree.map(jnp.asarray, params)
    state = opt.init(params)
    update = jax.jit(opt.update) if jit else opt.update
    steps = []
    for grads in grads_seq:
        updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
        params = optax.apply_updates(params, updates)
        steps.append(updates)
    return steps, state, params


def assert_steps_close(got, want, rtol=1e-5):
    for t, (g_step, w_step) in enumerate(zip(got, want)):
        for k in w_step:
            g, w = np.asarray(g_step[k], np.float64), w_step[k]
            assert g.shape == w.shape, (t, k, g.shape, w.shape)
            # Relative to the largest entry: entries of m near a sign change are tiny.
            np.testing.assert_allclose(
                g,
                w,
                rtol=rtol,
                atol=rtol * np.max(np.abs(w)),
                err_msg=f"step {t}, leaf {k}",
            )


# ---------------------------------------------------------------- CAME


@pytest.mark.parametrize(
    "weight_decay, mask, schedule",
    [(0.0, None, False), (0.1, None, False), (0.1, decay_mask, True)],
    ids=["no-decay", "decay-all", "decay-kernels-scheduled"],
)
def test_came_matches_numpy_algorithm(weight_decay, mask, schedule):
    params, grads_seq = make_problem()
    lr_values = [1e-2 * (t + 1) / 5 for t in range(5)] if schedule else [1e-2] * 5
    lr = (lambda count: 1e-2 * (count + 1) / 5) if schedule else 1e-2
    opt = came(lr, weight_decay=weight_decay, mask=mask)
    got, _, _ = run_came(opt, params, grads_seq, jit=True)
    decayed = {k: (mask is None or len(s) >= 2) for k, s in SHAPES.items()}
    want = ref_came_run(params, grads_seq, lr_values, weight_decay, decayed)
    assert_steps_close(got, want)


def test_came_state_shapes_and_dtypes():
    params, _ = make_problem()
    state = came(1e-3).init(params)[0]
    assert isinstance(state, ScaleByCameState)
    assert state.v_row["dense"].shape == (5,) and state.v_col["dense"].shape == (3,)
    assert state.s_row["conv"].shape == (3, 3, 2) and state.s_col["conv"].shape == (
        3,
        3,
        4,
    )
    assert state.v["bias"].shape == (4,) and state.v["scale"].shape == ()
    assert state.mu["conv"].shape == (3, 3, 2, 4)
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype == jnp.float32


def test_came_minimises_logistic_regression():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    w_true = rng.normal(size=(6, 2)).astype(np.float32)
    y = (x @ w_true).argmax(-1)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params = {"w": jnp.zeros((6, 2)), "b": jnp.zeros((2,))}
    opt = came(
        warmup_cosine_restarts(1e-2, 10, 100, 200), weight_decay=1e-4, mask=decay_mask
    )
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    first = loss_fn(params)
    for _ in range(200):
        params, state, _ = step(params, state)
    last = loss_fn(params)
    assert np.isfinite(last) and last < 0.3 * first, (first, last)


def test_came_jit_and_state_roundtrip():
    params, grads_seq = make_problem(seed=2, num_steps=3)
    opt = came(
        warmup_cosine_restarts(1e-2, 2, 3, 10), weight_decay=0.05, mask=decay_mask
    )
    eager, _, _ = run_came(opt, params, grads_seq)
    jitted, jit_state, _ = run_came(opt, params, grads_seq, jit=True)
    want = [{k: np.asarray(v, np.float64) for k, v in s.items()} for s in eager]
    assert_steps_close(jitted, want)

    # Only arrays in the state (orbax-friendly); flatten -> numpy -> unflatten and go on.
    leaves, treedef = jax.tree.flatten(jit_state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    restored = jax.tree.unflatten(
        treedef, [jnp.asarray(np.asarray(leaf)) for leaf in leaves]
    )
    p = jax.tree.map(jnp.asarray, params)
    g = jax.tree.map(jnp.asarray, grads_seq[0])
    a, _ = jax.jit(opt.update)(g, jit_state, p)
    b, _ = jax.jit(opt.update)(g, restored, p)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_came_bf16_gradients():
    params, grads_seq = make_problem(seed=3, num_steps=3)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), params)
    grads_bf16 = [
        jax.tree.map(lambda g: jnp.asarray(g, jnp.bfloat16), g) for g in grads_seq
    ]
    opt = came(1e-2)
    state = opt.init(params)
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype == jnp.float32
    upcast = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    state32 = opt.init(upcast)
    for grads in grads_bf16:
        updates, state = jax.jit(opt.update)(grads, state, params)
        grads32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        updates32, state32 = jax.jit(opt.update)(grads32, state32, upcast)
        for k, shape in SHAPES.items():
            assert updates[k].dtype == jnp.bfloat16
            assert updates[k].shape == shape
            np.testing.assert_allclose(
                np.asarray(updates[k], np.float32),
                np.asarray(updates32[k]),
                rtol=1e-2,
                atol=1e-5,
            )
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))


def test_came_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="b3"):
        came(1e-3, b3=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        came(0.0)


# ---------------------------------------------------------------- schedule

PEAK, WARMUP, CYCLE, TOTAL = 2.5e-4, 4, 10, 30  # cycles start at steps 4, 14 and 24


@pytest.mark.parametrize(
    "step, want",
    [
        (0, 0.0),
        (2, 0.5 * PEAK),  # mid warm-up
        (4, PEAK),  # end of warm-up = start of cycle 1
        (9, 0.5 * PEAK),  # middle of cycle 1: cos(pi/2) = 0
        (13, PEAK * 0.5 * (1 + math.cos(0.9 * math.pi))),  # last step of cycle 1
        (14, 0.9 * PEAK),  # restart: cycle 2
        (19, 0.9 * PEAK * 0.5),
        (24, 0.81 * PEAK),  # restart: cycle 3
        (29, 0.81 * PEAK * 0.5),  # last step, half-way through the cut third cycle
        (30, 0.0),  # from total_steps on: end_value
    ],
)
def test_schedule_hand_worked_values(step, want):
    schedule = warmup_cosine_restarts(PEAK, WARMUP, CYCLE, TOTAL)
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5, atol=1e-12)


def test_schedule_end_value_and_no_warmup():
    schedule = warmup_cosine_restarts(1.0, 0, 10, 30, restart_decay=0.5, end_value=0.1)
    np.testing.assert_allclose(float(schedule(0)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(5)), 0.1 + 0.9 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(15)), 0.1 + 0.4 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(30)), 0.1, rtol=1e-6)


def test_schedule_monotone_and_jittable():
    schedule = warmup_cosine_restarts(PEAK, WARMUP, CYCLE, TOTAL)
    steps = jnp.arange(TOTAL + 1)
    traced = np.asarray(jax.jit(jax.vmap(schedule))(steps))
    eager = np.array([float(schedule(int(s))) for s in steps])
    assert traced.dtype == np.float32
    # float32 cos near pi/2 is ill-conditioned: XLA's fused and eager kernels differ by ~1e-6.
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-12)
    assert np.all(np.diff(traced[: WARMUP + 1]) > 0)
    for start in range(WARMUP, TOTAL, CYCLE):
        cycle = traced[start : min(start + CYCLE, TOTAL)]
        assert np.all(np.diff(cycle) < 0), start
    # Each restart jumps up, to 0.9x the previous cycle's first value.
    np.testing.assert_allclose(
        traced[[4, 14, 24]], PEAK * np.array([1, 0.9, 0.81]), rtol=1e-6
    )


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_restarts(1.0, 10, 5, 10)
    with pytest.raises(ValueError, match="cycle_steps"):
        warmup_cosine_restarts(1.0, 0, 0, 10)
