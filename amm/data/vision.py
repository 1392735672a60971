"""Image-classification data modules (paper sec. 4.2, app. E.2) on torchvision datasets.

Every module follows docs/architecture.md section 2 and yields batches ``{"image", "label"}``:

- ``info``: ``dataset``, ``num_classes``, ``n_train``, ``n_eval``, ``image_shape`` (C, H, W after
  the transforms), ``batch_size`` (global, over all ranks) and ``steps_per_epoch`` (for that
  batch size and the ``WORLD_SIZE`` of the run).
- ``train_batches(epoch, rank, world_size)``: a ``DataLoader`` iterator over one epoch. The order
  comes from a ``DistributedSampler`` (also for one process: then it is a plain shuffle) seeded
  with ``seed + epoch``, and each sample's random augmentation from ``(seed, epoch, index)``, so
  an epoch's batches are a function of the epoch number: a resumed run sees the same data, with
  any number of loader workers, and the trainer's global RNG is never touched.
- ``eval_batches()``: the test (CIFAR, ImageNet val) or held-out validation (MNIST) loader.

Data sets: CIFAR-10/100 (torchvision files, downloaded when online), ImageNet (an ``ImageFolder``
tree with ``train/`` and ``val/``), MNIST (IDX files; the shared folder has only the 10k test set,
which ``split="t10k"`` divides into train and validation with a fixed seed).

Smoke stand-ins (``stand_in=True``): CIFAR and ImageNet cannot be on an offline CI machine, so
a smoke run may write a tiny generated directory in the real on-disk format (CIFAR pickle
batches, an ImageFolder tree of PNGs) and read it through the same torchvision classes and
transforms. They check the plumbing only; their numbers mean nothing.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.transforms import v2

from amm.paths import OFFLINE_ENV, cache_dir, data_dir, imagenet_dir, offline

if TYPE_CHECKING:
    from typing_extensions import Unpack

Batch = dict[str, torch.Tensor]

# Per-channel statistics of the training sets (pixels scaled to [0, 1]).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MNIST_STATS = ((0.1307,), (0.3081,))

STAND_IN_NOTE = "generated smoke stand-in (plumbing check only, not a result)"


def to_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Callable[..., Any]]:
    """PIL image -> normalised float tensor (C, H, W)."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


class Augmented(Dataset):
    """``(image, label)`` samples -> ``{"image", "label"}`` dicts through ``transform``.

    With ``random=True`` the transform runs under a private RNG seeded by
    ``(seed, epoch, index)``: the same sample gets the same crop and flip in the same epoch,
    in the main process or in any loader worker, and the global RNG is left as it was.
    Set ``epoch`` before creating the loader's iterator (workers copy the data set then).
    """

    def __init__(self, base: Any, transform: Callable[[Any], Any] | None, seed: int, random: bool):
        self.base, self.transform, self.seed, self.random = base, transform, seed, random
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.base[index]
        if self.transform is not None and self.random:
            # torchvision's random transforms draw from torch's default CPU generator; seed it
            # for this sample and put its state back (cheaper than torch.random.fork_rng).
            # SeedSequence mixes the three numbers into the 32 bits the generator keeps.
            seed = np.random.SeedSequence((self.seed, self.epoch, index)).generate_state(1)[0]
            generator = torch.default_generator
            state = generator.get_state()
            generator.manual_seed(int(seed))
            try:
                image = self.transform(image)
            finally:
                generator.set_state(state)
        elif self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": torch.tensor(label, dtype=torch.long)}


class LoaderOptions(TypedDict, total=False):
    """The loader keywords every data module below takes (the dataset configs' keys of the
    same names; each class's defaults: its ``loader_defaults``, then
    ``ImageClassificationData.__init__``'s)."""

    batch_size: int  # the global batch of one optimizer step (split over the ranks)
    eval_batch_size: int
    num_workers: int
    pin_memory: bool | None  # None: when a GPU is present
    seed: int  # the order and the augmentation of every epoch


class ImageClassificationData:
    """The shared loading logic; subclasses build the train and eval data sets and take the
    loader keywords as ``**loader: Unpack[LoaderOptions]``."""

    loader_defaults: ClassVar[LoaderOptions] = {}

    def __init__(
        self,
        name: str,
        train_set: Any,
        eval_set: Any,
        *,
        num_classes: int,
        train_transform: Callable[[Any], Any] | None,
        eval_transform: Callable[[Any], Any] | None,
        extra_info: dict[str, Any] | None = None,
        source_files: list[Path] | None = None,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        seed: int = 0,
    ) -> None:
        self.seed = int(seed)
        self._files = list(source_files or [])
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)
        # pinned host memory only helps copies to a GPU
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.train_set = Augmented(train_set, train_transform, self.seed, random=True)
        self.eval_set = Augmented(eval_set, eval_transform, self.seed, random=False)
        image_shape = list(self.eval_set[0]["image"].shape)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.info: dict[str, Any] = {
            "dataset": name,
            "task": "classification",
            "num_classes": int(num_classes),
            "n_train": len(self.train_set),
            "n_eval": len(self.eval_set),
            "image_shape": image_shape,
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch(world_size),
            **(extra_info or {}),
        }

    def rank_batch_size(self, world_size: int) -> int:
        """Per-rank batch: ``batch_size`` is the global batch of one optimizer step."""
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by world_size={world_size}"
            )
        return self.batch_size // world_size

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimizer steps in one epoch (the last batch may be smaller: nothing is dropped)."""
        per_rank_samples = math.ceil(len(self.train_set) / world_size)  # DistributedSampler pads
        return math.ceil(per_rank_samples / self.rank_batch_size(world_size))

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Any, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # draws the workers' base seed, which would otherwise come from the global RNG
            generator=torch.Generator().manual_seed(seed),
        )

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch of this rank's training batches (its shard of each global batch)."""
        sampler: DistributedSampler[Any] = DistributedSampler(
            self.train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed
        )
        sampler.set_epoch(epoch)  # the permutation is seeded by seed + epoch
        self.train_set.epoch = epoch
        loader = self._loader(
            self.train_set, self.rank_batch_size(world_size), sampler, self.seed + epoch
        )
        return iter(loader)

    def source_files(self) -> list[Path]:
        """The data files read (ImageNet: none, its 1.3M images would take too long to hash;
        its root is in the config)."""
        return list(self._files)

    def eval_batches(self) -> DataLoader:
        return self._loader(self.eval_set, self.eval_batch_size, None, self.seed)


# ---- CIFAR-10 / CIFAR-100 ---------------------------------------------------------------------

CIFAR_CLASSES = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


def _without_checksums(cls: type[datasets.CIFAR10]) -> type[datasets.CIFAR10]:
    """``cls`` reading the same file names without md5 checks (generated files differ)."""
    return type(
        f"StandIn{cls.__name__}",
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


def write_cifar_stand_in(name: str, root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A tiny CIFAR-format directory under ``root`` (pickled batches like the real files).

    Images are noise around a class-dependent colour, so a model can learn something, but
    nothing here is real data. Written to a temporary folder and renamed: concurrent runs
    never read half a directory.
    """
    cls = CIFAR_CLASSES[name]
    folder = root / cls.base_folder
    if folder.is_dir():
        return root
    num_classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, size=(num_classes, 3, 1, 1))

    def batch(n: int) -> dict[str, Any]:
        labels = rng.integers(0, num_classes, size=n)
        noise = rng.normal(0, 40, size=(n, 3, 32, 32))
        images = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
        out: dict[str, Any] = {"data": images.reshape(n, 3072), label_key: labels.tolist()}
        if name == "cifar100":
            out["coarse_labels"] = (labels // 5).tolist()
        return out

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".stand-in-"))
    files = {f: batch(math.ceil(n_train / len(cls.train_list))) for f, _ in cls.train_list}
    files.update({f: batch(n_test) for f, _ in cls.test_list})
    files[cls.meta["filename"]] = {cls.meta["key"]: [f"class_{k}" for k in range(num_classes)]}
    for file, content in files.items():
        with open(tmp / file, "wb") as fh:
            pickle.dump(content, fh)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote it first
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return root


class CIFARData(ImageClassificationData):
    """CIFAR-10 / CIFAR-100 (app. E.2): RandomCrop(32, padding=4) + horizontal flip +
    per-data-set normalisation for training; normalisation only for the test set.

    ``root`` holds ``cifar-10-batches-py`` / ``cifar-100-python`` (torchvision's layout); they are
    downloaded there when missing, unless ``allow_download=False`` or ``AMM_OFFLINE=1``.
    """

    loader_defaults: ClassVar[LoaderOptions] = {
        "batch_size": 128,
        "eval_batch_size": 1000,
        "num_workers": 4,
    }

    def __init__(
        self,
        name: str = "cifar10",
        root: str | os.PathLike[str] | None = None,  # None: amm.paths.data_dir()
        allow_download: bool = True,
        stand_in: bool = False,
        stand_in_size: tuple[int, int] = (80, 32),
        **loader: Unpack[LoaderOptions],
    ) -> None:
        if name not in CIFAR_CLASSES:
            raise ValueError(f"unknown CIFAR data set {name!r}; use cifar10 or cifar100")
        cls = CIFAR_CLASSES[name]
        if stand_in:
            n_train, n_test = stand_in_size
            root = write_cifar_stand_in(
                name, cache_dir() / "stand-in" / f"{name}-{n_train}-{n_test}", n_train, n_test
            )
            cls = _without_checksums(cls)
        else:
            root = data_dir(root)
        download = allow_download and not stand_in and not offline()
        try:
            train_set = cls(str(root), train=True, download=download)
            test_set = cls(str(root), train=False, download=False)
        except (RuntimeError, OSError) as err:  # missing / corrupt files, or no network
            raise FileNotFoundError(
                f"{name} not found (or corrupt) in {root}: expected torchvision's "
                f"{cls.base_folder}/ there. "
                + (
                    "Downloading failed; "
                    if download
                    else f"Downloading is off (allow_download={allow_download}, "
                    f"{OFFLINE_ENV}={os.environ.get(OFFLINE_ENV, '')!r}); "
                )
                + f"on a machine with internet run once with dataset.allow_download=true "
                f"(torchvision fetches {cls.url}), or copy the extracted folder there and set "
                f"dataset.root (or AMM_DATA_DIR). Error: {err}"
            ) from err
        mean, std = CIFAR_STATS[name]
        train_transform = v2.Compose(
            [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *to_tensor(mean, std)]
        )
        super().__init__(
            name,
            train_set,
            test_set,
            num_classes=len(train_set.classes),
            train_transform=train_transform,
            eval_transform=v2.Compose(to_tensor(mean, std)),
            source_files=sorted(p for p in (root / cls.base_folder).iterdir() if p.is_file()),
            extra_info={"stand_in": STAND_IN_NOTE} if stand_in else None,
            **(self.loader_defaults | loader),
        )


# ---- ImageNet ---------------------------------------------------------------------------------


def write_imagefolder_stand_in(
    root: Path, num_classes: int, per_class: tuple[int, int], seed: int = 0
) -> Path:
    """A tiny ImageFolder tree (``train/`` and ``val/``, PNGs of varying sizes) under ``root``."""
    if (root / "val").is_dir():
        return root
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".stand-in-"))
    for split, count in zip(("train", "val"), per_class):
        for k in range(num_classes):
            folder = tmp / split / f"n{k:08d}"  # WordNet-id-like folder names
            folder.mkdir(parents=True)
            colour = rng.integers(30, 226, size=3)
            for i in range(count):
                h, w = rng.integers(40, 72, size=2)
                pixels = np.clip(colour + rng.normal(0, 40, size=(h, w, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i}.png")
    try:
        os.replace(tmp / "train", root / "train")
        os.replace(tmp / "val", root / "val")
    except OSError:  # another process wrote it first; leave its tree
        pass
    return root


class ImageNetData(ImageClassificationData):
    """ImageNet from an ``ImageFolder`` tree ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Train: RandomResizedCrop(image_size) + horizontal flip; eval: Resize(resize_size) +
    CenterCrop(image_size) (app. E.2: 224 / 256); ImageNet mean and std for both.
    ImageNet cannot be downloaded automatically (its licence needs a login).
    """

    loader_defaults: ClassVar[LoaderOptions] = {
        "batch_size": 256,
        "eval_batch_size": 250,  # divides the 50,000 validation images
        "num_workers": 8,
    }

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,  # None: amm.paths.imagenet_dir()
        image_size: int = 224,
        resize_size: int = 256,
        stand_in: bool = False,
        stand_in_classes: int = 4,
        stand_in_size: tuple[int, int] = (8, 4),
        **loader: Unpack[LoaderOptions],
    ) -> None:
        if stand_in:
            n_train, n_val = stand_in_size
            tree = f"imagenet-{stand_in_classes}x{n_train}-{n_val}"
            root = write_imagefolder_stand_in(
                cache_dir() / "stand-in" / tree, stand_in_classes, (n_train, n_val)
            )
        root = Path(root).expanduser() if root is not None else imagenet_dir()
        if not ((root / "train").is_dir() and (root / "val").is_dir()):
            raise FileNotFoundError(
                f"ImageNet not found at {root}: expected an ImageFolder tree "
                f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (the validation images "
                "sorted into class folders, e.g. with the PyTorch examples' valprep script). "
                "ImageNet cannot be downloaded automatically; get it from image-net.org and set "
                "dataset.root (or AMM_IMAGENET_DIR)."
            )
        train_set = datasets.ImageFolder(str(root / "train"))
        val_set = datasets.ImageFolder(str(root / "val"))
        if train_set.class_to_idx != val_set.class_to_idx:
            raise ValueError(f"{root}: train/ and val/ have different class folders")
        mean, std = IMAGENET_STATS
        train_transform = v2.Compose(
            [
                v2.RandomResizedCrop(image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                *to_tensor(mean, std),
            ]
        )
        eval_transform = v2.Compose(
            [
                v2.Resize(resize_size, antialias=True),
                v2.CenterCrop(image_size),
                *to_tensor(mean, std),
            ]
        )
        super().__init__(
            "imagenet",
            train_set,
            val_set,
            num_classes=len(train_set.classes),
            train_transform=train_transform,
            eval_transform=eval_transform,
            extra_info={"stand_in": STAND_IN_NOTE} if stand_in else None,
            **(self.loader_defaults | loader),
        )


# ---- MNIST ------------------------------------------------------------------------------------

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_file(root: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``root`` or in torchvision's ``root/MNIST/raw``."""
    for folder in (root, root / "MNIST" / "raw"):
        for file in (folder / name, folder / f"{name}.gz"):
            if file.is_file():
                return file
    return None


def read_idx(path: Path, images: bool) -> torch.Tensor:
    """An IDX file (plain or gzipped) through torchvision's MNIST readers."""
    read = read_image_file if images else read_label_file
    if path.suffix != ".gz":
        return read(str(path))
    with tempfile.TemporaryDirectory() as tmp:  # torchvision's readers want a plain file
        plain = Path(tmp) / path.stem
        with gzip.open(path, "rb") as src:
            plain.write_bytes(src.read())
        return read(str(plain))


def load_mnist_split(
    root: Path, which: str, allow_download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the ``train`` or ``t10k`` files."""
    paths = [find_idx_file(root, f) for f in MNIST_FILES[which]]
    if None in paths and allow_download and not offline():
        # torchvision downloads all four files into root/MNIST/raw
        datasets.MNIST(str(root), train=which == "train", download=True)
        paths = [find_idx_file(root, f) for f in MNIST_FILES[which]]
    if None in paths:
        missing = [f for f, p in zip(MNIST_FILES[which], paths) if p is None]
        raise FileNotFoundError(
            f"MNIST IDX files {missing} (plain or .gz) not found in {root} or {root}/MNIST/raw. "
            "Set dataset.root to the folder holding them (the shared data folder's mnist_t10k "
            "has the 10k test set: AMM_DATA_DIR=/path/to/shared/data), or allow a download "
            f"(dataset.allow_download=true without {OFFLINE_ENV}=1) on a machine with internet."
        )
    image_file, label_file = paths
    assert image_file is not None and label_file is not None  # checked above
    return read_idx(image_file, images=True), read_idx(label_file, images=False)


class MNISTData(ImageClassificationData):
    """MNIST from the IDX files, normalised with the training-set mean and std, no augmentation.

    ``split="t10k"`` (the reduced scale; the shared folder has only the test set): the 10,000
    test images, shuffled with ``split_seed``; the first ``n_val`` are the validation set (the
    eval data), the rest the training set (``n_train`` of them when set). ``split="official"``:
    the 60,000 training images and the 10,000 test images.
    """

    loader_defaults: ClassVar[LoaderOptions] = {"batch_size": 128, "eval_batch_size": 1000}

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,  # None: <data dir>/mnist_t10k
        split: str = "t10k",
        n_val: int = 2000,
        n_train: int | None = None,
        split_seed: int = 0,
        allow_download: bool = True,
        **loader: Unpack[LoaderOptions],
    ) -> None:
        root = Path(root).expanduser() if root is not None else data_dir() / "mnist_t10k"
        which = ("t10k",) if split == "t10k" else ("train", "t10k")
        if split == "t10k":
            images, labels = load_mnist_split(root, "t10k", allow_download)
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
            val_idx, train_idx = order[:n_val], order[n_val:]
            train = (images[train_idx], labels[train_idx])
            val = (images[val_idx], labels[val_idx])
        elif split == "official":
            train = load_mnist_split(root, "train", allow_download)
            val = load_mnist_split(root, "t10k", allow_download)
        else:
            raise ValueError(f"unknown MNIST split {split!r}; use t10k or official")
        if n_train is not None:
            train = (train[0][:n_train], train[1][:n_train])
        mean, std = MNIST_STATS
        normalise = v2.Normalize(mean, std)

        def tensors(pair: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
            # normalised once, as (1, 28, 28) float tensors: there is no augmentation
            x = normalise(pair[0].unsqueeze(1).float() / 255)
            return list(zip(x, pair[1].tolist()))

        super().__init__(
            "mnist",
            tensors(train),
            tensors(val),
            num_classes=10,
            train_transform=None,
            eval_transform=None,
            extra_info={"split": split},
            source_files=[
                f for w in which for name in MNIST_FILES[w] if (f := find_idx_file(root, name))
            ],
            **(self.loader_defaults | loader),
        )
