"""Data loading without TensorFlow: IDX files, CIFAR-100 python pickles, the Tiny-ImageNet TFDS
builder on fake files, tfds.testing.mock_data, the loader hook, batching."""

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments import data, main
from experiments.errors import UserError
from experiments.tiny_imagenet import tiny_imagenet_dataset_builder as tiny


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape
    )
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder, n_train=40, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    write_idx(
        os.path.join(folder, "train-images-idx3-ubyte" + ext),
        rng.integers(0, 255, (n_train, 28, 28)),
    )
    write_idx(os.path.join(folder, "train-labels-idx1-ubyte" + ext), rng.integers(0, 10, n_train))
    write_idx(
        os.path.join(folder, "t10k-images-idx3-ubyte" + ext), rng.integers(0, 255, (n_test, 28, 28))
    )
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte" + ext), rng.integers(0, 10, n_test))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    fake_fashion_mnist(str(tmp_path), gz=gz)
    ds = data.load_dataset(main.build_config("fashion_mnist_lenet300", [f"--data_dir={tmp_path}"]))
    assert ds.train_images.shape == (40, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (20,) and ds.num_classes == 10 and len(ds.mean) == 1


def test_truncated_idx_is_a_user_error(tmp_path):
    fake_fashion_mnist(str(tmp_path), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        data.load_dataset(main.build_config("fashion_mnist_lenet300", [f"--data_dir={tmp_path}"]))


def test_missing_data_dir_is_a_user_error(tmp_path):
    config = main.build_config("fashion_mnist_lenet5", [f"--data_dir={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match="does not exist"):
        data.load_dataset(config)
    with pytest.raises(UserError, match="has no train-images"):
        data.load_dataset(main.build_config("fashion_mnist_lenet5", [f"--data_dir={tmp_path}"]))


def test_cifar100_python_archive(tmp_path):
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        for split, n in (("train", 6), ("test", 4)):
            blob = pickle.dumps(
                {
                    b"data": rng.integers(0, 255, (n, 3072)).astype(np.uint8),
                    b"fine_labels": list(range(n)),
                }
            )
            info = tarfile.TarInfo(f"cifar-100-python/{split}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    ds = data.load_dataset(main.build_config("cifar100_vgg16", [f"--data_dir={tmp_path}"]))
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.num_classes == 100
    assert list(ds.test_labels) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "name,shape,classes",
    [
        ("fashion_mnist", (28, 28, 1), 10),
        ("cifar100", (32, 32, 3), 100),
        ("tiny_imagenet", (64, 64, 3), 200),
    ],
)
def test_tfds_data_source_under_mock_data(name, shape, classes):
    config = main.build_config("digits_mlp", [f"--dataset={name}", "--data_source=tfds"])
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_dataset(config)
    assert ds.train_images.shape == (6,) + shape and ds.num_classes == classes


def test_loader_hook_injects_data():
    fake = data.Dataset(
        np.zeros((4, 2, 2, 1), np.uint8),
        np.zeros(4, np.int32),
        np.zeros((2, 2, 2, 1), np.uint8),
        np.zeros(2, np.int32),
        3,
        (0.0,),
        (1.0,),
    )
    data.LOADERS["fake"] = lambda config: fake
    try:
        assert data.load_dataset(main.build_config("digits_mlp", ["--dataset=fake"])) is fake
    finally:
        del data.LOADERS["fake"]


def test_unknown_dataset_and_source():
    with pytest.raises(UserError, match="unknown dataset 'mnist2'"):
        data.load_dataset(main.build_config("digits_mlp", ["--dataset=mnist2"]))
    with pytest.raises(UserError, match="unknown data_source"):
        data.load_dataset(main.build_config("cifar100_vgg16", ["--data_source=web"]))


def test_train_batches_are_a_function_of_seed_and_step():
    ds = data.load_dataset(main.build_config("digits_mlp", []))
    it = data.train_batches(ds, 100, seed=3)
    batches = [next(it) for _ in range(20)]  # crosses an epoch boundary (14 batches per epoch)
    resumed = data.train_batches(ds, 100, seed=3, start_step=13)
    for k in range(13, 20):
        x, y = next(resumed)
        np.testing.assert_array_equal(x, batches[k][0])
        np.testing.assert_array_equal(y, batches[k][1])
    x, y, valid = list(data.eval_batches(ds.test_images, ds.test_labels, 100))[-1]
    assert x.shape[0] == 100 and valid.sum() == ds.test_images.shape[0] % 100


def _fake_tiny_imagenet(root, n_classes_with_images=2):
    d = os.path.join(root, tiny.FOLDER)
    wnids = [f"n{i:08d}" for i in range(200)]
    os.makedirs(os.path.join(d, "val", "images"))
    with open(os.path.join(d, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids))
    rng = np.random.default_rng(0)
    for w in wnids[:n_classes_with_images]:
        os.makedirs(os.path.join(d, "train", w, "images"))
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                os.path.join(d, "train", w, "images", f"{w}_{k}.JPEG")
            )
    # A grayscale image, as a few real Tiny-ImageNet images are.
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(
        os.path.join(d, "val", "images", "val_0.JPEG")
    )
    with open(os.path.join(d, "val", "val_annotations.txt"), "w") as f:
        f.write(f"val_0.JPEG\t{wnids[7]}\t0\t0\t10\t10\n")
    return d


@pytest.mark.parametrize("zipped", [False, True])
def test_tiny_imagenet_builder_on_fake_files(tmp_path, zipped):
    src = _fake_tiny_imagenet(str(tmp_path / "src"))
    manual = tmp_path / "src"
    if zipped:
        manual = tmp_path / "zipped"
        manual.mkdir()
        with zipfile.ZipFile(manual / f"{tiny.FOLDER}.zip", "w") as zf:
            for dirpath, _, files in os.walk(src):
                for name in files:
                    full = os.path.join(dirpath, name)
                    zf.write(full, os.path.relpath(full, tmp_path / "src"))
    builder = tiny.TinyImagenet(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.splits["validation"].num_examples == 1
    val = builder.as_data_source("validation")[0]
    assert val["image"].shape == (64, 64, 3) and val["label"] == 7 and val["id"] == b"val_0.JPEG"
    train_labels = sorted(int(x["label"]) for x in builder.as_data_source("train"))
    assert train_labels == [0, 0, 1, 1]


def test_tiny_imagenet_local_source_via_config(tmp_path):
    _fake_tiny_imagenet(str(tmp_path))
    ds = data.load_dataset(main.build_config("tiny_imagenet_vgg16", [f"--data_dir={tmp_path}"]))
    assert ds.train_images.shape == (4, 64, 64, 3) and ds.test_images.shape == (1, 64, 64, 3)
    assert ds.num_classes == 200
