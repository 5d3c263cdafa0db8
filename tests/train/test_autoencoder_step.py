"""The autoencoder step (diffax/train/autoencoder_step.py) against LDM's loss written out here with full
`jax.grad`s on configs/autoencoder_mnist.py:tiny (two levels): the KL's closed form, the adaptive weight (the ratio
of the two losses' gradient norms at the decoder's conv_out kernel), the gradients both networks get, and the
discriminator's start.

The step runs with plain SGD of rate 1 instead of the Adams, so `params - new params` is the gradient it applied.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import autoencoder_mnist
from diffax.evaluation.ssim import ms_ssim
from diffax.experiment import DataSpec, build_experiment
from diffax.train.autoencoder_step import adaptive_weight, adversarial_factor, hinge_loss, make_autoencoder_step_fn
from diffax.train.state import TrainState

BATCH = 4
SHAPE = (24, 24, 1)


@pytest.fixture(scope="module")
def setup():
    """(experiment, state at step 0, batch, {step: (new state, metrics)} for steps 0 and disc_start, and
    "reconstruction_only": the program without the discriminator at step 0)."""
    config = autoencoder_mnist.get_config("tiny")
    config.autoencoder.sample_posterior = False  # The reference below decodes the posterior mean.
    config.model.kwargs.channel_mult = (1, 1)  # f = 2 on 24x24 images: the smallest graph that has it all.
    experiment = build_experiment(config, DataSpec(SHAPE, 10, True))
    optimizer = optax.sgd(1.0)
    # An 'rbg' key: jitted initialization compiles several times faster on CPU than with threefry.
    params, model_state = jax.jit(experiment.init_variables)(jax.random.key(0, impl="rbg"))
    params["logvar"] = jnp.asarray(0.3)  # A log-variance away from 0 shows how it enters.
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=(params,),
                       opt_state=optimizer.init(params), key=jax.random.PRNGKey(1), model_state=model_state)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (BATCH, *SHAPE)), jnp.float32),
             "label": jnp.zeros((BATCH,), jnp.int32)}
    step = jax.jit(make_autoencoder_step_fn(experiment, optimizer, None))
    disc_start = config.autoencoder.disc_start
    results = {s: step(state.replace(step=jnp.asarray(s, jnp.int32)), batch) for s in (0, disc_start)}
    results["reconstruction_only"] = jax.jit(make_autoencoder_step_fn(experiment, optimizer, None, False))(
        state, batch)
    return experiment, state, batch, results


def _reference(experiment, params, model_state, x):
    """LDM's losses of the module docstring of autoencoder_step, each as a function of all the parameters."""
    settings = experiment.config.autoencoder
    model, discriminator = experiment.model, experiment.discriminator

    def parts(autoencoder_params, logvar):
        x_hat, posterior = model.apply({"params": autoencoder_params}, x, train=True)
        rec = jnp.abs(x - x_hat) + settings.perceptual_weight * (1 - ms_ssim(x, x_hat, data_range=2.0))[:, None,
                                                                                                           None, None]
        nll = jnp.sum(rec / jnp.exp(logvar) + logvar) / x.shape[0]
        mean, log_variance = posterior.mean, posterior.logvar  # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - ln s^2) / 2
        kl = jnp.mean(jnp.sum(mean**2 + jnp.exp(log_variance) - 1 - log_variance, axis=(1, 2, 3)) / 2)
        logits, _ = discriminator.apply({"params": params["discriminator"], **model_state}, x_hat, train=True,
                                        mutable=["batch_stats"])
        return nll, kl, -jnp.mean(logits), x_hat

    def disc_loss(disc_params, x_hat):
        def logits(images):
            return discriminator.apply({"params": disc_params, **model_state}, images, train=True,
                                       mutable=["batch_stats"])[0]

        return 0.5 * (jnp.mean(jax.nn.relu(1 - logits(x))) + jnp.mean(jax.nn.relu(1 + logits(x_hat))))

    return parts, disc_loss


@pytest.fixture(scope="module")
def reference(setup):
    experiment, state, batch, _ = setup
    parts, disc_loss = _reference(experiment, state.params, {"batch_stats": state.model_state["discriminator"]},
                                  batch["image"])
    params = state.params

    @jax.jit
    def compute():
        nll, kl, g, x_hat = parts(params["autoencoder"], params["logvar"])
        # The KL does not depend on the decoder: at conv_out the first gradient is that of nll alone.
        base = jax.grad(lambda p, logvar: (lambda nll, kl, *_: nll + 1e-6 * kl)(*parts(p, logvar)),
                        argnums=(0, 1))(params["autoencoder"], params["logvar"])
        adversarial = jax.grad(lambda p: parts(p, params["logvar"])[2])(params["autoencoder"])
        last = lambda grads: grads["decoder"]["conv_out"]["kernel"]  # noqa: E731
        weight = 0.5 * jnp.clip(jnp.linalg.norm(last(base[0])) / (jnp.linalg.norm(last(adversarial)) + 1e-4),
                                0, 1e4)
        grads = {factor: (jax.tree.map(lambda b, a: b + weight * factor * a, base[0], adversarial), base[1])
                 for factor in (0.0, 1.0)}
        disc_grad = jax.grad(disc_loss)(params["discriminator"], x_hat)
        return dict(nll=nll, kl=kl, g_loss=g, d_weight=weight, disc_loss=disc_loss(params["discriminator"], x_hat),
                    grads=grads, disc_grad=disc_grad)

    return compute()


def _applied(state, new_state):
    return jax.tree.map(lambda old, new: old - new, state.params, new_state.params)


def _assert_trees_close(got, want):
    """Leaf by leaf within 0.2%, or 1e-4 of the tree's largest entry (entries that are float-rounding noise)."""
    scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(want))
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=2e-3, atol=1e-4 * scale)


def test_losses_and_the_adaptive_weight_match_ldm(setup, reference):
    experiment, _, _, results = setup
    assert experiment.config.autoencoder.kl_weight == 1e-6 and experiment.config.autoencoder.disc_weight == 0.5
    _, metrics = results[experiment.config.autoencoder.disc_start]
    for name in ("nll", "kl", "g_loss", "d_weight", "disc_loss"):
        np.testing.assert_allclose(metrics[name], reference[name], rtol=2e-4, err_msg=name)
    assert 0 < float(reference["d_weight"]) < 0.5e4  # Inside the clamp: the ratio itself is tested.
    np.testing.assert_allclose(metrics["loss"], reference["nll"] + 1e-6 * reference["kl"]
                               + reference["d_weight"] * reference["g_loss"], rtol=2e-4)


@pytest.mark.parametrize("after_start", [False, True])
def test_gradients_of_both_networks(setup, reference, after_start):
    experiment, state, _, results = setup
    new_state, metrics = results[experiment.config.autoencoder.disc_start if after_start else 0]
    applied = _applied(state, new_state)
    expected_autoencoder, expected_logvar = reference["grads"][1.0 if after_start else 0.0]
    _assert_trees_close(applied["autoencoder"], expected_autoencoder)
    np.testing.assert_allclose(applied["logvar"], expected_logvar, rtol=1e-4)
    if after_start:
        assert float(metrics["disc_factor"]) == 1.0
        _assert_trees_close(applied["discriminator"], reference["disc_grad"])
    else:  # Before disc_start: no adversarial term, an untouched discriminator, yet its statistics still move.
        assert float(metrics["disc_factor"]) == 0.0 and float(metrics["disc_loss"]) == 0.0
        for got in jax.tree.leaves(applied["discriminator"]):
            assert not np.any(np.asarray(got))
        assert not np.allclose(jax.tree.leaves(new_state.model_state)[0], jax.tree.leaves(state.model_state)[0])


def test_adaptive_weight_clamp_factor_and_hinge_by_hand():
    np.testing.assert_allclose(adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 0.5]), 0.5),
                               0.5 * 5.0 / (0.5 + 1e-4), rtol=1e-6)
    assert float(adaptive_weight(jnp.ones(3), jnp.zeros(3), 0.5)) == 0.5e4  # Clamped at 1e4.
    assert [float(adversarial_factor(jnp.asarray(s), 3, 1.0)) for s in (0, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
    np.testing.assert_allclose(hinge_loss(real, fake), 0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3), rtol=1e-6)


def test_the_reconstruction_only_program_trains_as_the_full_step_before_disc_start(setup):
    _, state, _, results = setup
    (full, full_metrics), (only, only_metrics) = results[0], results["reconstruction_only"]
    chex.assert_trees_all_close(only.params, full.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(only.ema_params, full.ema_params, rtol=1e-6, atol=1e-7)
    for name in ("loss", "nll", "kl", "disc_loss", "disc_factor", "grad_norm", "disc_grad_norm"):
        np.testing.assert_allclose(only_metrics[name], full_metrics[name], rtol=1e-6, err_msg=name)
    chex.assert_trees_all_equal(only.model_state, state.model_state)  # The discriminator did not run.
