"""Datasets as in-memory numpy arrays, without TensorFlow.

Sources, chosen by ``config.data_source``:

* ``digits``: scikit-learn's bundled ``load_digits`` (8x8 images, offline, always available).
* ``local``: files in ``config.data_dir``: Fashion-MNIST IDX files (``*-idx?-ubyte[.gz]``),
  CIFAR-100 ``cifar-100-python[.tar.gz]``, Tiny-ImageNet ``tiny-imagenet-200[.zip]`` (prepared
  once by our TFDS builder into ``<data_dir>/tfds``).
* ``tfds``: ``tfds.data_source`` (ArrayRecord, numpy out), downloading when needed; also what
  ``tfds.testing.mock_data`` intercepts in tests.
* ``auto``: ``local`` when ``data_dir`` is set (or, for Fashion-MNIST, when Debian's
  ``dataset-fashion-mnist`` is installed), else ``tfds``.

Batches are drawn in a fixed order per (seed, epoch), so the data position of a run is its step.
"""

import dataclasses
import gzip
import os
import pickle
import tarfile
from collections.abc import Callable, Iterator

import numpy as np

from experiments.errors import UserError

DATASETS = ("digits", "fashion_mnist", "cifar100", "tiny_imagenet")
SOURCES = ("auto", "local", "tfds")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/test arrays. Images are NHWC (uint8, or float32 for digits); labels int32."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]  # per-channel, in the units of the stored images
    std: tuple[float, ...]
    val_images: np.ndarray | None = None  # held out of the training set (see `hold_out`)
    val_labels: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


# Tests (or users) may register a loader here to inject data: name -> loader(config) -> Dataset.
LOADERS: dict[str, Callable[..., Dataset]] = {}


def load_dataset(config) -> Dataset:
    """Loads ``config.dataset`` according to ``config.data_source`` and ``config.data_dir``, with
    ``config.validation_size`` training examples held out as a validation split."""
    return hold_out(_load(config), config.validation_size, config.validation_seed)


def hold_out(ds: Dataset, size: int, seed: int) -> Dataset:
    """Moves ``size`` training examples into a validation split.

    The held-out examples are the first ``size`` of a fixed permutation drawn from ``seed``
    (``numpy.random.default_rng(seed).permutation``), independent of the training seed, so every
    run of a study sees the same split. Both parts keep their original order. The normalisation
    statistics are recomputed from the remaining training examples only.

    Args:
      ds: a dataset without a validation split.
      size: examples to hold out; 0 returns ``ds`` unchanged.
      seed: seed of the split.

    Returns:
      The dataset with ``val_images``/``val_labels`` set and that many fewer training examples.
    """
    if size == 0:
        return ds
    n = ds.train_images.shape[0]
    if not 0 < size < n:
        raise UserError(f"validation_size must be in [0, {n}) for this dataset, got {size}")
    if ds.val_images is not None:
        raise UserError("the dataset already has a validation split")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(perm[:size]), np.sort(perm[size:])
    mean, std = _stats(ds.train_images[train][:10000])
    return dataclasses.replace(
        ds,
        train_images=ds.train_images[train],
        train_labels=ds.train_labels[train],
        val_images=ds.train_images[val],
        val_labels=ds.train_labels[val],
        mean=mean,
        std=std,
    )


def _load(config) -> Dataset:
    name = config.dataset
    if name in LOADERS:
        return LOADERS[name](config)
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if config.data_source not in SOURCES:
        raise UserError(
            f"unknown data_source {config.data_source!r}; choose one of: {', '.join(SOURCES)}"
        )
    if name == "digits":
        return _digits()
    data_dir = config.data_dir
    if data_dir and not os.path.isdir(data_dir):
        raise UserError(f"data_dir {data_dir!r} does not exist; pass an existing folder")
    source = config.data_source
    if source == "auto":
        local = bool(data_dir) or (name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST))
        source = "local" if local else "tfds"
    if source == "local":
        if name == "fashion_mnist":
            return _fashion_mnist_idx(data_dir or DEBIAN_FASHION_MNIST)
        if not data_dir:
            raise UserError(f"data_source=local needs --data_dir for {name}")
        if name == "cifar100":
            return _cifar100_python(data_dir)
        return _tiny_imagenet_local(data_dir)
    return _from_tfds(name, data_dir or None)


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return tuple(float(v) for v in x.mean(0)), tuple(float(v) + 1e-6 for v in x.std(0))


def _make(train_x, train_y, test_x, test_y, num_classes) -> Dataset:
    mean, std = _stats(train_x[:10000])
    return Dataset(
        train_x,
        train_y.astype(np.int32),
        test_x,
        test_y.astype(np.int32),
        int(num_classes),
        mean,
        std,
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    tr_x, te_x, tr_y, te_y = train_test_split(
        x, d.target, test_size=0.2, random_state=0, stratify=d.target
    )
    return _make(tr_x, tr_y, te_x, te_y, 10)


# ----------------------------------------------------------------------------- Fashion-MNIST IDX


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(
            f"{path} is truncated: expected {int(np.prod(dims))} values, got {data.size}"
        )
    return data.reshape(tuple(int(d) for d in dims))


def _find(folder: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise UserError(
        f"{folder!r} has no {stem}[.gz]; put the Fashion-MNIST IDX files there "
        "(or apt install dataset-fashion-mnist)"
    )


def _fashion_mnist_idx(folder: str) -> Dataset:
    if not os.path.isdir(folder):
        raise UserError(f"data_dir {folder!r} does not exist; pass an existing folder")
    get = lambda stem: read_idx(_find(folder, stem))
    tr_x, tr_y = get("train-images-idx3-ubyte"), get("train-labels-idx1-ubyte")
    te_x, te_y = get("t10k-images-idx3-ubyte"), get("t10k-labels-idx1-ubyte")
    if tr_x.shape[0] != tr_y.shape[0] or te_x.shape[0] != te_y.shape[0]:
        raise UserError(f"IDX images and labels in {folder!r} have different lengths")
    return _make(tr_x[..., None], tr_y, te_x[..., None], te_y, 10)


# ----------------------------------------------------------------------------- CIFAR-100 python


def _cifar100_python(folder: str) -> Dataset:
    inner = os.path.join(folder, "cifar-100-python")
    archive = os.path.join(folder, "cifar-100-python.tar.gz")

    def load(split):
        if os.path.isdir(inner):
            with open(os.path.join(inner, split), "rb") as f:
                return pickle.load(f, encoding="bytes")
        if os.path.isfile(archive):
            with tarfile.open(archive) as tar:
                return pickle.load(tar.extractfile(f"cifar-100-python/{split}"), encoding="bytes")
        raise UserError(f"{folder!r} has neither cifar-100-python/ nor cifar-100-python.tar.gz")

    def arrays(split):
        d = load(split)
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), np.asarray(d[b"fine_labels"])

    (tr_x, tr_y), (te_x, te_y) = arrays("train"), arrays("test")
    return _make(tr_x, tr_y, te_x, te_y, 100)


# ----------------------------------------------------------------------------- TFDS


_TFDS_SPLITS = {
    "fashion_mnist": ("train", "test"),
    "cifar100": ("train", "test"),
    "tiny_imagenet": ("train", "validation"),
}


def _source_to_numpy(source) -> tuple[np.ndarray, np.ndarray]:
    # Item by item: `__getitems__` is broken under tfds.testing.mock_data (TFDS 4.9.10).
    images, labels = [], []
    for i in range(len(source)):
        item = source[i]
        images.append(np.asarray(item["image"]))
        labels.append(int(item["label"]))
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int32)


def _from_tfds(name: str, data_dir: str | None, **kwargs) -> Dataset:
    import tensorflow_datasets as tfds

    if name == "tiny_imagenet":
        from experiments.tiny_imagenet import tiny_imagenet_dataset_builder  # noqa: F401 (registers)
    train_split, test_split = _TFDS_SPLITS[name]
    try:
        train, test = tfds.data_source(
            name,
            split=[train_split, test_split],
            data_dir=data_dir,
            builder_kwargs={"file_format": "array_record"},
            **kwargs,
        )
        num_classes = train.dataset_info.features["label"].num_classes
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (any TFDS failure becomes one line naming the fix)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        hint = {
            "fashion_mnist": "pass --data_dir with the IDX files or apt install "
            "dataset-fashion-mnist",
            "cifar100": "pass --data_dir with cifar-100-python.tar.gz, or install tensorflow-cpu "
            "so TFDS can build it",
            "tiny_imagenet": "pass --data_dir with tiny-imagenet-200.zip",
        }[name]
        raise UserError(
            f"could not load {name} with TFDS ({type(e).__name__}: {first}); {hint}"
        ) from None
    tr_x, tr_y = _source_to_numpy(train)
    te_x, te_y = _source_to_numpy(test)
    return _make(tr_x, tr_y, te_x, te_y, num_classes)


def _tiny_imagenet_local(folder: str) -> Dataset:
    import tensorflow_datasets as tfds

    from experiments.tiny_imagenet import tiny_imagenet_dataset_builder as b

    if not b.find_source(folder):
        raise UserError(f"{folder!r} has neither tiny-imagenet-200/ nor tiny-imagenet-200.zip")
    config = tfds.download.DownloadConfig(manual_dir=folder)
    return _from_tfds(
        "tiny_imagenet",
        os.path.join(folder, "tfds"),
        download_and_prepare_kwargs={"download_config": config},
    )


# ----------------------------------------------------------------------------- batches


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled example order of one epoch; a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(
    ds: Dataset, batch_size: int, seed: int, start_step: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (images, labels) batches from ``start_step`` on, forever; drops each epoch's rest."""
    n = ds.train_images.shape[0]
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"batch_size {batch_size} is larger than the training set ({n} examples)")
    step = start_step
    while True:
        epoch, i = divmod(step, steps_per_epoch)
        order = epoch_order(seed, epoch, n)
        for j in range(i, steps_per_epoch):
            idx = np.sort(order[j * batch_size : (j + 1) * batch_size])
            yield ds.train_images[idx], ds.train_labels[idx]
        step = (epoch + 1) * steps_per_epoch


def eval_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, max_batches: int = -1
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields fixed-size (images, labels, valid) batches; the last one is zero-padded."""
    n = images.shape[0]
    for k, start in enumerate(range(0, n, batch_size)):
        if 0 < max_batches <= k:
            return
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        valid = np.ones(batch_size, bool)
        if x.shape[0] < batch_size:
            pad = batch_size - x.shape[0]
            valid[x.shape[0] :] = False
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
        yield x, y, valid
