"""The step runner's machinery changes nothing but speed: training with the cast copy (train.cast_params) or with
several steps per call is bit for bit training without; with the flat state (train.flat_state) it is the same
training up to float32 rounding, and the flat form converts back to the TrainState exactly."""

import types

import jax
import ml_collections
import numpy as np
import pytest
from train_helpers import assert_trees_equal, tiny_digits, train_on_random_batches

from configs import autoencoder_mnist
from diffax import parallel
from diffax.experiment import build_experiment
from diffax.train.optimizer import task_optimizer
from diffax.train.runner import FlatLayout, StepRunner, declared_casts
from diffax.train.state import config_abstract_state, create_train_state


def _experiment(model: str = "dit_tiny", **overrides):
    config = tiny_digits(**{"model.name": model, "model.kwargs": ml_collections.ConfigDict(),
                            "model.compute_dtype": "bfloat16", "train.batch_size": 8, **overrides})
    return build_experiment(config)


def test_dit_declares_its_bf16_products_and_keeps_float32_conditioning(tfds_dir):
    experiment = _experiment(**{"train.cast_params": True})
    params = jax.eval_shape(experiment.init_params, jax.random.PRNGKey(0))
    casts = declared_casts(experiment, params)
    assert "['block0']['mlp_in']['kernel']" in casts and "['block1']['Attention_0']['out']['bias']" in casts
    assert not any("modulation" in path or "embedding" in path for path in casts)
    assert declared_casts(_experiment(**{"train.cast_params": False}), params) == {}
    with pytest.raises(ValueError, match="train.cast_params = True: network 'unet_tiny' declares no parameters"):
        declared_casts(_experiment("unet_tiny", **{"train.cast_params": True}), params)


@pytest.mark.parametrize("overrides", [{"train.grad_accum_steps": 2},
                                       {"train.steps_per_dispatch": 2, "train.num_steps": 6}])
def test_cast_copy_and_steps_per_call_train_bitwise_as_without(tfds_dir, overrides):
    fast, runner = train_on_random_batches(_experiment(**{"train.cast_params": True, **overrides}), 3)
    plain, _ = train_on_random_batches(_experiment(**{k: v for k, v in overrides.items()
                                                      if k != "train.steps_per_dispatch"}),
                                       3 * overrides.get("train.steps_per_dispatch", 1))
    assert int(fast.step) == int(plain.step) == 3 * overrides.get("train.steps_per_dispatch", 1)
    assert_trees_equal(jax.device_get(fast), jax.device_get(plain))


@pytest.mark.parametrize("overrides,atol", [
    ({"model.compute_dtype": "float32"}, 2e-5),  # Adam divides by sqrt(v): rounding grows where g ~ 0.
    # bf16: a parameter's last float32 bit can flip a bf16 rounding in the next step's products.
    ({"train.steps_per_dispatch": 2, "train.num_steps": 6, "train.ema_decays": (0.9, 0.99),
      "train.cast_params": True}, 1e-4)])
def test_flat_state_trains_as_the_tree_state_up_to_rounding(tfds_dir, overrides, atol):
    """3 calls at learning rate 1e-2 (a misplaced slice would be off by about that much): params, EMAs, Adam's
    moments agree but for the order of the gradient norm's sum; the flat form holds a handful of arrays."""
    overrides = {"optim.learning_rate": 1e-2, "optim.warmup_steps": 0, **overrides}
    flat, runner = train_on_random_batches(_experiment(**{"train.flat_state": True, **overrides}), 3)
    plain, _ = train_on_random_batches(_experiment(**overrides), 3)
    assert int(flat.step) == int(plain.step)
    assert jax.tree.structure(flat) == jax.tree.structure(plain)
    np.testing.assert_array_equal(flat.key, plain.key)
    for got, want in zip(jax.tree.leaves(flat), jax.tree.leaves(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(_initial(overrides).params)))
    assert moved > 1e-2  # The comparison above is of trained parameters, not of the initialization.
    held = runner.hold(plain)
    assert len(jax.tree.leaves(held[0])) < 12
    assert_trees_equal(jax.device_get(runner.state(held)), jax.device_get(plain))


def _abstract(experiment):
    """(optimizer, mesh, abstract train state) of the experiment's config."""
    optimizer = task_optimizer(experiment.config)
    mesh = parallel.mesh_from_config(experiment.config.mesh)
    return optimizer, mesh, config_abstract_state(experiment, optimizer, mesh)


def _initial(overrides):
    experiment = _experiment(**overrides)
    optimizer, _, abstract = _abstract(experiment)
    return create_train_state(experiment, optimizer, abstract, experiment.config.seed)


def test_flat_state_refuses_sharded_parameters_and_autoencoders(tfds_dir):
    _, mesh, abstract = _abstract(_experiment(**{"train.flat_state": True}))
    fsdp_leaf = types.SimpleNamespace(shape=(8,), size=8, dtype=np.dtype("float32"),
                                      sharding=types.SimpleNamespace(is_fully_replicated=False))  # As mesh.fsdp > 1.
    sharded = abstract.replace(params={**abstract.params, "sharded": fsdp_leaf})
    with pytest.raises(ValueError, match="flat_state = True needs a replicated train state: set config.mesh.fsdp"):
        FlatLayout(sharded)
    with pytest.raises(ValueError, match="flat_state = True: every parameter must be float32"):
        FlatLayout(abstract.replace(params=jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, "bfloat16", sharding=leaf.sharding), abstract.params)))
    config = autoencoder_mnist.get_config("tiny")
    config.train.flat_state = True
    autoencoder = build_experiment(config)
    ae_optimizer, _, ae_abstract = _abstract(autoencoder)
    with pytest.raises(ValueError, match="flat_state = True: not for autoencoder runs"):
        StepRunner(autoencoder, ae_optimizer, mesh, ae_abstract)
