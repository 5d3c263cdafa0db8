"""Data: TFDS sources read without TensorFlow, offline builders for bundled data sets, grain pipelines.

    it = make_dataset("mnist5k", split="train", global_batch_size=128, seed=0, image_size=32, random_flip=True)
    batch = next(it)            # {"image": float32 (128 // processes, 32, 32, 1) in [-1, 1], "label": int32 (...)}
    state = it.get_state()      # JSON bytes; it.set_state(state) resumes with exactly the following batches
    spec = dataset_spec("mnist5k", split="train", image_size=32)  # image_shape, num_classes, num_examples
"""

from diffax.data.builders import BUNDLED, default_data_dir, prepare
from diffax.data.pipeline import DataIterator, make_array_dataset, make_dataset
from diffax.data.sources import DatasetSpec, dataset_spec

__all__ = [
    "BUNDLED",
    "DataIterator",
    "DatasetSpec",
    "dataset_spec",
    "default_data_dir",
    "make_array_dataset",
    "make_dataset",
    "prepare",
]
