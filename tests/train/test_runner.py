"""The step runner's machinery changes nothing but speed: training with the cast copy (train.cast_params) or with
several steps per call is bit for bit training without."""

import jax
import ml_collections
import pytest
from train_helpers import assert_trees_equal, tiny_digits, train_on_random_batches

from diffax.experiment import build_experiment
from diffax.train.runner import declared_casts


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
