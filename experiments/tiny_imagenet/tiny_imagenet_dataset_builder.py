"""Tiny-ImageNet-200 as a TFDS dataset: 200 classes, 64x64 RGB, 100k train / 10k validation images.

Works without TensorFlow: images are passed to TFDS as JPEG bytes (grayscale ones converted to RGB
with PIL), and the prepared ArrayRecord files are read with ``tfds.data_source``.

The source is ``tiny-imagenet-200.zip`` from its public URL, or, when a manual dir is given
(``tfds.download.DownloadConfig(manual_dir=...)``), that zip or its extracted ``tiny-imagenet-200/``
folder there. The test split has no labels and is not provided.
"""

import io
import socket
import threading
import urllib.parse
import zipfile

import tensorflow_datasets as tfds
from etils import epath

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (the DNS lookup
    included, which has no timeout of its own: it runs in a daemon thread)."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def find_source(folder) -> epath.Path | None:
    """The extracted folder or the zip inside ``folder``, or None."""
    folder = epath.Path(folder)
    if (folder / FOLDER / "wnids.txt").exists():
        return folder / FOLDER
    if (folder / "wnids.txt").exists():
        return folder
    if (folder / f"{FOLDER}.zip").exists():
        return folder / f"{FOLDER}.zip"
    return None


def _rgb_jpeg(path: epath.Path):
    """The JPEG file as is when it is RGB, else a PIL image converted to RGB (TFDS encodes it)."""
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if im.mode == "RGB":
            return data
        return im.convert("RGB")


def _unzip(archive: epath.Path, dest: epath.Path) -> epath.Path:
    """Unzips with the standard library (TFDS's extractor needs TensorFlow); reuses a done one."""
    out = dest / (archive.name + ".d")
    done = out / ".done"
    if not done.exists():
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
        done.write_text("")
    return out


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny-ImageNet-200."""

    name = "tiny_imagenet"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Optional: place {FOLDER}.zip (from {URL}) or its extracted {FOLDER}/ folder in the "
        "manual dir."
    )

    # TFDS finds checksums next to the builder's code through `importlib_resources`, which is not
    # installed with TFDS here; pointing at this file directly avoids that import.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Tiny ImageNet: 200 classes at 64x64, 500 train and 50 val images each.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=200),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/c/tiny-imagenet",
        )

    def _root(self, dl_manager) -> epath.Path:
        source = None
        manual = getattr(dl_manager, "_manual_dir", None)
        if manual and epath.Path(manual).exists():
            source = find_source(manual)
        if source is None:
            # Offline, TFDS would retry the download for minutes: fail at once instead.
            if not reachable(URL):
                raise ConnectionError(f"{URL} cannot be reached (offline?)")
            source = epath.Path(dl_manager.download(URL))
        if source.name.endswith(".zip"):
            return _unzip(source, epath.Path(dl_manager.download_dir) / "extracted") / FOLDER
        return source

    def _split_generators(self, dl_manager):
        root = self._root(dl_manager)
        wnids = sorted((root / "wnids.txt").read_text().split())
        if len(wnids) != 200:
            raise ValueError(f"{root / 'wnids.txt'} lists {len(wnids)} classes, expected 200")
        labels = {w: i for i, w in enumerate(wnids)}
        return {
            "train": self._generate_examples(root, labels, "train"),
            "validation": self._generate_examples(root, labels, "validation"),
        }

    def _generate_examples(self, root: epath.Path, labels: dict, split: str):
        if split == "train":
            for wnid in sorted(labels):
                for path in sorted((root / "train" / wnid / "images").glob("*.JPEG")):
                    yield (
                        path.name,
                        {"image": _rgb_jpeg(path), "label": labels[wnid], "id": path.name},
                    )
        else:
            for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
                if not line.strip():
                    continue
                name, wnid = line.split("\t")[:2]
                path = root / "val" / "images" / name
                yield name, {"image": _rgb_jpeg(path), "label": labels[wnid], "id": name}


__all__ = ["TinyImagenet", "find_source", "URL"]
