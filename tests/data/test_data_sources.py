"""Opening prepared TFDS data sets, the clear errors when they are missing, specs, image preprocessing."""

import numpy as np
import pytest

from diffax.data import DatasetSpec, dataset_spec, make_dataset, preprocess


@pytest.mark.parametrize("name", ["cifar10", "no_such_dataset"])
def test_missing_data_set_error_names_it_the_dir_and_the_command(tmp_path, name):
    with pytest.raises(FileNotFoundError) as error:
        make_dataset(name, split="train", data_dir=str(tmp_path), global_batch_size=8, seed=0)
    message = str(error.value)
    assert repr(name) in message and str(tmp_path) in message
    assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in message


def test_bad_split_error_names_the_data_set(data_dir):
    with pytest.raises(ValueError, match=r"'digits'.*'validation'"):
        dataset_spec("digits", split="validation", data_dir=data_dir)


def test_missing_feature_error(data_dir):
    with pytest.raises(ValueError, match=r"no feature 'class'.*'image', 'label'"):
        dataset_spec("digits", split="train", data_dir=data_dir, label_key="class")


def test_specs(data_dir):
    assert dataset_spec("digits", split="test", data_dir=data_dir) == DatasetSpec((8, 8, 1), 10, 297)
    assert dataset_spec("mnist5k", split="train[:10%]", data_dir=data_dir, image_size=32) == DatasetSpec(
        (32, 32, 1), 10, 450
    )
    spec = dataset_spec("diffax_test_tiny", split="train", data_dir=data_dir, image_size=(4, 5), label_key=None)
    assert spec == DatasetSpec((4, 5, 3), None, 48)


def test_center_crop_resize():
    image = np.zeros((6, 10, 3), np.uint8)
    image[:, 2:8] = 200  # The centred 6x6 square.
    assert preprocess.center_crop_resize(image, (6, 10)) is image
    square = preprocess.center_crop_resize(image, (3, 3))
    assert square.shape == (3, 3, 3) and square.dtype == np.uint8
    np.testing.assert_array_equal(square, 200)  # Only the centre survives the crop.
    tall = preprocess.center_crop_resize(np.full((6, 10, 1), 7, np.uint8), (12, 4))
    assert tall.shape == (12, 4, 1)
    np.testing.assert_array_equal(tall, 7)


def test_to_unit_range_endpoints():
    values = preprocess.to_unit_range(np.array([0, 255], np.uint8))
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, [-1.0, 1.0])


def test_pad_to_centres_the_image_on_black(data_dir):
    image = np.full((28, 27, 1), 200, np.uint8)
    padded = preprocess.pad_to_size(image, (32, 32))
    assert padded.shape == (32, 32, 1) and padded.sum() == image.sum()
    assert padded[2:30, 2:29].min() == 200 and padded[:2].max() == padded[:, :2].max() == padded[:, 29:].max() == 0
    with pytest.raises(ValueError, match="image of size 28x27 does not fit pad_to 24x32"):
        preprocess.pad_to_size(image, (24, 32))
    assert dataset_spec("mnist5k", split="test", data_dir=data_dir, pad_to=32).image_shape == (32, 32, 1)
    with pytest.raises(ValueError, match=r"pad_to 16 is smaller than its 28x28 images"):
        dataset_spec("mnist5k", split="test", data_dir=data_dir, pad_to=16)
