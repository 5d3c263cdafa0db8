"""grain input pipelines: seeded shuffling, per-process sharding, preprocessing, batching, resumable iteration.

Every process builds the same lazy `grain.MapDataset` over the *global* example stream and reads its own slice:

    source -> shuffle(seed), reshuffled every epoch -> repeat(num_epochs) -> preprocess (random flip drawn from the
    seed and the global position) -> [finite epochs: cut to whole global batches] -> process p's block of every
    global batch -> batches of b = global_batch_size // shard_count.

Process p's k-th batch holds the global positions k * B + p * b + j for j < b: the global batch k is the positions
[k * B, (k + 1) * B) of one stream, in order, split into consecutive blocks by process, whatever the number of
processes. `jax.make_array_from_process_local_data` puts process p's block at rows [p * b, (p + 1) * b) of the
global array (devices are ordered by process), so the global array is the same on any topology, row for row. In an
epoch the processes see disjoint examples that together cover it.

A batch's b positions go down the stream as one grain `_getitems` call (shuffle, repeat and preprocess map each
position or example as `stream[position]` would), so a source with `__getitems__` (TFDS's ArrayRecord sources) reads
the batch's records with one batched read, much cheaper per record than single reads of a large file; other sources
(in-memory arrays) are read record by record. Either way the batch is the same.

The iterator's state is the number of batches it has yielded. Restoring slices the batched MapDataset there, so a
resumed run sees exactly the batches the uninterrupted run would have, with any `worker_count` or process count.
"""

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from diffax.data import preprocess, sources

# Batch-level read-ahead in the consuming process (or in each worker process): 4 threads, 8 batches ahead.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)

Batch = dict[str, np.ndarray]

AUTO_WORKERS = -1  # `worker_count` meaning "what this host can give" (`auto_worker_count`).
MAX_AUTO_WORKERS = 16


def auto_worker_count(usable_cpus: int, local_devices: int, backend: str) -> int:
    """grain worker processes for a host with `usable_cpus` cores driving `local_devices` accelerators:

        0                                                       on the CPU backend
        clip(usable_cpus - local_devices - 1, 1, MAX_AUTO_WORKERS)   otherwise

    On the CPU backend the training step's XLA thread pool already uses every core, so decoding in worker processes
    would only take cores from it: the reader threads of the training process (`_READ_OPTIONS`) do it. With
    accelerators, the host keeps one core per local device (the runtime's thread that launches that device's
    kernels) and one for the training loop, and gives the rest to decoding; at least one worker, since a worker's
    decoding runs beside the launches rather than between them. At most 16: fewer already keep a GPU fed on
    CIFAR-sized images (benchmarks/NOTES.md, "input path" and issue 22), so more processes would only add memory
    (each its own interpreter, the pipeline's imports and 8 batches of read-ahead).
    """
    if backend == "cpu":
        return 0
    return int(np.clip(usable_cpus - local_devices - 1, 1, MAX_AUTO_WORKERS))


def resolve_worker_count(worker_count: int) -> int:
    """`worker_count` itself (>= 0), or for AUTO_WORKERS (-1) `auto_worker_count` of this host: the cores this
    process may run on (its CPU affinity, which containers and job schedulers restrict) and its local devices."""
    if worker_count == AUTO_WORKERS:
        usable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return auto_worker_count(usable_cpus, jax.local_device_count(), jax.default_backend())
    if not isinstance(worker_count, int) or worker_count < 0:
        raise ValueError(f"worker_count {worker_count!r}: expected -1 (auto) or a number of worker processes >= 0")
    return worker_count


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside `absl.app.run` (tests, notebooks) parse their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class DataIterator:
    """Iterator over batches {"image": float32 (b, ...), "label": int32 (b,)} with a checkpointable position.

    `get_state()` returns JSON bytes and `set_state` accepts them (or the decoded dict), so the iterator also works
    with grain's Orbax handler: `ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator))` on save and
    `grain.checkpoint.CheckpointRestore(iterator)` on restore (which calls `set_state` then `start_prefetch`).
    """

    def __init__(self, batches: grain.MapDataset, *, worker_count: int, fingerprint: Mapping[str, Any]):
        """Args: the batched dataset; worker processes (0: read in this process; -1: `auto_worker_count`, never more
        than there are batches); what identifies the stream."""
        self._batches = batches
        self._worker_count = min(resolve_worker_count(worker_count), len(batches))
        self._fingerprint = dict(fingerprint)
        self._position = 0
        self._iterator = None

    def start_prefetch(self) -> None:
        """Starts reading (and any worker processes) now rather than at the first `next`."""
        if self._iterator is None:
            dataset = self._batches[self._position :].to_iter_dataset(_READ_OPTIONS)
            if self._worker_count:
                _ensure_absl_flags_parsed()
                options = grain.multiprocessing.MultiprocessingOptions(num_workers=self._worker_count)
                dataset = dataset.mp_prefetch(options)
            self._iterator = iter(dataset)

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> Batch:
        self.start_prefetch()
        batch = next(self._iterator)
        self._position += 1
        return batch

    def get_state(self) -> bytes:
        """JSON bytes: the number of batches yielded so far and the stream's identity."""
        return json.dumps({"position": self._position, **self._fingerprint}).encode()

    def set_state(self, state: bytes | str | Mapping[str, Any]) -> None:
        """Continues from a state of `get_state()`; the next batch is the one that followed when it was taken.

        Raises:
          ValueError: the state was saved by an iterator over a different stream (data set, split, seed, batch size).
        """
        state = dict(state) if isinstance(state, Mapping) else json.loads(state)
        position = state.pop("position")
        if state != self._fingerprint:
            raise ValueError(f"iterator state was saved for {state}, expected a state of {self._fingerprint}")
        self._position = position
        self._iterator = None  # Any read-ahead belongs to the old position.


@dataclasses.dataclass(frozen=True)
class _BatchedReadSource:
    """A source with `__getitems__` (TFDS's), offering it as the `_getitems` through which grain reads batches."""

    source: Sequence[Mapping[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:
        return self.source[index]

    def _getitems(self, indices: Sequence[int]) -> Sequence[Mapping[str, np.ndarray]]:
        return self.source.__getitems__(indices)


class _ShardBatches(grain.MapDataset):
    """Batch k of shard p: elements (k * shard_count + p) * b + j, j < b, of the parent, stacked to {key: (b, ...)}.

    They are read with one `_getitems` call (grain 0.2.18's `MapDataset.batch` reads its elements one by one).
    """

    def __init__(self, parent: grain.MapDataset, shard_index: int, shard_count: int, batch_size: int):
        super().__init__(parent)
        self._shard_index, self._shard_count, self._batch_size = shard_index, shard_count, batch_size

    def __len__(self) -> int:
        return len(self._parent) // (self._batch_size * self._shard_count)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        start = (index * self._shard_count + self._shard_index) * self._batch_size
        elements = self._parent._getitems(list(range(start, start + self._batch_size)))
        return {key: np.stack([element[key] for element in elements]) for key in elements[0]}


def _shard_arguments(global_batch_size: int, shard_index: int | None, shard_count: int | None) -> tuple[int, int, int]:
    """Returns (shard_index, shard_count, per-shard batch size); shards default to JAX processes."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, shard_count {shard_count})")
    if global_batch_size <= 0 or global_batch_size % shard_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not a positive multiple of shard_count {shard_count}"
        )
    return shard_index, shard_count, global_batch_size // shard_count


def _make_iterator(
    source: Sequence[Mapping[str, np.ndarray]],
    transform: grain.transforms.RandomMap | None,
    *,
    global_batch_size: int,
    seed: int,
    shard_index: int | None,
    shard_count: int | None,
    num_epochs: int | None,
    worker_count: int,
    fingerprint: Mapping[str, Any],
) -> DataIterator:
    """The pipeline of the module docstring over a random-access `source`."""
    shard_index, shard_count, batch_size = _shard_arguments(global_batch_size, shard_index, shard_count)
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs {num_epochs} must be positive, or None to repeat forever")
    if len(source) == 0:
        raise ValueError(f"the source {fingerprint} has no examples")
    if hasattr(source, "__getitems__"):
        source = _BatchedReadSource(source)
    stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat(num_epochs)
    if transform is not None:
        stream = stream.random_map(transform)
    if num_epochs is not None:
        whole = len(stream) // global_batch_size * global_batch_size
        if whole == 0:
            raise ValueError(
                f"global_batch_size {global_batch_size} exceeds the {len(stream)} examples of {num_epochs} epoch(s)"
            )
        stream = stream[:whole]
    batches = _ShardBatches(stream, shard_index, shard_count, batch_size)
    fingerprint = {**fingerprint, "seed": seed, "global_batch_size": global_batch_size}
    return DataIterator(batches, worker_count=worker_count, fingerprint=fingerprint)


def make_dataset(
    name: str,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    data_dir: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    random_flip: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    worker_count: int = 0,
    image_key: str = "image",
    label_key: str | None = "label",
    context_key: str | None = None,
    pad_to: int | tuple[int, int] | None = None,
) -> DataIterator:
    """Batches of a TFDS image data set: {"image": float32 (b, H, W, C) in [-1, 1], "label": int32 (b,)}, and
    "context": float32 (b, L, E) with a context_key.

    Args:
      name: a bundled data set (`digits`, `mnist5k`; prepared on first use) or any TFDS data set prepared as
        ArrayRecord in `data_dir` (`tfds build NAME --file_format=array_record`).
      split: a TFDS split, slices allowed ('train', 'test', 'train[:90%]').
      global_batch_size: B, the batch over all shards; each shard yields b = B // shard_count.
      seed: determines the shuffle of every epoch and the random flips.
      data_dir: the TFDS data directory; None for `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
      image_size: a side or (H, W) to centre-crop and resize to; None keeps the stored size.
      random_flip: flip each image left-right with probability 1/2.
      shard_index, shard_count: this shard and the number of shards; default `jax.process_index()/process_count()`.
      num_epochs: passes over the split (the last partial global batch is dropped); None repeats forever.
      worker_count: grain worker processes; 0 reads in this process (with threads); -1 (AUTO_WORKERS) as many as
        the host can give (`auto_worker_count`).
      image_key, label_key: feature names; label_key None for unlabelled data (labels are then 0).
      context_key: a float (L, E) feature (e.g. text-encoder outputs) passed on as "context", or None.
      pad_to: a side or (H, W) to zero-pad every image to, centred, after any resizing; None: no padding.
    Raises:
      FileNotFoundError: the data set is not prepared (the message says how to prepare it).
      ValueError: global_batch_size is not a multiple of shard_count, or other bad arguments.
    """
    spec = sources.dataset_spec(
        name, split=split, data_dir=data_dir, image_size=image_size, image_key=image_key, label_key=label_key,
        context_key=context_key,
    )
    padded = sources.image_size_hw(pad_to)
    transform = preprocess.PreprocessImage(
        image_size=spec.image_shape[:2], random_flip=random_flip, image_key=image_key, label_key=label_key,
        context_key=context_key,
        pad_to=padded if padded != spec.image_shape[:2] else None,
    )
    return _make_iterator(
        sources.open_source(name, split=split, data_dir=data_dir),
        transform,
        global_batch_size=global_batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
        worker_count=worker_count,
        fingerprint={"name": name, "split": split},
    )


def make_array_dataset(
    data: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    global_batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    worker_count: int = 0,
) -> DataIterator:
    """Batches of in-memory arrays (toy 2-D mixtures, random benchmark data), with `make_dataset`'s interface.

    Yields {"image": float32 (b, *data.shape[1:]) (values as given, not rescaled), "label": int32 (b,)}; labels
    default to 0. Other arguments as in `make_dataset`.
    """
    data = np.asarray(data)
    labels = np.zeros(len(data), np.int32) if labels is None else np.asarray(labels)
    return _make_iterator(
        sources.ArraySource(data, labels),
        None,
        global_batch_size=global_batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
        worker_count=worker_count,
        fingerprint={"name": "array", "shape": list(data.shape)},
    )
