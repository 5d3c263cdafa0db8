"""Dropout whose keep decisions come from a hash of each element's index (a speed option, off unless a recipe asks).

    bits = mix(mix(i ^ k0) ^ k1)     i: the element's row-major index, (k0, k1): two words drawn from the key
    keep = bits >= t,  t = round(rate * 2^32),  y = where(keep, x / P(keep), 0),  P(keep) = 1 - t / 2^32

mix is lowbias32 (C. Wellons, hash-prospector): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b;
x ^= x >> 16, a bijection of 32-bit words with near-ideal avalanche. The key (drawn with `jax.random`, threefry)
enters before each of the two rounds, so two keys give unrelated masks, not shifted copies of one; for one key,
distinct elements get distinct words. P(keep) is exact, so E[y] = x; the rate is resolved to 2^-32.

Why not `nn.Dropout`: it draws 32 bits an element with JAX's threefry (20 rounds of integer work a draw). XLA's GPU
backend computes those in kernels of their own and writes the bits out, which the forward and the backward pass
then read: in the DDPM CIFAR-10 UNet at batch 128, 364 MB of uint32 a step (benchmarks/NOTES.md, session 10). The
hash is cheap enough that XLA fuses it into the kernels that apply the mask, forward and backward, and no bits are
written. It is not a cryptographic generator: the tests check the keep rate, the mean, and that neighbouring
elements, channels, examples and successive keys give uncorrelated decisions. The index comes from an iota, which
XLA's SPMD partitioner offsets per shard, so a sharded batch gets the unsharded mask with no collective.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)


def mix32(x: jax.Array) -> jax.Array:
    """lowbias32 of uint32 words, elementwise."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(MIX_MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = x * jnp.uint32(MIX_MULTIPLIERS[1])
    return x ^ (x >> 16)


def hashed_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """32 random bits per element of `shape` (uint32): mix(mix(i ^ k0) ^ k1), i the element's row-major index."""
    if math.prod(shape) > 1 << 32:
        raise ValueError(f"hashed dropout bits for shape {shape}: more than 2^32 elements to index")
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return mix32(mix32(index ^ k0) ^ k1)


def keep_threshold(rate: float) -> int:
    """t = round(rate * 2^32): an element is kept where its bits >= t."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate}: expected 0 <= rate < 1")
    return min(round(rate * (1 << 32)), (1 << 32) - 1)


class HashedDropout(nn.Module):
    """Inverted dropout over x, from the 'dropout' rng; the identity when `deterministic` or rate 0."""

    rate: float
    deterministic: bool = False
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (any shape) -> the same shape, in x's dtype."""
        threshold = keep_threshold(self.rate)
        if self.deterministic or threshold == 0:
            return x
        keep = hashed_bits(self.make_rng(self.rng_collection), x.shape) >= jnp.uint32(threshold)
        scale = 1.0 / (1.0 - threshold / (1 << 32))
        return jnp.where(keep, (x.astype(jnp.float32) * scale).astype(x.dtype), jnp.zeros_like(x))
