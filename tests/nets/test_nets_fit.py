"""A tiny UNet and a tiny DiT each memorize one small batch under diffax's denoising loss.

The loss key is fixed, so every step sees the same (t, eps): the loss is then a deterministic function of the
parameters and must fall well below its starting value (about 1, the eps-MSE of a network that outputs 0, which
a fresh one does: its output layer is zero-initialized).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffax.objectives import denoising_loss
from diffax.schedules import get_schedule


def fit(model, x0: jax.Array, labels: jax.Array | None, steps: int, learning_rate: float) -> tuple[float, float]:
    """Adam on the eps-prediction loss of one fixed batch; returns (first loss, last loss)."""
    schedule = get_schedule("vp_cosine")
    noise_level = jnp.zeros(x0.shape[:1])
    # An 'rbg' key: jitted init with threefry keys compiles several times slower on CPU (one generator per tensor).
    init_key = jax.random.key(0, impl="rbg")
    params = jax.jit(lambda key: model.init(key, x0, noise_level, labels, train=False))(init_key)["params"]
    np.testing.assert_array_equal(params["head"]["kernel"], 0.0)  # a fresh network predicts 0
    optimizer = optax.adam(learning_rate)

    def loss_fn(params):
        def net_fn(x, t, cond):
            return model.apply({"params": params}, x, t, cond, train=True)

        return denoising_loss(net_fn, x0, jax.random.key(1), schedule=schedule, cond=labels)[0]

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
        return losses

    losses = train(params)
    return float(losses[0]), float(losses[-1])


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_tiny_network_fits_one_batch(kind, make_tiny):
    model, shape = make_tiny(kind, num_classes=4)
    x0 = jnp.tanh(jax.random.normal(jax.random.key(2), (4, *shape)))
    first, last = fit(model, x0, jnp.arange(4), steps=100, learning_rate=3e-3)
    assert last < first / 10, (first, last)
