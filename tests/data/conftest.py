"""Shared fixtures: bundled data sets prepared once per session, and a tiny user-style TFDS data set."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffax.data import builders

TINY_SIZE = 48
TINY_SHAPE = (6, 10, 3)


def tiny_image(example_id: int) -> np.ndarray:
    """uint8 (6, 10, 3): channel 0 holds the id, channel 1 a left-to-right ramp (so flips are visible)."""
    image = np.zeros(TINY_SHAPE, np.uint8)
    image[..., 0] = example_id
    image[..., 1] = np.arange(TINY_SHAPE[1]) * 20
    return image


class _TinyBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Like a user's own builder: example i has label i and `tiny_image(i)`."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=TINY_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=TINY_SIZE),
            }),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for example_id in range(TINY_SIZE):
            yield example_id, {"image": builders.png_bytes(tiny_image(example_id)), "label": example_id}


class DiffaxTestTiny(_TinyBase):
    """Registered, as a TFDS catalogue data set (e.g. cifar10) is."""


class DiffaxTestUnregistered(_TinyBase, skip_registration=True):
    """Not registered, as a data set built by code this process never imported: read back from its files."""


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding the bundled data sets and the two tiny ones."""
    path = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    for name in builders.BUNDLED:
        builders.prepare(name, path)
    for builder_cls in (DiffaxTestTiny, DiffaxTestUnregistered):
        builder_cls(data_dir=path, file_format="array_record").download_and_prepare()
    return path
