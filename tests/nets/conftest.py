"""Shared helpers for the network tests: tiny configurations and random parameters."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets import MLP, DiT, UNet

# Small enough to compile in a few seconds on CPU; odd image sizes, so the pad-and-crop path always runs.
TINY = {
    "unet": (UNet, dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                        head_channels=8, dropout=0.0), (7, 7, 3)),
    "dit": (DiT, dict(patch_size=2, hidden_size=32, depth=2, num_heads=2), (7, 7, 4)),
    "mlp": (MLP, dict(width=32, num_blocks=2), (5,)),
}


def tiny(kind: str, **overrides):
    """(module, one example's shape) of a tiny network of kind 'unet', 'dit' or 'mlp'."""
    cls, kwargs, shape = TINY[kind]
    return cls(**{**kwargs, **overrides}), shape


def random_variables(model, x: jax.Array, cond=None, seed: int = 0) -> dict:
    """Random parameters of a score network for x, as `randomize_like` draws them."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros(x.shape[:1]), cond, train=False))
    return randomize_like(shapes, seed)


def randomize_like(shapes, seed: int = 0):
    """Random arrays of the shapes and dtypes of the pytree `shapes`, drawn with numpy (no XLA compilation): kernels
    and embeddings N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2). Unlike a fresh init, whose
    zero-initialized output layers make every network output exactly 0, the output then depends on every input."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if "scale" in name:
            return jnp.asarray(1 + 0.1 * noise, leaf.dtype)
        if len(leaf.shape) >= 2:
            return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
        return jnp.asarray(0.1 * noise, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture
def make_tiny() -> Callable:
    return tiny


@pytest.fixture
def randomized() -> Callable:
    return random_variables


@pytest.fixture
def randomized_like() -> Callable:
    return randomize_like
