"""
Image classification data for `tasks.image`: every split is decoded once, up front, into a uint8 tensor
`[N, C, H, W]`, and training augmentation is a few tensor ops on a whole batch (zero-pad, random crop,
horizontal flip, then per-channel normalisation). Nothing is decoded per epoch, so the input pipeline
keeps up with a GPU even when selection scores a pool of k x batch samples per step.

Datasets (`load_image_splits(name, ...)`, augmentation as chosen by `augmentation="auto"`):

- `cifar10`: `<data_dir>/cifar10-jpeg/{train,test}.parquet` (JPEG bytes), else the hub's `uoft-cs/cifar10`;
  50,000 / 10,000 RGB 32x32 images; pad-4 random crop + horizontal flip.
- `cifar100`: the hub's `uoft-cs/cifar100` (fine labels); 50,000 / 10,000; pad-4 crop + flip.
- `fashion_mnist`: `<data_dir>/fashion-mnist/*-ubyte.gz` (IDX), `/usr/share/datasets/fashion-mnist`, else
  the hub's `zalando-datasets/fashion_mnist`; 60,000 / 10,000 grayscale 28x28; pad-2 crop, no flip.
- `digits`: `sklearn.datasets.load_digits`, always offline; 1,437 / 360 grayscale 8x8; no augmentation.
- anything else: `datasets.load_dataset(name)`, a hub id or a local folder with an image and a label
  column; pad-(size/8) crop + flip.

`digits` has no official split: eval is a stratified 20% (360 of 1,797 images) drawn by
`sklearn.model_selection.train_test_split(random_state=0)`, train the other 1,437. Its 0..16 pixel values
are rescaled to 0..255.

Grayscale datasets stay 1-channel; the recipe builds random-init timm models with `in_chans=1`, and
`TensorImageDataset.with_channels(3)` replicates the channel for a pretrained 3-channel model.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import default_data_collator

from tasks.paths import SHARED_DATA

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = SHARED_DATA  # ../shared/data beside the repository
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

AUGMENTATIONS = ("auto", "none", "flip", "crop", "crop_flip")

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Per-channel mean / std of the training sets, the usual normalisation constants.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}

# Hub copies used when the local files are missing (and for CIFAR-100, which is not kept locally).
HUB_NAMES = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
}


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """
    Standard CIFAR augmentation on a whole batch at once: zero-pad each side by `padding` pixels, crop
    an `H x W` window at an independent random offset per image, and, with `flip`, mirror each image
    horizontally with probability 1/2 (torchvision's `RandomCrop(padding=p)` + `RandomHorizontalFlip()`).

    The crop takes each image's window from a view of all its windows (`unfold`), so it copies the `B` windows and
    nothing else: no per-pixel index tensors. It works in the images' own dtype (uint8: a quarter of the bytes).

    Args:
        images (`torch.Tensor` of shape `[B, C, H, W]`): pixel values on the 0..255 scale, so padding is black.
        padding (`int`): pixels of zero padding per side; 0 skips the crop.
        flip (`bool`): whether to flip horizontally at random.
        generator (`torch.Generator`, *optional*): source of randomness; the global one by default.

    Returns:
        `torch.Tensor` of shape `[B, C, H, W]`, same dtype.
    """
    batch, _, height, width = images.shape
    out = images
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # [B, C, 2p + 1, 2p + 1, H, W], a view
        out = windows[torch.arange(batch), :, top, left]
    if flip:
        mirrored = torch.rand(batch, generator=generator) < 0.5
        out = torch.where(mirrored[:, None, None, None], out.flip(-1), out)
    return out


class TensorImageDataset(Dataset):
    """
    A decoded image split: uint8 images `[N, C, H, W]` and int64 labels `[N]`, yielding
    `{"pixel_values": float32 [C, H, W], "labels": int}` like Hugging Face image-classification datasets,
    so the Trainer's default collator batches it.

    `__getitems__` augments and normalises a whole batch (or selection pool) with one set of tensor ops;
    the DataLoader calls it instead of `__getitem__` for each index. The dataset holds only tensors and
    numbers, so it pickles into DataLoader workers.

    Args:
        images (`torch.Tensor`): uint8 `[N, C, H, W]`.
        labels (`torch.Tensor`): int64 `[N]`.
        mean (`Sequence[float]`): per-channel mean on the 0..1 scale.
        std (`Sequence[float]`): per-channel standard deviation on the 0..1 scale.
        augmentation (`str`, *optional*, defaults to `"none"`): `"none"`, `"flip"`, `"crop"`, `"crop_flip"`.
        crop_padding (`int`, *optional*, defaults to 4): zero padding per side for the random crop.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augmentation: str = "none",
        crop_padding: int = 4,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}.")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {list(labels.shape)}.")
        if augmentation not in AUGMENTATIONS[1:]:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS[1:]}, got {augmentation!r}.")
        if not len(mean) == len(std) == images.shape[1]:
            raise ValueError(f"mean and std need {images.shape[1]} channel values, got {len(mean)} and {len(std)}.")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augmentation = augmentation
        self.crop_padding = crop_padding

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, C, H, W]` -> augmented, normalised float32 `[B, C, H, W]`."""
        # Augment the uint8 images (zero padding is black), then convert and normalise in one pass.
        if self.augmentation != "none":
            padding = self.crop_padding if "crop" in self.augmentation else 0
            images = random_crop_flip(images, padding, flip="flip" in self.augmentation)
        return images.float().sub_(self.mean * 255).div_(self.std * 255)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        pixel_values = self.transform(self.images[index])
        labels = self.labels[index].tolist()
        # each sample's image is a view of the batch: `collate_images` hands the batch on without stacking it again
        return [{"pixel_values": x, "labels": y} for x, y in zip(pixel_values.unbind(0), labels, strict=True)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def with_channels(self, channels: int) -> TensorImageDataset:
        """The same split with `channels` channels: a 1-channel split is replicated (e.g. for a 3-channel model)."""
        if channels == self.num_channels:
            return self
        if self.num_channels != 1:
            raise ValueError(f"can only replicate a 1-channel split, this one has {self.num_channels} channels.")
        return TensorImageDataset(
            self.images.expand(-1, channels, -1, -1).contiguous(),
            self.labels,
            self.mean.flatten().tolist() * channels,
            self.std.flatten().tolist() * channels,
            self.augmentation,
            self.crop_padding,
        )

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> TensorImageDataset:
        """The same split normalised with other statistics (e.g. a pretrained model's)."""
        return TensorImageDataset(self.images, self.labels, mean, std, self.augmentation, self.crop_padding)

    def without_augmentation(self) -> TensorImageDataset:
        """The same split as it is evaluated or scored: normalised, never augmented."""
        return TensorImageDataset(
            self.images,
            self.labels,
            self.mean.flatten().tolist(),
            self.std.flatten().tolist(),
            "none",
            self.crop_padding,
        )


def collate_images(features: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The Trainer's default collation of `{"pixel_values", "labels"}` samples, except that samples whose images are,
    in order, the rows of one batch tensor (as `TensorImageDataset.__getitems__` returns them) get that tensor
    itself rather than a stacked copy.
    """
    images = [f["pixel_values"] for f in features]
    base = images[0]._base if isinstance(images[0], torch.Tensor) else None
    same_batch = (
        isinstance(base, torch.Tensor)
        and base.dim() == 4
        and base.shape[0] == len(images)
        and all(image._base is base and image.data_ptr() == base[i].data_ptr() for i, image in enumerate(images))
    )
    if not same_batch or set(features[0]) != {"pixel_values", "labels"}:
        return default_data_collator(features)
    return {"pixel_values": base, "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long)}


@dataclass
class ImageSplits:
    """A train and an eval split decoded into tensors, with their class names and where they came from."""

    train: TensorImageDataset
    eval: TensorImageDataset
    label_names: list[str]
    source: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# ---- decoding: every loader returns (uint8 images [N, C, H, W], int64 labels [N]) ----


def subset_indices(total: int, count: int | None, seed: int) -> np.ndarray:
    """`count` distinct indices out of `total`, in a random order fixed by `seed`; all of them when `count` is None."""
    rng = np.random.default_rng(seed)
    if count is None or count >= total:
        return np.arange(total)
    return rng.permutation(total)[:count]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `[N, C, H, W]` -> uint8 `[N, C, size, size]` (bilinear, antialiased), done once at load time."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _stack_pil(images: Sequence[Any], image_size: int | None) -> torch.Tensor:
    """PIL images -> uint8 `[N, C, H, W]`: grayscale ('L') stays 1-channel, every other mode becomes RGB."""
    from PIL import Image

    grayscale = all(image.mode in ("L", "1", "I;16", "I") for image in images)
    arrays = []
    for image in images:
        image = image.convert("L" if grayscale else "RGB")
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:3]}...; pass image_size to resize them.")
    stacked = np.stack(arrays)
    if grayscale:
        stacked = stacked[:, :, :, None]
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def load_cifar10_parquet(path: Path, count: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Decode a CIFAR-10 Parquet file of JPEG bytes (`image`, `label` columns, see `cifar10-jpeg/SOURCE.md`).
    Rows are sorted by label, so a subset of `count` rows is drawn at random (fixed `seed`) before decoding.

    Returns:
        uint8 images `[N, 3, 32, 32]` and int64 labels `[N]`.
    """
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(path, columns=["image", "label"])
    table = table.take(subset_indices(table.num_rows, count, seed))
    images = [Image.open(io.BytesIO(b)) for b in table.column("image").to_pylist()]
    labels = torch.tensor(table.column("label").to_numpy().astype(np.int64))
    return _stack_pil(images, None), labels


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, the MNIST / Fashion-MNIST format."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type code {raw[2]:#x}).")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist_idx(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Fashion-MNIST from its IDX files (`train-*` or `t10k-*`, gzipped or not).

    Returns:
        uint8 images `[N, 1, 28, 28]` and int64 labels `[N]`.
    """
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_existing(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_existing(folder, f"{prefix}-labels-idx1-ubyte"))
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


def _existing(folder: Path, stem: str) -> Path:
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{stem}(.gz) not found in {folder}.")


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """
    scikit-learn's 8x8 digits (1,797 images, 10 classes) with a fixed stratified split: eval is 20%
    (360 images, `train_test_split(test_size=0.2, stratify=y, random_state=0)`), train the other 1,437.

    Returns:
        uint8 images `[N, 1, 8, 8]` (0..16 rescaled to 0..255) and int64 labels `[N]`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_x, eval_x, train_y, eval_y = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    x, y = (train_x, train_y) if split == "train" else (eval_x, eval_y)
    return torch.from_numpy(x)[:, None].contiguous(), torch.from_numpy(y.astype(np.int64))


def load_hub_splits(
    name: str,
    config_name: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """
    Any `datasets.load_dataset(name)` image-classification dataset (a hub id, or a local folder of
    Parquet / image files): the first `Image` column and the first `ClassLabel` column (preferring
    `label`, `labels`, `fine_label`). Eval is the `validation` split, else `test`, else 15% of train.
    Subsets are drawn (fixed `seed`) before decoding.

    Returns:
        `(train_images, train_labels)`, `(eval_images, eval_labels)` and the class names.
    """
    import datasets

    dataset = datasets.load_dataset(name, config_name)
    if "train" not in dataset:
        raise ValueError(f"dataset {name!r} has no 'train' split (splits: {list(dataset)}).")
    eval_split = next((s for s in ("validation", "test") if s in dataset), None)
    if eval_split is None:
        held_out = dataset["train"].train_test_split(test_size=0.15, seed=seed)
        train, evaluation = held_out["train"], held_out["test"]
    else:
        train, evaluation = dataset["train"], dataset[eval_split]

    features = train.features
    image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    label_columns = [k for k, v in features.items() if isinstance(v, datasets.ClassLabel)]
    preferred = [k for k in ("label", "labels", "fine_label") if k in label_columns]
    label_column = (preferred or label_columns or [None])[0]
    if image_column is None or label_column is None:
        raise ValueError(
            f"dataset {name!r} needs an Image column and a ClassLabel column; its features are {dict(features)}."
        )

    def decode(split: datasets.Dataset, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        split = split.select(subset_indices(len(split), count, seed))
        images = _stack_pil(split[image_column], image_size)
        return images, torch.tensor(split[label_column], dtype=torch.long)

    label_names = list(features[label_column].names)
    return decode(train, max_train_samples), decode(evaluation, max_eval_samples), label_names


# ---- the one entry point ----


def _local_folder(data_dir: Path, name: str, marker: str) -> Path | None:
    """`data_dir` itself or `data_dir/name`, whichever holds `marker`."""
    for folder in (data_dir, data_dir / name):
        if (folder / marker).exists() or (folder / f"{marker}.gz").exists():
            return folder
    return None


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale of uint8 `[N, C, H, W]`."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return x.mean(dim=1).tolist(), x.std(dim=1).clamp_min(1e-3).tolist()


def _default_augmentation(name: str, image_size: int) -> tuple[str, int]:
    if name in ("cifar10", "cifar100"):
        return "crop_flip", 4
    if name == "fashion_mnist":
        return "crop", 2  # no flip: keeps the datasets' left/right conventions; smaller shift for 28x28
    if name == "digits":
        return "none", 0  # 8x8 images: a shift of one pixel is already an eighth of the digit
    return "crop_flip", max(math.ceil(image_size / 8), 1)


def load_image_splits(
    name: str,
    data_dir: str | Path | None = None,
    config_name: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    image_size: int | None = None,
    augmentation: str = "auto",
    crop_padding: int | None = None,
    subset_seed: int = 0,
) -> ImageSplits:
    """
    Load and decode a train and an eval split (see the module docstring for the datasets).

    Args:
        name (`str`): `"cifar10"`, `"cifar100"`, `"fashion_mnist"`, `"digits"`, or a `datasets` name / folder.
        data_dir (`str` or `Path`, *optional*): folder with local copies (the dataset folder itself or its
            parent); defaults to `../shared/data` next to the repository, and the hub is used when the
            files are not there.
        config_name (`str`, *optional*): dataset configuration for `datasets.load_dataset`.
        max_train_samples (`int`, *optional*): keep a random subset of this many training images.
        max_eval_samples (`int`, *optional*): keep a random subset of this many eval images.
        image_size (`int`, *optional*): resize every image to `image_size x image_size` once, at load time.
        augmentation (`str`, *optional*, defaults to `"auto"`): `"auto"` (the dataset's standard one, see
            the table), `"none"`, `"flip"`, `"crop"` or `"crop_flip"`; eval is never augmented.
        crop_padding (`int`, *optional*): zero padding for the random crop; the dataset's default if None.
        subset_seed (`int`, *optional*, defaults to 0): seed of the subsets, fixed so that runs with
            different training seeds see the same images.

    Returns:
        [`ImageSplits`].
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}.")
    for field_name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{field_name} must be >= 1 or None, got {value}.")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1 or None, got {image_size}.")
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    normalization = NORMALIZATION.get(name)

    if name == "digits":
        train, evaluation, label_names = load_digits_split("train"), load_digits_split("eval"), list("0123456789")
        source = "sklearn.datasets.load_digits"
        keep_train = torch.from_numpy(subset_indices(len(train[1]), max_train_samples, subset_seed))
        keep_eval = torch.from_numpy(subset_indices(len(evaluation[1]), max_eval_samples, subset_seed))
        train, evaluation = (
            (train[0][keep_train], train[1][keep_train]),
            (evaluation[0][keep_eval], evaluation[1][keep_eval]),
        )
    elif name == "cifar10" and (folder := _local_folder(data_dir, "cifar10-jpeg", "train.parquet")):
        train = load_cifar10_parquet(folder / "train.parquet", max_train_samples, subset_seed)
        evaluation = load_cifar10_parquet(folder / "test.parquet", max_eval_samples, subset_seed)
        label_names, source = list(CIFAR10_LABELS), str(folder)
    elif name == "fashion_mnist" and (
        folder := _local_folder(data_dir, "fashion-mnist", "train-images-idx3-ubyte")
        or _local_folder(FASHION_MNIST_SYSTEM_DIR, ".", "train-images-idx3-ubyte")
    ):
        splits = []
        for split, count in (("train", max_train_samples), ("test", max_eval_samples)):
            images, labels = load_fashion_mnist_idx(folder, split)
            keep = torch.from_numpy(subset_indices(len(labels), count, subset_seed))
            splits.append((images[keep], labels[keep]))
        train, evaluation = splits
        label_names, source = list(FASHION_MNIST_LABELS), str(folder)
    else:
        hub_name = HUB_NAMES.get(name, name)
        logger.info("Loading %s with datasets.load_dataset(%r)", name, hub_name)
        train, evaluation, label_names = load_hub_splits(
            hub_name, config_name, max_train_samples, max_eval_samples, image_size, subset_seed
        )
        source = hub_name

    train_images, train_labels = train
    eval_images, eval_labels = evaluation
    if image_size is not None:
        train_images, eval_images = resize_images(train_images, image_size), resize_images(eval_images, image_size)
    mean, std = normalization if normalization is not None else _channel_stats(train_images)
    default_augmentation, default_padding = _default_augmentation(name, train_images.shape[-1])
    augmentation = default_augmentation if augmentation == "auto" else augmentation
    padding = default_padding if crop_padding is None else crop_padding
    if "crop" in augmentation and padding < 1:
        padding = max(math.ceil(train_images.shape[-1] / 8), 1)
    return ImageSplits(
        train=TensorImageDataset(train_images, train_labels, mean, std, augmentation, padding),
        eval=TensorImageDataset(eval_images, eval_labels, mean, std, "none", padding),
        label_names=label_names,
        source=source,
    )
