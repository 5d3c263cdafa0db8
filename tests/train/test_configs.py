"""Every recipe and variant validates; invalid values fail at launch, before compiling, naming the key."""

import importlib

import ml_collections
import pytest

from diffax.data import builders
from train_helpers import launch, tiny_digits

RECIPES = ("toy2d", "digits", "mnist", "cifar10_ddpm", "cifar10_edm", "imagenet64", "classifier_digits",
           "classifier_mnist", "autoencoder_mnist", "autoencoder_kl_f8", "ldm_mnist", "ldm_imagenet256")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_and_variants_validate_and_open_with_their_command(recipe):
    from diffax.config_checks import validate_config

    module = importlib.import_module(f"configs.{recipe}")
    assert f"python launch.py --config configs/{recipe}.py" in module.__doc__
    for variant in ("", "cpu", "tiny"):
        config = module.get_config(variant)
        validate_config(config)
        if config.data.name in builders.BUNDLED:  # Its splits exist (the data set opens only when the run starts).
            assert {config.data.split, config.data.eval_split} <= {"train", "test"}, (variant, config.data)


@pytest.mark.parametrize("key,value,message", [
    ("train.batch_size", 30, r"config.train.batch_size = 30: expected a multiple of train.grad_accum_steps = 4"),
    ("train.num_steps", 0, r"config.train.num_steps = 0: expected a positive number"),
    ("model.name", "resnet", r"config.model.name = 'resnet': expected one of \[.*'unet'"),
    ("diffusion.prediction", "score", r"config.diffusion.prediction = 'score'"),
    ("sample.method", "rk4", r"config.sample.method = 'rk4'"),
    ("sample.labels", (3, -1), r"config.sample.labels = \(3, -1\): expected a tuple of class indices"),
    ("sample.options", ml_collections.ConfigDict({"etaa": 1.0}),
     r"config.sample.options.etaa = 1.0: expected an option of sampler 'dpmpp_2m'"),
    ("sample.options", ml_collections.ConfigDict({"second_difference": "half"}),
     r"sampler 'dpmpp_2m' refuses them: unknown second_difference 'half'"),
    ("sample.ema_index", 3, r"config.sample.ema_index = 3: expected -1 .* \(length 1\)"),
    ("train.ema_decays", (1.5,), r"config.train.ema_decays = \(1.5,\)"),
    ("train.log_every", 3, r"config.train.log_every = 3: expected a multiple of train.steps_per_dispatch = 2"),
    ("optim.b2", 2.0, r"config.optim.b2 = 2.0"),
    ("mesh.fsdp", 0, r"config.mesh.fsdp = 0"),
    ("data.worker_count", -2, r"config.data.worker_count = -2: expected -1 \(as many as the host can give\)"),
    ("model.name", "autoencoder_kl_f4", r"config.model.name = 'autoencoder_kl_f4': expected a score network"),
])
def test_invalid_values_name_the_key(key, value, message):
    from diffax.config_checks import validate_config

    context = {"train.batch_size": {"train.grad_accum_steps": 4}, "train.log_every": {"train.steps_per_dispatch": 2}}
    with pytest.raises(ValueError, match=message):
        validate_config(tiny_digits(**context.get(key, {}), **{key: value}))


def test_launch_fails_before_compiling_naming_the_key(tmp_path):
    result = launch("configs/digits.py:tiny", tmp_path, "--config.optim.decay=linear", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: config.optim.decay = 'linear': expected one of "
                                                      "['constant', 'cosine']")
    assert "Traceback" not in result.stderr and not (tmp_path / "checkpoints").exists()


def test_batch_not_divisible_by_devices_fails_clearly():
    from diffax import parallel

    with pytest.raises(ValueError, match="batch_size 12 / grad_accum_steps 2 = 6 examples per micro-batch is not "
                                         "divisible by 4 devices"):
        parallel.check_batch_size(12, 4, 2)
    with pytest.raises(ValueError, match="batch_size 12 is not a positive multiple of grad_accum_steps 8"):
        parallel.check_batch_size(12, 1, 8)
    assert parallel.check_batch_size(16, 4, 2) == 2
