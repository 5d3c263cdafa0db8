"""Conditioning through cross-attention: class labels as a learned one-token context (LDM's class-conditional
recipe) and embedding sequences read from the data (data.context_key), each with its null for label dropout and
classifier-free guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffax.data import builders
from train_helpers import tiny_digits

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


def perturbed(params):
    """params + N(0, 0.05^2) noise."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    return tree.unflatten([leaf + 0.05 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])


def label_context_config(**overrides):
    return tiny_digits(**{"model.label_conditioning": "cross_attention", **overrides})


def embeddings_config(data_dir, **overrides):
    return tiny_digits(**{"data.name": "digits_embeddings", "data.data_dir": data_dir, "data.context_key":
                          "embedding", "model.class_conditional": False, **overrides})


def test_labels_reach_the_network_through_the_context_and_guide_against_the_null_class(tfds_dir):
    """Training and sampling such a network end to end: tests/test_ldm.py (the LDM recipe's class conditioning)."""
    from diffax.experiment import build_experiment
    from diffax.generate import make_denoiser

    experiment = build_experiment(label_context_config(**{"data.data_dir": tfds_dir}))
    params = jax.jit(experiment.init_params)(jax.random.key(0))
    assert params["label_context"]["Embed_0"]["embedding"].shape == (11, 64)  # num_classes + 1 rows, 4 x 16 wide.
    assert "Embed_0" not in params["embedding"]  # No label table in the time embedding.
    params = perturbed(params)  # A fresh init's zero output layers hide what the attention reads.

    @jax.jit
    def outputs(params, x, t, labels):
        x0_fn = experiment.x0_fn(params)
        return (x0_fn(x, t, labels), x0_fn(x, t, labels.at[0].add(1)), x0_fn(x, t, None),
                x0_fn(x, t, jnp.full_like(labels, 10)), make_denoiser(experiment, params, labels, 1.0)(x, t),
                make_denoiser(experiment, params, labels, 3.0)(x, t))

    x, t = jax.random.normal(jax.random.key(2), (2, 8, 8, 1)), jnp.array([0.3, 0.6])
    conditional, other_label, unconditional, null, scale_1, scale_3 = outputs(params, x, t, jnp.array([3, 7]))
    assert float(jnp.abs(other_label[0] - conditional[0]).max()) > 1e-4
    np.testing.assert_array_equal(other_label[1], conditional[1])
    # The unconditional call is the null class (the table's last row), the condition label dropout trains.
    np.testing.assert_allclose(unconditional, null, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(scale_1, conditional)
    np.testing.assert_allclose(scale_3, null + 3.0 * (conditional - null), rtol=1e-5, atol=1e-5)


def test_dropped_embedding_sequences_are_the_zero_context():
    from diffax.nets.embeddings import drop_context, null_condition

    context = jax.random.normal(jax.random.key(0), (1000, *CONTEXT_SHAPE)) + 3.0
    dropped = drop_context(jax.random.key(1), context, 0.3)
    is_dropped = np.all(np.asarray(dropped) == 0.0, axis=(1, 2))
    kept = ~is_dropped
    np.testing.assert_array_equal(dropped[kept], context[kept])
    assert abs(is_dropped.mean() - 0.3) < 0.05  # Binomial(1000, 0.3): std 0.0145.
    np.testing.assert_array_equal(null_condition(context[:2], None), np.zeros((2, *CONTEXT_SHAPE)))


def test_embedding_run_trains_on_the_data_sequences_and_guides_against_zeros(embeddings_data, tmp_path):
    from diffax.experiment import build_experiment, make_iterator
    from diffax.generate import make_denoiser, sample_conditions
    from diffax.modes.train import train
    from diffax.run import load_run
    from diffax.train.step import make_loss_fn

    config = embeddings_config(embeddings_data, **{"train.num_steps": 2})
    batch = next(make_iterator(config, split="train", global_batch_size=8, seed=0))
    assert batch["context"].shape == (8, *CONTEXT_SHAPE) and batch["context"].dtype == np.float32

    # Label dropout p -> 1 trains the zero context: the training loss equals the loss on zeroed sequences.
    experiment = build_experiment(embeddings_config(embeddings_data, **{"model.label_dropout": 1 - 1e-7}))
    assert experiment.conditioning == "embeddings" and experiment.spec.context_shape == CONTEXT_SHAPE
    params = perturbed(experiment.init_params(jax.random.key(0)))
    loss_fn = make_loss_fn(experiment)

    @jax.jit
    def losses(params, batch, key):
        zeroed = {**batch, "context": jnp.zeros_like(batch["context"])}
        return (loss_fn(params, batch, key, True)[0], loss_fn(params, zeroed, key, False)[0],
                loss_fn(params, batch, key, False)[0])

    dropped, on_zeros, kept = losses(params, batch, jax.random.key(4))
    np.testing.assert_allclose(dropped, on_zeros, rtol=1e-6)
    assert abs(float(kept - on_zeros)) > 1e-6

    train(config, str(tmp_path))
    run = load_run(str(tmp_path))
    assert run.experiment.spec.context_shape == CONTEXT_SHAPE  # Stored in run.json.
    context = batch["context"][:4]
    assert run.sample(4, context=context).shape == (4, 8, 8, 1)  # The training grid's sampler: guidance 2.
    heldout = next(make_iterator(config, split="test", global_batch_size=4, seed=0, train=False))["context"]
    np.testing.assert_array_equal(sample_conditions(run.experiment, 4), heldout)  # The default of `sample`.

    @jax.jit
    def outputs(params, x, t, context):
        x0_fn = run.experiment.x0_fn(params)
        return (x0_fn(x, t, context), x0_fn(x, t, jnp.zeros_like(context)),
                make_denoiser(run.experiment, params, context, 1.0)(x, t),
                make_denoiser(run.experiment, params, context, 2.0)(x, t))

    x, t = jax.random.normal(jax.random.key(5), (4, 8, 8, 1)), jnp.full((4,), 0.4)
    conditional, null, scale_1, scale_2 = outputs(perturbed(run.params()), x, t, context)
    np.testing.assert_array_equal(scale_1, conditional)
    np.testing.assert_allclose(scale_2, null + 2.0 * (conditional - null), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(conditional - null).max()) > 1e-4
    with pytest.raises(ValueError, match="conditioned on embeddings: pass context"):
        run.denoiser()


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
