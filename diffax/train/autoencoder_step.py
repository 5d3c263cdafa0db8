"""One optimizer step of LDM's KL autoencoder and its PatchGAN, as a pure function (config.task = 'autoencoder').

The loss is LDM's `LPIPSWithDiscriminator` (CompVis/latent-diffusion, ldm/modules/losses/contperceptual.py, with
taming-transformers' hinge loss and `adopt_weight`, taming/modules/losses/vqperceptual.py), Rombach et al. 2022,
Sec. 3.1 and Appendix G. With x (B, H, W, C) in [-1, 1], x_hat = decoder(z), z ~ q(z | x) (its mean with
autoencoder.sample_posterior False), D the discriminator's patch logits, s the step, all sums over H, W, C:

    rec     = |x - x_hat| + perceptual_weight * P(x, x_hat)          P per image, broadcast to every pixel
    nll     = sum(rec / exp(logvar) + logvar) / B                     logvar: a scalar (frozen unless learn_logvar)
    kl      = sum KL(q(z | x) || N(0, I)) / B                         (`nets.DiagonalGaussian.kl`)
    g       = -mean D(x_hat)
    factor  = disc_factor if s >= disc_start else 0                   (`adversarial_factor`)
    d_w     = clip(||d nll / d W|| / (||d g / d W|| + 1e-4), 0, 1e4) * disc_weight, W the decoder's conv_out
              kernel, held constant (`adaptive_weight`)
    loss_G  = nll + kl_weight * kl + d_w * factor * g
    loss_D  = factor * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(sg(x_hat))))   (`hinge_loss`)

loss_G trains the autoencoder (and the log-variance when learned), loss_D the discriminator, each with its own Adam
(`diffax.train.optimizer.task_optimizer`), both in this one step; the EMA covers both. Before disc_start both
adversarial terms are exactly zero, so the discriminator's Adam sees zero gradients and leaves it unchanged.
Steps that all lie before disc_start may run the reconstruction-only program (adversarial=False, which the runner
picks by `first_adversarial_step`): the same update of every weight without running the discriminator. It skips
only what LDM still does with it there, moving its BatchNorm running statistics, which nothing in training reads
(the discriminator normalizes with batch statistics); g_loss, d_weight and the logits read 0. One program with a
`lax.cond` instead ran the adversarial steps slower on a GPU (benchmarks/NOTES.md).

How it is computed: one forward pass of the autoencoder under `jax.vjp`; the gradients of nll and g with respect
to x_hat; the gradients with respect to W are those cotangents pulled back by the same vjp, of which only W's leaf
is kept (under jit, XLA drops the rest of those two backward passes: what remains is one backward through conv_out,
as PyTorch's `autograd.grad(loss, last_layer)`); then one full backward with the combined cotangent
d nll/d x_hat + d_w * factor * d g/d x_hat and kl_weight on the KL. The discriminator is called three times in
training mode, threading its BatchNorm statistics (`TrainState.model_state`): on x_hat for g, then on x and on
sg(x_hat) for loss_D, each call normalizing with its own batch's statistics as LDM's separate calls do.

One difference from LDM, for one forward pass fewer: LDM (PyTorch Lightning, one optimizer after the other)
recomputes x_hat for the discriminator after the autoencoder's update with a fresh posterior sample; here the
discriminator sees the x_hat of this step's generator loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffax.evaluation.perceptual import perceptual_distance
from diffax.experiment import Experiment
from diffax.train.optimizer import AUTOENCODER_GROUPS, clip_by_global_norm, learning_rate_schedule
from diffax.train.state import TrainState, update_ema
from diffax.train.step import Batch, Metrics, StepFn

LAST_LAYER = ("decoder", "conv_out", "kernel")  # LDM's `get_last_layer`: decoder.conv_out.weight.
ADAPTIVE_EPS = 1e-4
ADAPTIVE_MAX = 1e4


def adaptive_weight(nll_grad: jax.Array, g_grad: jax.Array, disc_weight: float) -> jax.Array:
    """clip(||nll_grad|| / (||g_grad|| + 1e-4), 0, 1e4) * disc_weight, gradients of the two losses at the last
    layer (LDM's `calculate_adaptive_weight`), with no gradient of its own."""
    ratio = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + ADAPTIVE_EPS)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, ADAPTIVE_MAX) * disc_weight)


def adversarial_factor(step: jax.Array, disc_start: int, disc_factor: float) -> jax.Array:
    """disc_factor from step disc_start on, 0 before (taming's `adopt_weight`)."""
    return jnp.where(step >= disc_start, disc_factor, 0.0).astype(jnp.float32)


def hinge_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - logits_real) + mean relu(1 + logits_fake)) (taming's `hinge_d_loss`)."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def first_adversarial_step(config) -> int:
    """The first step whose update needs the discriminator (disc_start; never where disc_factor is 0)."""
    settings = config.autoencoder
    return settings.disc_start if settings.disc_factor else 2**31 - 1


def _last_layer(tree):
    for key in LAST_LAYER:
        tree = tree[key]
    return tree


def make_autoencoder_step_fn(experiment: Experiment, optimizer: optax.GradientTransformation,
                             mesh: Mesh, adversarial: bool = True) -> StepFn:
    """step(state, batch, net_params=None) -> (state, metrics), not jitted; the module docstring's step, or with
    adversarial=False its reconstruction-only program, exact for steps before `first_adversarial_step(config)` only.

    state.params {"autoencoder", "discriminator", "logvar"}, state.model_state {"discriminator": batch_stats};
    batch {"image": (B, H, W, C), ...}. net_params is ignored (there is no cast copy). metrics: loss (loss_G), nll, kl,
    rec_l1 (mean |x - x_hat|), perceptual (mean P), g_loss, d_weight, disc_factor, disc_loss, logits_real,
    logits_fake (means), logvar, grad_norm and disc_grad_norm (before clipping), learning_rate.
    """
    del mesh  # The batch arrives sharded; the step has no micro-batches.
    config = experiment.config
    settings = config.autoencoder
    if config.train.grad_accum_steps != 1:
        raise ValueError(f"config.train.grad_accum_steps = {config.train.grad_accum_steps}: the autoencoder step "
                         f"takes whole batches (1)")
    perceptual = perceptual_distance(settings.perceptual, settings.lpips_weights)
    model, discriminator = experiment.model, experiment.discriminator
    decays = tuple(config.train.ema_decays)
    schedule = learning_rate_schedule(config.optim, config.train.num_steps)

    def step(state: TrainState, batch: Batch, net_params=None) -> tuple[TrainState, Metrics]:
        del net_params  # state.params itself: an autoencoder declares no cast copy (runner.declared_casts).
        params, stats = state.params, state.model_state["discriminator"]
        x = batch["image"].astype(jnp.float32)
        sample_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))

        def reconstruct(autoencoder_params):
            x_hat, posterior = model.apply({"params": autoencoder_params}, x, train=True,
                                           sample_posterior=settings.sample_posterior, key=sample_key,
                                           rngs={"dropout": dropout_key})
            return x_hat, jnp.mean(posterior.kl())

        (x_hat, kl), pull_back = jax.vjp(reconstruct, params["autoencoder"])

        def nll_fn(x_hat, logvar):
            l1 = jnp.abs(x - x_hat)
            distance = jnp.zeros(x.shape[0]) if perceptual is None else perceptual(x, x_hat)
            rec = l1 + settings.perceptual_weight * distance[:, None, None, None]
            nll = jnp.sum(rec / jnp.exp(logvar) + logvar) / x.shape[0]
            return nll, (jnp.mean(l1), jnp.mean(distance))

        def discriminate(disc_params, stats, images):
            logits, updates = discriminator.apply({"params": disc_params, "batch_stats": stats}, images, train=True,
                                                  mutable=["batch_stats"])
            return logits, updates["batch_stats"]

        def g_fn(x_hat):
            logits, new_stats = discriminate(params["discriminator"], stats, x_hat)
            return -jnp.mean(logits), new_stats

        (nll, (rec_l1, distance)), (nll_cotangent, logvar_grad) = jax.value_and_grad(
            nll_fn, argnums=(0, 1), has_aux=True)(x_hat, params["logvar"])
        factor = adversarial_factor(state.step, settings.disc_start, settings.disc_factor)
        zero = jnp.zeros((), jnp.float32)
        if adversarial:
            (g_loss, stats), g_cotangent = jax.value_and_grad(g_fn, has_aux=True)(x_hat)
            d_weight = adaptive_weight(_last_layer(pull_back((nll_cotangent, zero))[0]),
                                       _last_layer(pull_back((g_cotangent, zero))[0]), settings.disc_weight)
            x_hat_cotangent = nll_cotangent + d_weight * factor * g_cotangent

            def d_fn(disc_params):
                logits_real, new_stats = discriminate(disc_params, stats, x)
                logits_fake, new_stats = discriminate(disc_params, new_stats, jax.lax.stop_gradient(x_hat))
                return factor * hinge_loss(logits_real, logits_fake), (new_stats, logits_real, logits_fake)

            (disc_loss, (stats, logits_real, logits_fake)), disc_grads = jax.value_and_grad(
                d_fn, has_aux=True)(params["discriminator"])
        else:
            g_loss = d_weight = disc_loss = logits_real = logits_fake = zero
            x_hat_cotangent = nll_cotangent
            disc_grads = jax.tree.map(jnp.zeros_like, params["discriminator"])
        (autoencoder_grads,) = pull_back((x_hat_cotangent, jnp.asarray(settings.kl_weight, jnp.float32)))

        grads = {"autoencoder": autoencoder_grads, "discriminator": disc_grads, "logvar": logvar_grad}
        norms = {group: optax.tree.norm(grads[group]) for group in AUTOENCODER_GROUPS}
        for group in AUTOENCODER_GROUPS:  # Each network clipped by its own norm.
            grads[group] = clip_by_global_norm(grads[group], norms[group], config.optim.grad_clip_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        metrics = {"loss": nll + settings.kl_weight * kl + d_weight * factor * g_loss, "nll": nll, "kl": kl,
                   "rec_l1": rec_l1, "perceptual": distance, "g_loss": g_loss, "d_weight": d_weight,
                   "disc_factor": factor, "disc_loss": disc_loss, "logits_real": jnp.mean(logits_real),
                   "logits_fake": jnp.mean(logits_fake), "logvar": params["logvar"],
                   "grad_norm": norms["autoencoder"], "disc_grad_norm": norms["discriminator"],
                   "learning_rate": schedule(state.step)}
        ema_step = state.step if config.train.ema_warmup else None
        return state.replace(step=state.step + 1, params=new_params, opt_state=opt_state,
                             model_state={"discriminator": stats},
                             ema_params=update_ema(state.ema_params, new_params, decays, ema_step)), metrics

    return step
