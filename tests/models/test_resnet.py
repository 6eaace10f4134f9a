"""tmrjax/models/resnet.py: the 1x1 convolutions computed as matmuls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmrjax.models.resnet import PointwiseConv


@pytest.mark.parametrize("strides", [1, 2, 3])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 9, 7, 5), (1, 8, 8, 16)])
def test_pointwise_conv_equals_a_valid_1x1_flax_conv_with_the_same_parameters(strides, use_bias, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    reference = nn.Conv(6, (1, 1), strides=(strides, strides), padding="VALID", use_bias=use_bias)
    variables = reference.init(jax.random.key(1), x)
    if use_bias:  # a non-zero bias, so that adding it is checked
        variables = {"params": {**variables["params"], "bias": jnp.arange(6.0)}}
    ours = PointwiseConv(6, strides=strides, use_bias=use_bias)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_pointwise_conv_computes_in_its_dtype_with_float32_parameters():
    x = jnp.ones((1, 4, 4, 3))
    module = PointwiseConv(2, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert module.apply(variables, x).dtype == jnp.bfloat16
