"""grain pipelines: batches, determinism, sharding, epochs, resumable state, arrays, bad arguments."""

import json
import sys

import grain
import numpy as np
import pytest
from etils import epath

from diffax.data import dataset_spec, make_array_dataset, make_dataset, pipeline, sources

TINY_SIZE = 48  # Examples in conftest's tiny data sets; checked in test_user_prepared_data_set_loads.


def _take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _tiny(data_dir: str, **kwargs):
    arguments = {"split": "train", "data_dir": data_dir, "global_batch_size": 8, "seed": 0, "shard_index": 0,
                 "shard_count": 1}
    return make_dataset("diffax_test_tiny", **{**arguments, **kwargs})


@pytest.mark.parametrize("name,size", [("digits", None), ("mnist5k", 32)])
def test_batches_of_bundled_data_sets(data_dir, name, size):
    iterator = make_dataset(
        name, split="train", data_dir=data_dir, global_batch_size=32, seed=0, image_size=size, random_flip=True,
        shard_index=1, shard_count=2,
    )
    for batch in _take(iterator, 3):
        side = size or 8
        assert batch["image"].shape == (16, side, side, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
        assert -1.0 <= batch["image"].min() < 0.0 < batch["image"].max() <= 1.0
        assert batch["label"].min() >= 0 and batch["label"].max() <= 9


@pytest.mark.parametrize("name", ["diffax_test_tiny", "diffax_test_unregistered"])
def test_user_prepared_data_set_loads(data_dir, name):
    assert dataset_spec(name, split="train", data_dir=data_dir).num_examples == TINY_SIZE
    batch = next(make_dataset(name, split="train", data_dir=data_dir, global_batch_size=6, seed=3, shard_count=1,
                              shard_index=0, image_size=4))
    assert batch["image"].shape == (6, 4, 4, 3)
    for image, label in zip(batch["image"], batch["label"], strict=True):  # Channel 0 still encodes the example's id.
        np.testing.assert_allclose(image[..., 0], label / 127.5 - 1, atol=1e-6)


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
    first = _take(_tiny(data_dir, random_flip=True), 7)
    _assert_same_batches(first, _take(_tiny(data_dir, random_flip=True), 7))
    other = _take(_tiny(data_dir, random_flip=True, seed=1), 7)
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(first, other, strict=True))


def test_random_flip_flips_about_half_and_keeps_order(data_dir):
    plain = np.concatenate([b["image"] for b in _take(_tiny(data_dir, num_epochs=1), TINY_SIZE // 8)])
    flipped = np.concatenate([b["image"] for b in _take(_tiny(data_dir, num_epochs=1, random_flip=True), 6)])
    is_flipped = [not np.array_equal(a, b) for a, b in zip(plain, flipped, strict=True)]
    np.testing.assert_array_equal(flipped[is_flipped], plain[is_flipped][:, :, ::-1])
    assert 0.2 < np.mean(is_flipped) < 0.8


@pytest.mark.parametrize("shard_count", [2, 3])
def test_shards_are_disjoint_cover_the_epoch_and_form_the_global_batches(data_dir, shard_count):
    whole = list(_tiny(data_dir, global_batch_size=12, num_epochs=1))
    shards = [list(_tiny(data_dir, global_batch_size=12, num_epochs=1, shard_index=i, shard_count=shard_count))
              for i in range(shard_count)]
    ids = [np.concatenate([b["label"] for b in shard]) for shard in shards]
    assert sum(len(i) for i in ids) == TINY_SIZE
    assert sorted(np.concatenate(ids).tolist()) == list(range(TINY_SIZE))
    for step, batch in enumerate(whole):  # Global batch k does not depend on the number of shards.
        assert sorted(batch["label"].tolist()) == sorted(np.concatenate([s[step]["label"] for s in shards]).tolist())


def test_finite_epochs_drop_the_partial_batch_and_reshuffle(data_dir):
    batches = list(_tiny(data_dir, global_batch_size=10, num_epochs=2))
    assert len(batches) == 2 * TINY_SIZE // 10
    ids = np.concatenate([b["label"] for b in batches])
    assert sorted(ids[:TINY_SIZE].tolist()) == list(range(TINY_SIZE))
    second_epoch = ids[TINY_SIZE:]  # Its last 6 examples were dropped with the partial batch.
    assert len(set(second_epoch.tolist())) == len(second_epoch)
    assert not np.array_equal(ids[: len(second_epoch)], second_epoch)


def test_state_restores_exactly_the_following_batches(data_dir):
    iterator = _tiny(data_dir, random_flip=True, image_size=5)
    _take(iterator, 9)  # Crosses an epoch boundary (48 examples, 8 per batch).
    state = iterator.get_state()
    assert json.loads(state)["position"] == 9
    expected = _take(iterator, 5)
    fresh = _tiny(data_dir, random_flip=True, image_size=5)
    fresh.set_state(state)
    _assert_same_batches(expected, _take(fresh, 5))
    fresh.set_state(json.loads(state))  # The decoded dict works too, and rewinds.
    _assert_same_batches(expected, _take(fresh, 5))


def test_state_is_portable_across_shard_counts(data_dir):
    single = _tiny(data_dir, global_batch_size=8)
    _take(single, 4)
    state = single.get_state()
    expected = next(single)["label"]
    halves = [_tiny(data_dir, global_batch_size=8, shard_index=i, shard_count=2) for i in range(2)]
    for half in halves:
        half.set_state(state)
    assert sorted(expected.tolist()) == sorted(np.concatenate([next(h)["label"] for h in halves]).tolist())


def test_state_of_another_stream_is_rejected(data_dir):
    state = _tiny(data_dir, seed=1).get_state()
    with pytest.raises(ValueError, match=r"'seed': 1.*'seed': 0"):
        _tiny(data_dir, seed=0).set_state(state)


def test_grain_orbax_handler_saves_and_restores(data_dir, tmp_path):
    iterator = _tiny(data_dir)
    _take(iterator, 3)
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=iterator)
    expected = _take(iterator, 2)
    restored = grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=_tiny(data_dir))
    _assert_same_batches(expected, _take(restored, 2))


def test_worker_processes_give_the_same_batches_and_resume(data_dir):
    # grain's workers read absl flags; the pipeline parses their defaults when not run under absl.app.run.
    expected = _take(_tiny(data_dir, random_flip=True), 6)
    iterator = _tiny(data_dir, random_flip=True, worker_count=2)
    _assert_same_batches(expected[:3], _take(iterator, 3))
    fresh = _tiny(data_dir, random_flip=True, worker_count=2)
    fresh.set_state(iterator.get_state())
    _assert_same_batches(expected[3:], _take(fresh, 3))


@pytest.mark.parametrize("cpus,devices,backend,expected", [
    (2, 1, "cpu", 0),  # the trainer's XLA threads use every core
    (64, 1, "cpu", 0),
    (16, 1, "gpu", 14),  # one core per device and one for the training loop
    (32, 2, "gpu", 16),  # capped
    (240, 4, "tpu", 16),
    (8, 8, "gpu", 1),  # at least one
])
def test_auto_worker_count(cpus, devices, backend, expected):
    assert pipeline.auto_worker_count(cpus, devices, backend) == expected


def test_auto_workers_resolve_on_this_host_and_never_exceed_the_batches(data_dir):
    # The tests run JAX on CPUs: auto reads in this process.
    assert pipeline.resolve_worker_count(pipeline.AUTO_WORKERS) == 0
    assert pipeline.resolve_worker_count(3) == 3
    few = _tiny(data_dir, num_epochs=1, worker_count=10)  # 48 examples: 6 batches of 8
    assert few._worker_count == 6


class _PerRecordSource:
    """A TFDS source without `__getitems__`, so the pipeline reads it record by record; logs the single reads."""

    def __init__(self, source):
        self.source, self.single_reads = source, []

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.single_reads.append(index)  # list.append is thread-safe: grain reads batches on several threads.
        return self.source[index]


class _BatchedSource(_PerRecordSource):
    """A TFDS source with `__getitems__`; logs the batched reads too."""

    def __init__(self, source):
        super().__init__(source)
        self.batched_reads = []

    def __getitems__(self, indices):
        self.batched_reads.append(list(indices))
        return self.source.__getitems__(indices)


def test_batches_are_read_at_once_and_equal_per_record_reads(data_dir, monkeypatch):
    open_source, opened = sources.open_source, []

    def open_wrapped(wrapper):
        def open_(*args, **kwargs):
            opened.append(wrapper(open_source(*args, **kwargs)))
            return opened[-1]

        return open_

    arguments = {"random_flip": True, "image_size": 5, "global_batch_size": 10, "shard_index": 1, "shard_count": 2}
    runs = []
    for wrapper in (_BatchedSource, _PerRecordSource):
        monkeypatch.setattr(sources, "open_source", open_wrapped(wrapper))
        runs.append(_take(_tiny(data_dir, **arguments), 12))  # 12 global batches of 10 span 3 epochs of 48.
    _assert_same_batches(*runs)
    batched, per_record = opened  # Read-ahead may have read more than the 12 batches taken.
    assert not batched.single_reads and len(batched.batched_reads) >= 12
    assert all(len(indices) == 5 for indices in batched.batched_reads)
    assert len(per_record.single_reads) >= 12 * 5


def test_no_tensorflow_needed(data_dir):
    next(_tiny(data_dir))
    assert "tensorflow" not in sys.modules


def test_array_dataset_keeps_values_and_labels():
    points = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float64)
    labels = np.arange(40) % 3
    batches = list(make_array_dataset(points, labels, global_batch_size=8, seed=0, num_epochs=1,
                                      shard_index=0, shard_count=2))
    assert len(batches) == 5 and batches[0]["image"].shape == (4, 2) and batches[0]["image"].dtype == np.float32
    rows = np.concatenate([b["image"] for b in batches])
    index = [int(np.flatnonzero((points.astype(np.float32) == row).all(1))[0]) for row in rows]
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels[index])
    unlabelled = make_array_dataset(points, global_batch_size=4, seed=0, shard_count=1, shard_index=0)
    assert next(unlabelled)["label"].tolist() == [0] * 4


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"global_batch_size": 30, "shard_count": 8}, "global_batch_size 30 .* shard_count 8"),
        ({"shard_index": 2, "shard_count": 2}, "shard_index 2 .* shard_count 2"),
        ({"num_epochs": 0}, "num_epochs 0"),
        ({"num_epochs": 1, "global_batch_size": 64}, "global_batch_size 64 exceeds the 48 examples"),
        ({"worker_count": -2}, "worker_count -2"),
    ],
)
def test_bad_arguments(data_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(data_dir, **kwargs)


def test_array_labels_must_match_data():
    with pytest.raises(ValueError, match=r"labels shape \(3,\) .* data shape \(4, 2\)"):
        make_array_dataset(np.zeros((4, 2)), np.zeros(3), global_batch_size=2, seed=0)
