"""tmrjax/models/hu2024.py: each block against a float64 numpy loop written from the papers,
the encoder's shapes for every Fig. 6 row, the all-off encoder against the lead's ResNet50,
ImageNet initialisation of the trunk, bf16, and BatchNorm updates in training mode.

Every block is checked with its own (random, non-trivial) parameters and BatchNorm statistics.
The encoder runs at 64x64, batch 2; each jitted forward is one XLA compile, so the encoder
variables are built once per module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmrjax.models import ResNet50
from tmrjax.models.hu2024 import (
    AWFF,
    ECA,
    LAFF,
    TAPS,
    CoordinateAttention,
    Hu2024Encoder,
    eca_kernel_size,
)
from tmrjax.weights import WeightsError, init_from_backbone, random_variables

IMAGE_SHAPE = (2, 64, 64, 3)


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    """These tests check numbers, not speed: XLA's cheap compile halves the module's run time."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# Fig. 6 rows that change the encoder (HNSS, Reg and pcaW do not), with the feature length.
ABLATION = {
    "SSL": ({"eca": False, "coordinate_attention": False, "awff": False, "laff": False}, 2048),
    "+ECA": ({"eca": True, "coordinate_attention": False, "awff": False, "laff": False}, 2048),
    "+CA": ({"eca": True, "coordinate_attention": True, "awff": False, "laff": False}, 2048),
    "+AWFF": ({"eca": True, "coordinate_attention": True, "awff": True, "laff": False}, 256 + 512 + 1024),
    "+LAFF": ({"eca": True, "coordinate_attention": True, "awff": True, "laff": True}, 512),
}


def flat(tree):
    return {
        tuple(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def randomize_batch_stats(variables, seed):
    """Non-trivial running statistics (mean ~ N(0, 0.5), var in [0.5, 1.5])."""
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, v: (rng.uniform(0.5, 1.5, v.shape) if path[-1].key == "var"
                         else rng.normal(0.0, 0.5, v.shape)).astype(np.float32),
        variables["batch_stats"],
    )
    return {**variables, "batch_stats": stats}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def batch_norm(y, axes, stats, params, train, eps=1e-5):
    """y normalised per last-axis channel with batch (biased) or running statistics."""
    if train:
        mean, var = y.mean(axis=axes), y.var(axis=axes)
    else:
        mean, var = np.float64(stats["mean"]), np.float64(stats["var"])
    return (y - mean) / np.sqrt(var + eps) * np.float64(params["scale"]) + np.float64(params["bias"])


def as64(tree):
    return jax.tree.map(lambda a: np.asarray(a, dtype=np.float64), tree)


# --------------------------------------------------------------------------- ECA


@pytest.mark.parametrize(
    "channels, expected",
    # t = (log2 C + 1) / 2: 3.5 -> 3; 4 -> tie, up to 5; 4.5 -> 5; 5 -> 5; 5.5 -> 5; 6 -> tie, 7.
    [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)],
)
def test_eca_kernel_size_by_hand(channels, expected):
    assert eca_kernel_size(channels) == expected


def test_eca_kernel_size_rejects_bad_channels():
    with pytest.raises(ValueError, match="positive int"):
        eca_kernel_size(0)


def ref_eca(x, w):
    b, h, wd, c = x.shape
    k = len(w)
    pad = (k - 1) // 2
    y = np.zeros((b, c))
    for i in range(h):
        for j in range(wd):
            y += x[:, i, j, :] / (h * wd)
    z = np.zeros((b, c))
    for ch in range(c):
        for t in range(k):
            src = ch + t - pad
            if 0 <= src < c:
                z[:, ch] += w[t] * y[:, src]
    return x * sigmoid(z)[:, None, None, :]


@pytest.mark.parametrize("channels", [10, 130])  # k = 3 and k = 5
def test_eca_matches_numpy(channels):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, channels)).astype(np.float32)
    module = ECA()
    variables = module.init(jax.random.key(1), x)
    kernel = variables["params"]["conv"]["kernel"]
    assert kernel.shape == (eca_kernel_size(channels), 1, 1)
    assert "bias" not in variables["params"]["conv"]
    got = module.apply(variables, x)
    assert got.shape == x.shape and got.dtype == jnp.float32
    want = ref_eca(np.float64(x), np.float64(kernel[:, 0, 0]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- CA


def hard_swish(x):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def ref_coordinate_attention(x, params, stats, train):
    b, h, w, c = x.shape
    z_h = np.zeros((b, h, c))
    z_w = np.zeros((b, w, c))
    for i in range(h):
        for j in range(w):
            z_h[:, i] += x[:, i, j] / w
            z_w[:, j] += x[:, i, j] / h
    y = np.concatenate([z_h, z_w], axis=1) @ params["conv1"]["kernel"][0] + params["conv1"]["bias"]
    y = hard_swish(batch_norm(y, (0, 1), stats["bn1"], params["bn1"], train))
    a_h = sigmoid(y[:, :h] @ params["conv_h"]["kernel"][0] + params["conv_h"]["bias"])
    a_w = sigmoid(y[:, h:] @ params["conv_w"]["kernel"][0] + params["conv_w"]["bias"])
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = x[:, i, j] * a_h[:, i] * a_w[:, j]
    return out


@pytest.mark.parametrize("train", [False, True])
def test_coordinate_attention_matches_numpy(train):
    x = np.random.default_rng(2).normal(size=(2, 5, 3, 16)).astype(np.float32)
    module = CoordinateAttention(reduction=4)  # max(8, 16 // 4) = 8 mid channels
    variables = randomize_batch_stats(module.init(jax.random.key(3), x), seed=4)
    assert variables["params"]["conv1"]["kernel"].shape == (1, 16, 8)
    got, updates = module.apply(variables, x, train=train, mutable=["batch_stats"])
    assert got.shape == x.shape and got.dtype == jnp.float32
    want = ref_coordinate_attention(
        np.float64(x), as64(variables["params"]), as64(variables["batch_stats"]), train
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    changed = not np.allclose(updates["batch_stats"]["bn1"]["mean"],
                              variables["batch_stats"]["bn1"]["mean"])
    assert changed == train


def test_coordinate_attention_mid_channels_floor():
    x = jnp.zeros((1, 2, 2, 64))
    variables = jax.eval_shape(CoordinateAttention().init, jax.random.key(0), x)
    assert variables["params"]["conv1"]["kernel"].shape == (1, 64, 8)  # max(8, 64 // 32)


# --------------------------------------------------------------------------- AWFF


def ref_bilinear(y, out_h, out_w):
    """Half-pixel-centre bilinear resize (PyTorch align_corners=False), one pixel at a time."""
    b, in_h, in_w, c = y.shape

    def taps(dst, n_in, n_out):
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        r0, r1, fr = taps(i, in_h, out_h)
        for j in range(out_w):
            c0, c1, fc = taps(j, in_w, out_w)
            out[:, i, j] = ((1 - fr) * (1 - fc) * y[:, r0, c0] + (1 - fr) * fc * y[:, r0, c1]
                            + fr * (1 - fc) * y[:, r1, c0] + fr * fc * y[:, r1, c1])
    return out


def ref_awff(maps, params, stats, train):
    """Eq. 11 in the paper's order: upsample to f1, 1x1 conv, BN, ReLU, softmax(p)-weighted sum."""
    h, w = maps[0].shape[1:3]
    p = params["p"]
    weights = np.exp(p - p.max()) / np.exp(p - p.max()).sum()
    out = 0.0
    for i, m in enumerate(maps, start=1):
        up = ref_bilinear(m, h, w) if m.shape[1:3] != (h, w) else m
        y = up @ params[f"conv{i}"]["kernel"][0, 0] + params[f"conv{i}"]["bias"]
        y = batch_norm(y, (0, 1, 2), stats[f"bn{i}"], params[f"bn{i}"], train)
        out = out + weights[i - 1] * np.maximum(y, 0.0)
    return out


@pytest.mark.parametrize("train", [False, True])
def test_awff_matches_numpy(train):
    rng = np.random.default_rng(5)
    # f1 8x6; f2 4x3 (x2); f3 2x2 (x4 rows, x3 columns): integer and non-integer scales.
    maps = [rng.normal(size=s).astype(np.float32) for s in [(2, 8, 6, 3), (2, 4, 3, 5), (2, 2, 2, 6)]]
    module = AWFF(out_channels=4)
    variables = randomize_batch_stats(module.init(jax.random.key(6), maps), seed=7)
    params = dict(variables["params"])
    params["p"] = jnp.asarray([0.3, -1.0, 0.8])
    variables = {**variables, "params": params}
    got, _ = module.apply(variables, maps, train=train, mutable=["batch_stats"])
    assert got.shape == (2, 8, 6, 4) and got.dtype == jnp.float32
    want = ref_awff([np.float64(m) for m in maps], as64(params), as64(variables["batch_stats"]), train)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_awff_rejects_larger_later_map():
    maps = [jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 4, 4, 3))]
    with pytest.raises(ValueError, match="larger than the reference"):
        AWFF(out_channels=4).init(jax.random.key(0), maps)


# --------------------------------------------------------------------------- LAFF


def ref_laff(features, params):
    k = len(features)
    projected = [np.tanh(f @ params[f"linear{i + 1}"]["kernel"] + params[f"linear{i + 1}"]["bias"])
                 for i, f in enumerate(features)]
    w = params["attention"]["kernel"][:, 0]
    b, d = projected[0].shape
    out = np.zeros((b, d))
    for n in range(b):
        logits = np.array([projected[i][n] @ w for i in range(k)])
        a = np.exp(logits - logits.max())
        a /= a.sum()
        for i in range(k):
            out[n] += a[i] * projected[i][n]
    return out


def test_laff_matches_numpy():
    rng = np.random.default_rng(8)
    features = [rng.normal(size=(2, n)).astype(np.float32) for n in (3, 5, 7)]
    module = LAFF(d=4)
    variables = module.init(jax.random.key(9), features)
    got = module.apply(variables, features)
    assert got.shape == (2, 4) and got.dtype == jnp.float32
    want = ref_laff([np.float64(f) for f in features], as64(variables["params"]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- encoder


def abstract_init(model, shape=IMAGE_SHAPE):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape), project=bool(model.projection_dim))
    )


@pytest.fixture(scope="module")
def resnet_abstract():
    return flat(jax.eval_shape(
        ResNet50(taps=("conv5",)).init, jax.random.key(0), jnp.zeros(IMAGE_SHAPE)))


@pytest.mark.parametrize("row", list(ABLATION))
def test_encoder_shapes_for_every_ablation_row(row, resnet_abstract):
    switches, dim = ABLATION[row]
    model = Hu2024Encoder(**switches)
    assert model.feature_dim == dim
    variables = abstract_init(model)
    # The trunk is the ResNet50's tree, path for path and shape for shape, whatever the switches.
    trunk = {(k[0],) + k[2:]: v.shape for k, v in flat(variables).items() if k[1] == "backbone"}
    assert trunk == {k: v.shape for k, v in resnet_abstract.items()}
    feature, projection = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(IMAGE_SHAPE), project=True), variables)
    assert (feature.shape, feature.dtype) == ((2, dim), jnp.float32)
    assert (projection.shape, projection.dtype) == ((2, 128), jnp.float32)
    assert flat(variables["params"]["projection_head"])[("fc1", "kernel")].shape == (dim, dim)


def test_keras_layout_trunk_matches_keras_resnet50():
    shape = (1, 32, 32, 3)
    encoder = flat(abstract_init(Hu2024Encoder(layout="keras"), shape))
    resnet = flat(jax.eval_shape(ResNet50(layout="keras", taps=("conv5",)).init,
                                 jax.random.key(0), jnp.zeros(shape)))
    trunk = {(k[0],) + k[2:]: v.shape for k, v in encoder.items() if k[1] == "backbone"}
    assert trunk == {k: v.shape for k, v in resnet.items()}


def test_encoder_switch_errors():
    with pytest.raises(ValueError, match="laff=True needs awff=True"):
        _ = Hu2024Encoder(awff=False, laff=True).feature_dim
    model = Hu2024Encoder(projection_dim=0)
    variables = abstract_init(model)
    assert "projection_head" not in variables["params"]
    with pytest.raises(ValueError, match="projection_dim=0"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros(IMAGE_SHAPE), project=True), variables)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(10).uniform(0, 255, IMAGE_SHAPE), jnp.float32)


@pytest.fixture(scope="module")
def imagenet_like():
    """A torchvision-layout ResNet50 as load_backbone returns it, with non-trivial BN statistics."""
    return randomize_batch_stats(random_variables("resnet50", "torchvision", seed=11), seed=12)


def test_all_off_is_resnet50_gap(imagenet_like, images):
    model = Hu2024Encoder(**ABLATION["SSL"][0], projection_dim=0)
    # Without a head every variable is the trunk's, so the copy fills an abstract tree.
    variables = init_from_backbone(imagenet_like, abstract_init(model))
    feature = jax.jit(model.apply)(variables, images)
    conv5 = jax.jit(ResNet50(taps=("conv5",)).apply)(imagenet_like, images)["conv5"]
    want = np.mean(np.float64(conv5), axis=(1, 2))
    assert (feature.shape, feature.dtype) == ((2, 2048), jnp.float32)
    np.testing.assert_allclose(feature, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def fresh_full(imagenet_like):
    """The full encoder's own initial values for its new modules, around an all-zero trunk.

    Built by letting Flax create the missing variables during apply, which compiles much less
    than model.init with a random trunk that init_from_backbone would overwrite anyway.
    """
    trunk = {col: {"backbone": jax.tree.map(jnp.zeros_like, tree)} for col, tree in imagenet_like.items()}
    init = jax.jit(lambda v, key: Hu2024Encoder().apply(
        v, jnp.zeros((1, 32, 32, 3)), project=True, rngs={"params": key}, mutable=True)[1])
    return init(trunk, jax.random.key(13))


@pytest.fixture(scope="module")
def full_variables(imagenet_like, fresh_full):
    return init_from_backbone(imagenet_like, fresh_full)


def test_init_from_backbone_copies_the_trunk_only(imagenet_like, fresh_full, full_variables):
    assert jax.tree.structure(full_variables) == jax.tree.structure(
        abstract_init(Hu2024Encoder(), (1, 32, 32, 3)))
    got, fresh = flat(full_variables), flat(fresh_full)
    trunk = {(col, "backbone", *path): value for (col, *path), value in flat(imagenet_like).items()}
    assert set(trunk) == {k for k in got if k[1] == "backbone"}
    for key, value in got.items():
        np.testing.assert_array_equal(value, trunk.get(key, fresh[key]), err_msg="/".join(key))
        assert value.dtype == fresh[key].dtype


def test_init_from_backbone_names_bad_keys(imagenet_like, fresh_full):
    bad_shape = jax.tree.map(lambda v: v, imagenet_like)
    bad_shape["params"]["conv3_block2"]["conv1"]["kernel"] = np.zeros((1, 1, 512, 64))
    with pytest.raises(WeightsError, match=r"params/conv3_block2/conv1/kernel: encoder has \(1, 1, 512, 128\)"):
        init_from_backbone(bad_shape, fresh_full)

    missing = jax.tree.map(lambda v: v, imagenet_like)
    del missing["batch_stats"]["bn1"]
    with pytest.raises(WeightsError, match="missing in backbone .*batch_stats/bn1/mean"):
        init_from_backbone(missing, fresh_full)

    keras = jax.eval_shape(ResNet50(layout="keras", taps=("conv5",)).init,
                           jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(WeightsError, match="not in the encoder trunk .*params/conv1/bias"):
        init_from_backbone(keras, fresh_full)


def train_step(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, project=True, mutable=["batch_stats"]))


@pytest.fixture(scope="module")
def full_train_outputs(full_variables, images):
    return train_step(Hu2024Encoder())(full_variables, images)


def test_full_encoder_train_updates_batch_stats(full_variables, full_train_outputs):
    (feature, projection), updates = full_train_outputs
    assert (feature.shape, feature.dtype) == ((2, 512), jnp.float32)
    assert (projection.shape, projection.dtype) == ((2, 128), jnp.float32)
    assert np.all(np.isfinite(feature)) and np.all(np.isfinite(projection))
    before, after = flat(full_variables["batch_stats"]), flat(updates["batch_stats"])
    assert before.keys() == after.keys()
    for module in ("backbone", "coordinate_attention", "awff_256", "awff_512", "awff_1024"):
        keys = [k for k in before if k[0] == module]
        assert keys and all(not np.allclose(before[k], after[k]) for k in keys), module


def test_bf16_encoder_computes_in_bf16(full_variables, full_train_outputs, images):
    model = Hu2024Encoder(dtype=jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(
        lambda v, x: model.apply(v, x, train=True, project=True, mutable=["batch_stats"])
    )(full_variables, images))
    assert "bf16[2,2,2,2048]" in jaxpr  # conv5 output
    (feature, projection), _ = train_step(model)(full_variables, images)
    assert (feature.shape, feature.dtype) == ((2, 512), jnp.float32)
    assert (projection.shape, projection.dtype) == ((2, 128), jnp.float32)
    assert np.all(np.isfinite(feature)) and np.all(np.isfinite(projection))
    reference = np.asarray(full_train_outputs[0][0])
    cosine = np.sum(feature * reference, -1) / (
        np.linalg.norm(feature, axis=-1) * np.linalg.norm(reference, axis=-1))
    # bfloat16 keeps 8 bits of mantissa through ~60 random-init layers in train mode; the rounding
    # differs between XLA:CPU releases (0.979 measured on jax 0.10.2)
    assert np.all(cosine > 0.97), cosine


def test_taps_serve_the_encoder_as_a_retrieval_backbone(full_variables, images):
    """taps mode (what `tmrjax.models.build_backbone` builds for hu2024-resnet50): "feature" is
    the retrieval feature as a 1 x 1 map, stage taps are the maps the next stage sees, and a
    shallow tap stops there with the same values."""
    both = jax.jit(lambda v, x: (Hu2024Encoder().apply(v, x), Hu2024Encoder(taps=TAPS).apply(v, x)))
    feature, maps = both(full_variables, images)
    assert list(maps) == list(TAPS)
    assert maps["feature"].shape == (2, 1, 1, 512)
    np.testing.assert_array_equal(maps["feature"][:, 0, 0], feature)
    assert [maps[t].shape[-1] for t in TAPS[:4]] == [256, 512, 1024, 2048]
    conv4 = jax.jit(Hu2024Encoder(taps=("conv4",)).apply)(full_variables, images)
    assert list(conv4) == ["conv4"]
    np.testing.assert_allclose(conv4["conv4"], maps["conv4"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"unknown taps \['conv6'\]"):
        Hu2024Encoder(taps=("conv6",)).apply(full_variables, images)
    with pytest.raises(ValueError, match="exclude each other"):
        Hu2024Encoder(taps=("feature",)).apply(full_variables, images, project=True)
