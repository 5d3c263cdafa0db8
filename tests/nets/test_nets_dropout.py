"""PairedDropout against Bernoulli statistics, against itself sharded over 8 devices, and inside the UNet."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets.dropout import LEVELS, PairedDropout
from diffax.nets.unet import UNet
from tests.conftest import REPO


def apply(rate, x, seed=0, deterministic=False):
    return PairedDropout(rate, deterministic=deterministic).apply({}, x, rngs={"dropout": jax.random.key(seed)})


class BernoulliTest(chex.TestCase):
    """Under jit and without."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_decisions_are_bernoulli_with_the_rounded_rate_and_the_mean_is_kept(self):
        decisions_are_bernoulli(self.variant(lambda x: apply(0.1, x)), 0.1)


def decisions_are_bernoulli(dropout, rate):
    y = np.asarray(dropout(jnp.ones((64, 16, 16, 96))))  # 1.57M decisions
    keep_probability = 1 - round(rate * LEVELS) / LEVELS
    dropped = y == 0
    n = dropped.size
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(dropped.mean() - (1 - keep_probability)) < 5 * sigma
    np.testing.assert_array_equal(np.unique(y[~dropped]), np.float32(1 / keep_probability))  # inverted dropout
    assert abs(y.mean() - 1.0) < 5 * sigma / keep_probability  # E[y] = x
    # Each 32-bit draw decides channels c and c + C/2: those, neighbouring pixels and examples are uncorrelated.
    kept = (~dropped).astype(np.float64)
    for a, b in ((kept[..., :48], kept[..., 48:]), (kept[:, :, :-1], kept[:, :, 1:]), (kept[:-1], kept[1:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)


def test_odd_channels_keys_and_identity_cases():
    x = jax.random.normal(jax.random.key(1), (4, 5, 5, 7))
    y = apply(0.5, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.any(np.asarray(y) == 0) and np.any(np.asarray(y) != 0)
    assert not np.array_equal(np.asarray(apply(0.5, x, seed=1)), np.asarray(y))
    np.testing.assert_array_equal(apply(0.5, x, deterministic=True), x)
    np.testing.assert_array_equal(apply(0.0, x), x)
    bf16 = apply(0.5, x.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout rate"):
            apply(rate, x)


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from diffax.nets.dropout import PairedDropout

mesh = Mesh(np.array(jax.devices()), ("data",))
examples = NamedSharding(mesh, PartitionSpec("data"))
x = jax.random.normal(jax.random.key(0), (16, 4, 4, 6))
fn = lambda x: PairedDropout(0.3).apply({}, x, rngs={"dropout": jax.random.key(5)})
compiled = jax.jit(fn, in_shardings=examples, out_shardings=examples).lower(x).compile()
hlo = compiled.as_text()
collectives = [op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute") if op in hlo]
assert not collectives, collectives  # each device draws its own examples' masks
np.testing.assert_array_equal(compiled(jax.device_put(x, examples)), jax.jit(fn)(x))
print("dropout ok")
"""


def test_sharded_masks_are_the_unsharded_ones_without_collectives():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "dropout ok" in result.stdout, result.stderr[-3000:]


def test_unet_with_paired_dropout_keeps_parameters_and_evaluation_output():
    kwargs = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.5)
    x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), jnp.array([0.3, 0.7])
    plain, paired = UNet(**kwargs), UNet(**kwargs, paired_dropout=True)
    shapes = lambda model: jax.eval_shape(lambda: model.init(jax.random.key(1), x, t, train=False))
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes(plain), shapes(paired))
    params = jax.jit(lambda key: plain.init(key, x, t, train=False))(jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.1, params)  # zero-initialized output layers would hide the dropout
    evaluate = lambda model: jax.jit(lambda p: model.apply(p, x, t, train=False))(params)
    np.testing.assert_array_equal(evaluate(plain), evaluate(paired))
    train = jax.jit(lambda p, key: paired.apply(p, x, t, train=True, rngs={"dropout": key}))
    train_out = train(params, jax.random.key(2))
    assert not np.allclose(train_out, evaluate(paired))
    np.testing.assert_array_equal(train_out, train(params, jax.random.key(2)))
