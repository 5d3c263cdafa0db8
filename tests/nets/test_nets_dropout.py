"""HashedDropout: its hash against a plain-integer reference, its decisions against Bernoulli statistics, against
itself sharded over 8 devices, and inside the UNet."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets.dropout import HashedDropout, hashed_bits, keep_threshold, mix32
from diffax.nets.unet import UNet
from tests.conftest import REPO

WORD = (1 << 32) - 1


def lowbias32(x: int) -> int:
    """Wellons' lowbias32 on Python integers (hash-prospector's C, with the 32-bit wrap made explicit)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & WORD
    x ^= x >> 15
    x = (x * 0x846CA68B) & WORD
    return x ^ (x >> 16)


def apply(rate, x, seed=0, deterministic=False):
    return HashedDropout(rate, deterministic=deterministic).apply({}, x, rngs={"dropout": jax.random.key(seed)})


def test_bits_are_the_published_hash_of_each_row_major_index():
    key, shape = jax.random.key(3), (2, 3, 5, 7)
    k0, k1 = (int(k) for k in jax.random.bits(key, (2,), jnp.uint32))
    expected = np.array([lowbias32(lowbias32(i ^ k0) ^ k1) for i in range(int(np.prod(shape)))], np.uint32)
    np.testing.assert_array_equal(np.asarray(jax.jit(hashed_bits, static_argnums=1)(key, shape)),
                                  expected.reshape(shape))
    words = np.array([0, 1, 2, 0x7FFFFFFF, 0x80000000, WORD], np.uint32)
    np.testing.assert_array_equal(np.asarray(mix32(jnp.asarray(words))), [lowbias32(int(w)) for w in words])
    with pytest.raises(ValueError, match="2\\^32"):
        hashed_bits(key, (1 << 16, 1 << 16, 2))


class BernoulliTest(chex.TestCase):
    """Under jit and without."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_decisions_are_bernoulli_with_the_rate_and_the_mean_is_kept(self):
        decisions_are_bernoulli(self.variant(lambda x: apply(0.1, x)), 0.1)


def decisions_are_bernoulli(dropout, rate):
    y = np.asarray(dropout(jnp.ones((64, 16, 16, 96))))  # 1.57M decisions
    keep_probability = 1 - keep_threshold(rate) / 2**32
    dropped = y == 0
    n = dropped.size
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(dropped.mean() - rate) < 5 * sigma
    np.testing.assert_allclose(np.unique(y[~dropped]), np.float32(1 / keep_probability))  # inverted dropout
    assert abs(y.mean() - 1.0) < 5 * sigma / keep_probability  # E[y] = x
    # Neighbouring channels, pixels and examples, and channels half the width apart, are uncorrelated.
    kept = (~dropped).astype(np.float64)
    pairs = ((kept[..., :-1], kept[..., 1:]), (kept[..., :48], kept[..., 48:]), (kept[:, :, :-1], kept[:, :, 1:]),
             (kept[:-1], kept[1:]))
    for a, b in pairs:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)


def test_successive_keys_give_uncorrelated_masks():
    keys = jax.random.split(jax.random.key(0), 4)  # as a train step's per-step keys
    x = jnp.ones((32, 16, 16, 64))
    masks = [np.asarray(HashedDropout(0.5).apply({}, x, rngs={"dropout": key}) == 0, np.float64).ravel()
             for key in keys]
    for a, b in zip(masks, masks[1:]):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)


def test_keys_shapes_dtypes_and_identity_cases():
    x = jax.random.normal(jax.random.key(1), (4, 5, 5, 7))
    y = apply(0.5, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.any(np.asarray(y) == 0) and np.any(np.asarray(y) != 0)
    assert not np.array_equal(np.asarray(apply(0.5, x, seed=1)), np.asarray(y))
    np.testing.assert_array_equal(apply(0.5, x, deterministic=True), x)
    np.testing.assert_array_equal(apply(0.0, x), x)
    bf16 = apply(0.5, x.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bf16) == 0, np.asarray(y) == 0)  # the mask depends on the key only
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout rate"):
            apply(rate, x)


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from diffax.nets.dropout import HashedDropout

mesh = Mesh(np.array(jax.devices()), ("data",))
examples = NamedSharding(mesh, PartitionSpec("data"))
x = jax.random.normal(jax.random.key(0), (16, 4, 4, 6))
fn = lambda x: HashedDropout(0.3).apply({}, x, rngs={"dropout": jax.random.key(5)})
compiled = jax.jit(fn, in_shardings=examples, out_shardings=examples).lower(x).compile()
hlo = compiled.as_text()
collectives = [op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute") if op in hlo]
assert not collectives, collectives  # each device hashes its own examples' indices
np.testing.assert_array_equal(compiled(jax.device_put(x, examples)), jax.jit(fn)(x))
print("dropout ok")
"""


def test_sharded_masks_are_the_unsharded_ones_without_collectives():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "dropout ok" in result.stdout, result.stderr[-3000:]


def test_unet_with_hashed_dropout_keeps_parameters_and_evaluation_output():
    kwargs = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.5)
    x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), jnp.array([0.3, 0.7])
    plain, hashed = UNet(**kwargs), UNet(**kwargs, hashed_dropout=True)
    shapes = lambda model: jax.eval_shape(lambda: model.init(jax.random.key(1), x, t, train=False))
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes(plain), shapes(hashed))
    params = jax.jit(lambda key: plain.init(key, x, t, train=False))(jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.1, params)  # zero-initialized output layers would hide the dropout
    evaluate = lambda model: jax.jit(lambda p: model.apply(p, x, t, train=False))(params)
    np.testing.assert_array_equal(evaluate(plain), evaluate(hashed))
    train = jax.jit(lambda p, key: hashed.apply(p, x, t, train=True, rngs={"dropout": key}))
    train_out = train(params, jax.random.key(2))
    assert not np.allclose(train_out, evaluate(hashed))
    np.testing.assert_array_equal(train_out, train(params, jax.random.key(2)))
