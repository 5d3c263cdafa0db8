"""Conditioning through cross-attention on embedding sequences read from the data (data.context_key), with the zero
sequence as the null of label dropout and classifier-free guidance; bad conditioning configs. Class labels read
through cross-attention (LDM's recipe) are tested on the LDM run, tests/train/test_ldm.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffax.data import builders
from train_helpers import perturbed, tiny_digits

CONTEXT_SHAPE = (3, 6)


class DigitsWithEmbeddings(builders.Digits, skip_registration=True):
    """`digits` with an `embedding` feature (3, 6) per image: a fixed random sequence per class."""

    name = "digits_embeddings"

    def _info(self):
        info = super()._info()
        features = dict(info.features)
        features["embedding"] = tfds.features.Tensor(shape=CONTEXT_SHAPE, dtype=np.float32)
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE,
                                     features=tfds.features.FeaturesDict(features))

    def _generate_examples(self, images, labels, indices):
        table = np.random.default_rng(0).standard_normal((10, *CONTEXT_SHAPE)).astype(np.float32)
        for key, example in super()._generate_examples(images, labels, indices):
            yield key, {**example, "embedding": table[example["label"]]}


@pytest.fixture(scope="module")
def embeddings_data(tmp_path_factory):
    """A data_dir with `digits_embeddings` prepared (and registered as bundled while the module runs)."""
    builders.BUNDLED["digits_embeddings"] = DigitsWithEmbeddings
    data_dir = str(tmp_path_factory.mktemp("embeddings_tfds"))
    builders.prepare("digits_embeddings", data_dir)
    yield data_dir
    del builders.BUNDLED["digits_embeddings"]


def label_context_config(**overrides):
    return tiny_digits(**{"model.label_conditioning": "cross_attention", **overrides})


def embeddings_config(data_dir, **overrides):
    return tiny_digits(**{"data.name": "digits_embeddings", "data.data_dir": data_dir, "data.context_key":
                          "embedding", "model.class_conditional": False, **overrides})


def test_dropped_embedding_sequences_are_the_zero_context():
    from diffax.nets.embeddings import drop_context, null_condition

    context = jax.random.normal(jax.random.key(0), (1000, *CONTEXT_SHAPE)) + 3.0
    dropped = drop_context(jax.random.key(1), context, 0.3)
    is_dropped = np.all(np.asarray(dropped) == 0.0, axis=(1, 2))
    kept = ~is_dropped
    np.testing.assert_array_equal(dropped[kept], context[kept])
    assert abs(is_dropped.mean() - 0.3) < 0.05  # Binomial(1000, 0.3): std 0.0145.
    np.testing.assert_array_equal(null_condition(context[:2], None), np.zeros((2, *CONTEXT_SHAPE)))


def test_embedding_sequences_from_the_data_condition_the_loss_and_guide_against_zeros(embeddings_data):
    """(A trained run conditioned through cross-attention, on labels: tests/train/test_ldm.py.)"""
    from diffax.experiment import build_experiment, make_iterator
    from diffax.generate import make_denoiser, sample_conditions
    from diffax.train.step import make_loss_fn

    config = embeddings_config(embeddings_data)
    batch = next(make_iterator(config, split="train", global_batch_size=8, seed=0))
    assert batch["context"].shape == (8, *CONTEXT_SHAPE) and batch["context"].dtype == np.float32

    # Label dropout p -> 1 trains the zero context: the training loss equals the loss on zeroed sequences.
    experiment = build_experiment(embeddings_config(embeddings_data, **{"model.label_dropout": 1 - 1e-7}))
    assert experiment.conditioning == "embeddings" and experiment.spec.context_shape == CONTEXT_SHAPE
    params = perturbed(jax.eval_shape(experiment.init_params, jax.random.key(0)), scale=0.2, zeros=True)
    loss_fn = make_loss_fn(experiment)
    context = batch["context"][:4]
    x, t = jax.random.normal(jax.random.key(5), (4, 8, 8, 1)), jnp.full((4,), 0.4)

    @jax.jit
    def outputs(params, batch, key):  # Each network call compiles apart: batch what can be batched.
        zeroed = {**batch, "context": jnp.zeros_like(batch["context"])}
        x0_fn = experiment.x0_fn(params)
        both = x0_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                     jnp.concatenate([context, jnp.zeros_like(context)]))
        return (loss_fn(params, batch, key, True)[0], loss_fn(params, zeroed, key, False)[0], both[:4], both[4:],
                make_denoiser(experiment, params, context, 2.0)(x, t))

    dropped, on_zeros, conditional, null, scale_2 = outputs(params, batch, jax.random.key(4))
    np.testing.assert_allclose(dropped, on_zeros, rtol=1e-6)
    assert float(jnp.abs(conditional - null).max()) > 1e-4
    np.testing.assert_allclose(scale_2, null + 2.0 * (conditional - null), rtol=1e-5, atol=1e-5)
    # Samples are conditioned on the first held-out sequences unless given others.
    heldout = next(make_iterator(config, split="test", global_batch_size=4, seed=0, train=False))["context"]
    np.testing.assert_array_equal(sample_conditions(experiment, 4), heldout)
    with pytest.raises(ValueError, match=r"contexts of shape \(2, 3, 6\): expected \(4, 3, 6\)"):
        sample_conditions(experiment, 4, contexts=heldout[:2])


def test_bad_conditioning_configs_are_named(embeddings_data):
    from diffax.config_checks import validate_config
    from diffax.experiment import data_spec

    with pytest.raises(ValueError, match="model.label_conditioning"):
        validate_config(label_context_config(**{"model.class_conditional": False}))
    with pytest.raises(ValueError, match="model.label_conditioning = 'tokens'"):
        validate_config(label_context_config(**{"model.label_conditioning": "tokens"}))
    with pytest.raises(ValueError, match="data.context_key"):
        validate_config(embeddings_config(embeddings_data, **{"model.class_conditional": True}))
    with pytest.raises(ValueError, match="no feature 'text'"):
        data_spec(embeddings_config(embeddings_data, **{"data.context_key": "text"}))
    with pytest.raises(ValueError, match="feature 'label' is int64 of shape \\(\\)"):
        data_spec(embeddings_config(embeddings_data, **{"data.context_key": "label"}))
