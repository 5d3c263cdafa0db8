"""The cast copy of the parameters (diffax.train.param_casts): which leaves get one, and that training with it is
bit for bit training without it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from train_helpers import assert_trees_equal, tiny_digits, train_on_random_batches

from diffax.train import param_casts, setup
from diffax.train.state import for_checkpoint, with_cast_params


def test_cast_dtypes_follows_uses_into_jit_remat_and_scan():
    params = {name: jnp.ones((4,), jnp.float32) for name in ("jit", "remat_scan", "raw", "two", "unused")}

    def fn(p):
        total = jax.jit(lambda a: a.astype(jnp.bfloat16).sum())(p["jit"])
        def remat_scan(a):  # `a` is a constant of the loop body.
            return jax.lax.scan(lambda carry, _: (carry + a.astype(jnp.bfloat16).sum(), None), total, length=2)[0]

        total = jax.checkpoint(remat_scan)(p["remat_scan"])
        total += p["raw"].astype(jnp.bfloat16).sum() + p["raw"].sum()  # Also used in float32: no copy.
        return total + p["two"].astype(jnp.bfloat16).sum() + p["two"].astype(jnp.float16).sum()

    assert param_casts.cast_dtypes(fn, params) == {"['jit']": jnp.bfloat16, "['remat_scan']": jnp.bfloat16}


def _experiment(compute_dtype: str, cast: bool, **overrides):
    config = tiny_digits(**{"model.name": "dit_tiny", "model.kwargs": ml_collections.ConfigDict(),
                            "model.compute_dtype": compute_dtype,
                            "train.cast_params_once": cast, "train.batch_size": 8, **overrides})
    return setup.build_experiment(config)


def test_dit_copies_its_bf16_products_and_keeps_float32_conditioning(tfds_dir):
    experiment = _experiment("bfloat16", True)
    state, _ = train_on_random_batches(experiment, 0)
    copied = set(state.cast_params)
    assert "['block0']['mlp_in']['kernel']" in copied and "['block1']['Attention_0']['out']['bias']" in copied
    assert not any("modulation" in path or "embedding" in path for path in copied)  # Computed in float32.
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        if jax.tree_util.keystr(path) in copied:
            np.testing.assert_array_equal(state.cast_params[jax.tree_util.keystr(path)],
                                          np.asarray(leaf).astype(jnp.bfloat16))
    assert train_on_random_batches(_experiment("float32", True), 0)[0].cast_params == {}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_training_with_the_cast_copy_is_bitwise_training_without(tfds_dir, accumulate):
    overrides = {"train.grad_accum_steps": accumulate}
    with_copy, abstract = train_on_random_batches(_experiment("bfloat16", True, **overrides), 3)
    without, _ = train_on_random_batches(_experiment("bfloat16", False, **overrides), 3)
    assert without.cast_params == {} and len(with_copy.cast_params) > 0
    assert_trees_equal(jax.device_get(with_copy.params), jax.device_get(without.params))
    assert_trees_equal(jax.device_get(with_copy.opt_state), jax.device_get(without.opt_state))
    # Checkpoints hold no copy; restoring rebuilds the one the update wrote.
    rebuilt = with_cast_params(for_checkpoint(with_copy), abstract)
    assert_trees_equal(jax.device_get(rebuilt.cast_params), jax.device_get(with_copy.cast_params))
