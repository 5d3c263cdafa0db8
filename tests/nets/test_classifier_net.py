"""The image classifier (`diffax.nets.classifier`): shapes on odd image sizes, and `return_features` is exactly the
input of the logits layer."""

import jax
import numpy as np

from diffax.nets import CLASSIFIERS, Classifier, build_network


def test_logits_and_features_on_odd_sizes_and_features_feed_the_logits_layer():
    model = Classifier(num_classes=10, channels=8, channel_mult=(1, 2, 2), feature_dim=16, dropout=0.5)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 7, 7, 1)).astype(np.float32)  # 7 -> 4 -> 2 by SAME pooling.
    params = model.init(jax.random.key(0), x)["params"]
    logits = model.apply({"params": params}, x, train=False)
    features = model.apply({"params": params}, x, train=False, return_features=True)
    assert logits.shape == (3, 10) and features.shape == (3, 16)
    assert logits.dtype == features.dtype == np.float32
    head = params[max(name for name in params if name.startswith("Dense_"))]  # The last Dense: the logits.
    np.testing.assert_allclose(logits, features @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert np.all(features >= -0.2785)  # SiLU's minimum: the features are activations.
    trained = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(trained, logits)  # Dropout acts in training only.


def test_the_registry_builds_the_classifier_with_overrides():
    assert set(CLASSIFIERS) == {"classifier"}
    model = build_network("classifier", num_classes=3, feature_dim=32)
    assert isinstance(model, Classifier) and model.num_classes == 3 and model.feature_dim == 32
