"""A gs:// workdir: run.json, metrics.jsonl, TensorBoard events (scalars, the sample grid, the config) and sample
grids all reach the bucket through etils.epath (here an in-memory fsspec file system registered as `gs`), and
nothing lands in a local directory named `gs:`."""

import importlib
import json

import numpy as np
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from diffax.evaluation import grid
from diffax.experiment import DataSpec
from diffax.run_config import read_run_file, write_run_file
from diffax.train import metrics
from train_helpers import tiny_digits

fsspec_registry = importlib.import_module("fsspec.registry")  # The module (fsspec.registry is its read-only view).


class FakeGCS(MemoryFileSystem):
    """An in-memory bucket store answering to gs://."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    for protocol in FakeGCS.protocol:  # fsspec's registry of loaded implementations, restored after the test.
        monkeypatch.setitem(fsspec_registry._registry, protocol, FakeGCS)
    cached = epath.backend.fsspec_backend._get_filesystem  # etils caches the file system of each protocol.
    cached.cache_clear()
    monkeypatch.chdir(tmp_path)  # A local `gs:` directory would appear here.
    yield FakeGCS()
    cached.cache_clear()
    assert not (tmp_path / "gs:").exists()


def test_every_file_of_a_gs_workdir_goes_to_the_bucket(bucket, tmp_path):
    workdir = "gs://bucket/run"
    config = tiny_digits()
    spec = DataSpec(example_shape=(8, 8, 1), num_classes=10, is_image=True)
    write_run_file(workdir, config, spec)
    writer = metrics.MetricWriter(workdir)
    writer.write_config(config)
    writer.write(2, {"loss": 0.5})
    writer.write(4, {"loss": 0.25})
    image = grid.samples_png(np.zeros((4, 8, 8, 1)), f"{workdir}/samples/step_0000004.png", is_image=True)
    writer.write_image(4, "samples", image)
    writer.close()

    assert read_run_file(workdir)[0].train.num_steps == config.train.num_steps
    lines = [json.loads(line) for line in bucket.cat("gs://bucket/run/metrics.jsonl").decode().splitlines()]
    assert [(line["step"], line["loss"]) for line in lines] == [(2, 0.5), (4, 0.25)]
    assert bucket.cat("gs://bucket/run/samples/step_0000004.png").startswith(b"\x89PNG")
    (events,) = bucket.glob("gs://bucket/run/tensorboard/events.out.tfevents.*")
    data = bucket.cat(events)
    assert b"config" in data and b"samples" in data and b"loss" in data
    assert not list(tmp_path.iterdir())  # Nothing local at all.
