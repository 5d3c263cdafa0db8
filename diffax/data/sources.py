"""Random-access data sources: TFDS (ArrayRecord files, no TensorFlow) with their element specs, and in-memory arrays.

Any TFDS data set prepared as ArrayRecord can be read, e.g. after
`tfds build cifar10 --data_dir=DIR --file_format=array_record` (building most TFDS data sets needs network access and
TensorFlow once; reading them here needs neither). The bundled data sets of `builders.BUNDLED` are prepared on first
use instead.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from diffax.data import builders


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a pipeline yields per example, known without reading the data.

    Attributes:
      image_shape: (H, W, C) of a preprocessed image (after resizing to `image_size`, if given).
      num_classes: number of label classes, or None when the data set has no class label.
      num_examples: number of examples in the split.
      context_shape: (L, E) of the embedding-sequence feature named by `context_key`, or None.
    """

    image_shape: tuple[int, int, int]
    num_classes: int | None
    num_examples: int
    context_shape: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A random-access source over in-memory arrays: example i is {"image": data[i] (float32), "label": labels[i]}.

    Attributes:
      data: (N, ...) any numeric dtype; returned as float32 without rescaling (e.g. 2-D mixture points).
      labels: (N,) integers.
    """

    data: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.labels.shape != self.data.shape[:1]:
            raise ValueError(f"labels shape {self.labels.shape} does not match data shape {self.data.shape}: "
                             f"expected ({self.data.shape[0]},)")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.data[index].astype(np.float32), "label": np.int32(self.labels[index])}


def _prepare_command(name: str, data_dir: str) -> str:
    return f"tfds build {name} --data_dir={data_dir} --file_format=array_record"


def open_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns the builder of a data set prepared as ArrayRecord in `data_dir`, preparing bundled ones first.

    Raises:
      FileNotFoundError: the data set is not prepared in `data_dir`; the message gives the command that prepares it.
      ValueError: the data set was prepared in a file format other than ArrayRecord.
    """
    data_dir = os.path.expanduser(data_dir or builders.default_data_dir())
    if name in builders.BUNDLED:
        return builders.prepare(name, data_dir)
    missing = FileNotFoundError(
        f"data set {name!r} is not prepared in data_dir {data_dir!r}; prepare it once with: "
        f"{_prepare_command(name, data_dir)}"
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise missing from None
    if not builder.is_prepared():
        raise missing
    formats = [builder.info.file_format, *builder.info.alternative_file_formats]
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        raise ValueError(
            f"data set {name!r} in data_dir {data_dir!r} is stored as {[str(f) for f in formats]}, expected "
            f"array_record (random access without TensorFlow); rebuild it with: {_prepare_command(name, data_dir)}"
        )
    return builder


def _check_split(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Returns the number of examples of `split` (which may be a slice like 'train[:90%]'), or a clear error."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(f"data set {builder.name!r}: bad split {split!r}: {error}") from None


def open_source(name: str, *, split: str, data_dir: str | None = None) -> Sequence[dict[str, np.ndarray]]:
    """Returns a random-access sequence of decoded examples (dicts of numpy arrays) of `name`'s `split`."""
    builder = open_builder(name, data_dir)
    _check_split(builder, split)
    return builder.as_data_source(split=split)


def image_size_hw(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Normalizes an `image_size` argument (a side, or (height, width), or None) to (height, width) or None."""
    if image_size is None:
        return None
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size {image_size!r} must be positive")
    return height, width


def context_shape(features, name: str, context_key: str | None) -> tuple[int, int] | None:
    """(L, E) of the float embedding-sequence feature `context_key` of a data set's features (None: no key).

    Raises:
      ValueError: the feature is missing or is not a fixed-shape float (L, E) tensor.
    """
    if context_key is None:
        return None
    if context_key not in features:
        raise ValueError(f"data set {name!r} has no feature {context_key!r} (data.context_key); its features are "
                         f"{sorted(features)}")
    feature = features[context_key]
    shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
    if len(shape) != 2 or None in shape or not np.issubdtype(dtype, np.floating):
        raise ValueError(f"data set {name!r} feature {context_key!r} is {dtype} of shape {shape}: expected a float "
                         f"embedding sequence of fixed shape (L, E)")
    return shape


def dataset_spec(
    name: str,
    *,
    split: str,
    data_dir: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    image_key: str = "image",
    label_key: str | None = "label",
    context_key: str | None = None,
    pad_to: int | tuple[int, int] | None = None,
) -> DatasetSpec:
    """The spec of what `make_dataset` yields for these arguments, read from the data set's metadata.

    Raises:
      ValueError: a feature is missing, the images are not uint8, or their size varies and no `image_size` is given.
    """
    builder = open_builder(name, data_dir)
    features = builder.info.features
    for key in (image_key, label_key):
        if key is not None and key not in features:
            raise ValueError(f"data set {name!r} has no feature {key!r}; its features are {sorted(features)}")
    image = features[image_key]
    if np.dtype(image.np_dtype) != np.uint8:
        raise ValueError(f"data set {name!r} feature {image_key!r} has dtype {image.np_dtype}, expected uint8")
    height, width, channels = image.shape
    size = image_size_hw(image_size) or (height, width)
    if None in (*size, channels):
        raise ValueError(f"data set {name!r} has images of varying shape {image.shape}; pass image_size")
    padded = image_size_hw(pad_to)
    if padded is not None:
        if padded[0] < size[0] or padded[1] < size[1]:
            raise ValueError(f"data set {name!r}: pad_to {pad_to!r} is smaller than its {size[0]}x{size[1]} images")
        size = padded
    num_classes = getattr(features[label_key], "num_classes", None) if label_key else None
    num_examples = _check_split(builder, split)
    return DatasetSpec(image_shape=(*size, channels), num_classes=num_classes, num_examples=num_examples,
                       context_shape=context_shape(features, name, context_key))
