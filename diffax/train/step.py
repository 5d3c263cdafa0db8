"""One optimizer step as a pure function: loss, gradients (optionally accumulated over micro-batches), clipping,
AdamW, EMA. The loss is the task's (`LOSSES`): the denoising loss, or a classifier's softmax cross-entropy; the
rest of the step, and of the engine, is the same for both.

    key_s = fold_in(base_key, s)
    g = mean over k micro-batches of grad loss(params, micro-batch j, fold_in(key_s, j))   (k = grad_accum_steps)
    params <- AdamW(g * min(1, c / ||g||)),  ema_d <- d_s ema_d + (1 - d_s) params
    d_s = min(d, (1 + s) / (10 + s)) with train.ema_warmup, else d   (`diffax.train.state`)

Micro-batch j takes every k-th example of each device's shard (examples i with i mod k = j after a reshape
(B/k, k) -> (k, B/k)), so splitting the batch never moves data between devices. `diffax.train.runner` jits it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffax import objectives, parallel
from diffax.experiment import Experiment
from diffax.nets.embeddings import drop_context, drop_labels
from diffax.train.optimizer import clip_by_global_norm, learning_rate_schedule
from diffax.train.state import TrainState, update_ema

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
StepFn = Callable[..., tuple[TrainState, Metrics]]


LossFn = Callable[[dict, Batch, jax.Array, bool], tuple[jax.Array, Metrics]]


def denoising_loss_fn(experiment: Experiment) -> LossFn:
    """loss_fn(params, batch, key, train) -> (loss, metrics {"loss", "eps_mse", "x0_mse"}): the config's denoising
    loss on batch["image"] (`diffax.objectives.denoising_loss`), conditioned on batch["label"] where the network
    is class-conditional, on batch["context"] where it reads embedding sequences; in training each condition is
    replaced by its null (the null class, the zero sequence) with probability model.label_dropout."""
    config = experiment.config
    diffusion = config.diffusion

    def loss_fn(params, batch: Batch, key: jax.Array, train: bool = True):
        label_key, dropout_key, loss_key = jax.random.split(key, 3)
        cond, dropout = None, config.model.label_dropout if train else 0.0
        if experiment.conditioning == "labels":
            cond = batch["label"]
            if dropout > 0:
                cond = drop_labels(label_key, cond, dropout, experiment.num_classes)
        elif experiment.conditioning == "embeddings":
            cond = batch["context"]
            if dropout > 0:
                cond = drop_context(label_key, cond, dropout)
        net_fn = experiment.net_fn(params, train=train, dropout_key=dropout_key if train else None)
        return objectives.denoising_loss(
            net_fn, batch["image"], loss_key, schedule=experiment.schedule, prediction=diffusion.prediction,
            weighting=diffusion.weighting, time_sampling=diffusion.time_sampling,
            noise_conditioning=diffusion.noise_conditioning, sigma_data=diffusion.sigma_data, cond=cond,
            weighting_kwargs=diffusion.weighting_kwargs.to_dict(), time_kwargs=diffusion.time_kwargs.to_dict())

    return loss_fn


def classification_loss_fn(experiment: Experiment) -> LossFn:
    """loss_fn(params, batch, key, train) -> (loss, metrics {"loss", "accuracy"}): the softmax cross-entropy of
    the classifier's logits z = net(batch["image"]) against the labels y = batch["label"],

        loss = mean_i (logsumexp_k z_ik - z_iy_i),    accuracy = mean_i [argmax_k z_ik = y_i],

    with dropout drawn from `key` in training."""
    def loss_fn(params, batch: Batch, key: jax.Array, train: bool = True):
        net_fn = experiment.net_fn(params, train=train, dropout_key=key if train else None)
        logits = net_fn(batch["image"]).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])
        return loss, {"loss": loss, "accuracy": accuracy}

    return loss_fn


LOSSES: dict[str, Callable[[Experiment], LossFn]] = {"diffusion": denoising_loss_fn,
                                                     "classifier": classification_loss_fn}


def make_loss_fn(experiment: Experiment) -> LossFn:
    """loss_fn(params, batch, key, train) -> (loss, metrics): the loss of the experiment's task (`LOSSES`)."""
    return LOSSES[experiment.task](experiment)


def _microbatches(batch: Batch, count: int, mesh: Mesh) -> Batch:
    """(B, ...) -> (count, B / count, ...), micro-batch j = examples j, j + count, ... (stays on its devices)."""
    sharding = parallel.batch_sharding(mesh, leading_axes=1)

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(split, batch)


def make_step_fn(experiment: Experiment, optimizer: optax.GradientTransformation, mesh: Mesh) -> StepFn:
    """step(state, batch, net_params=None, layout=None) -> (state, metrics), not jitted.

    batch: {"image": (B, *example), "label": (B,)}. net_params: the parameters the network computes with, if not
    state.params (the runner's cast copy: some leaves in the compute dtype); the gradient is taken there and cast to
    the parameters' dtypes. layout: where the runner holds the state in another form than the parameter tree (its
    flat vectors), the map between them: `layout.tree(state.params)` is the tree, `layout.held(tree)` the held form
    of a tree of gradients; optimizer and EMA then run on the held form. metrics: the loss's ({"loss", "eps_mse",
    "x0_mse"} or {"loss", "accuracy"}) and {"grad_norm", "learning_rate"}, scalars.
    """
    config = experiment.config
    accum = config.train.grad_accum_steps
    decays = tuple(config.train.ema_decays)
    ema_warmup = config.train.ema_warmup
    loss_grad = jax.grad(make_loss_fn(experiment), has_aux=True)
    schedule = learning_rate_schedule(config.optim, config.train.num_steps)

    def gradients(params, net_params, batch: Batch, key: jax.Array):
        """Mean gradient over the micro-batches, each cast to the parameters' dtypes before it is summed."""
        def grad_fn(micro: Batch, micro_key: jax.Array):
            grads, metrics = loss_grad(net_params, micro, micro_key)
            return jax.tree.map(lambda grad, param: grad.astype(param.dtype), grads, params), metrics

        if accum == 1:
            return grad_fn(batch, key)

        def accumulate(total, inputs):
            index, micro = inputs
            return jax.tree.map(jnp.add, total, grad_fn(micro, jax.random.fold_in(key, index))), None

        micro = _microbatches(batch, accum, mesh)
        shapes = jax.eval_shape(grad_fn, jax.tree.map(lambda x: x[0], micro), key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
        return jax.tree.map(lambda x: x / accum, total)

    def step(state: TrainState, batch: Batch, net_params=None, layout=None) -> tuple[TrainState, Metrics]:
        params = state.params if layout is None else layout.tree(state.params)
        net_params = params if net_params is None else net_params
        grads, metrics = gradients(params, net_params, batch, jax.random.fold_in(state.key, state.step))
        grads = grads if layout is None else layout.held(grads)
        grad_norm = optax.tree.norm(grads)
        grads = clip_by_global_norm(grads, grad_norm, config.optim.grad_clip_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=update_ema(state.ema_params, params, decays,
                                                    state.step if ema_warmup else None)), metrics

    return step
