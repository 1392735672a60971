"""The vision track: models (every config builds and trains a step; architectures match their
published sizes), data pipelines (real MNIST files; generated CIFAR / ImageFolder directories in
the real on-disk formats), exact resume with augmentation, and the Figure 4 / 7 / ImageNet
artifacts at smoke scale."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from suite_helpers import compose_config, metrics, subprocess_env

from amm.config import CONFIG_DIR
from amm.data.vision import (
    CIFAR_STATS,
    MNIST_FILES,
    CIFARData,
    ImageNetData,
    MNISTData,
)
from amm.models.vision import ImageClassifier, cifar_resnet
from amm.optim import build_optimizer
from amm.trainer import train
from experiments import figure_imagenet
from experiments.reproduce import expand_jobs, sweep_blocks

# Class counts of the MNIST test set (shared/data/mnist_t10k/PROVENANCE.md).
MNIST_T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _offline(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest.offline (stand-in data sets go to its cache), single process."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist_t10k"
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST files not found in {path}")
    return path


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> MNISTData:
    return MNISTData(root=mnist_dir, batch_size=128)


def fingerprints(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images]


def epoch(data: object, ep: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """All batches of one epoch, concatenated."""
    batches = list(data.train_batches(ep, rank=rank, world_size=world_size))  # type: ignore[attr-defined]
    return {k: torch.cat([b[k] for b in batches]) for k in ("image", "label")}


# ---- models --------------------------------------------------------------------------------

# (config, input shape of the one training step, classes, parameters with the paper's classes).
# The sizes are the published ones: CIFAR ResNet-18 11.17M, ResNet-50 23.52M, VGG-19-BN 20.04M,
# WRN-40-10 55.84M (10 classes); torchvision ResNet-18 11.69M, ResNet-50 25.56M (1000 classes).
MODELS = {
    "resnet18_cifar": ([3, 16, 16], 10, 11_173_962),
    "resnet50_cifar": ([3, 16, 16], 10, 23_520_842),
    "vgg19_cifar": ([3, 32, 32], 10, 20_040_522),
    "wrn40_10": ([3, 16, 16], 10, 55_841_754),
    "resnet18_imagenet": ([3, 32, 32], 1000, 11_689_512),
    "resnet50_imagenet": ([3, 32, 32], 1000, 25_557_032),
    "resnet_small": ([1, 28, 28], 10, 77_562),
}


# the large ones (over 20 M parameters) are slow on a CPU
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow] if MODELS[n][2] > 20e6 else [])
        for n in sorted(MODELS)
    ],
)
def test_model_config_builds_and_trains_one_step(name: str) -> None:
    shape, classes, n_params = MODELS[name]
    cfg = compose_config([f"model={name}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, info={"num_classes": classes, "image_shape": shape})
    assert isinstance(model, ImageClassifier)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert not model.channels_last  # "auto": only with a GPU

    batch = {"image": torch.randn(2, *shape), "label": torch.tensor([0, classes - 1])}
    optimizer = build_optimizer(model, "am_sgd", lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss, metrics_ = model(batch)
    loss.backward()
    optimizer.step()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert 0.0 <= float(metrics_["accuracy"]) <= 1.0
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert all(changed)  # every parameter gets a gradient and moves


def test_cross_entropy_and_accuracy() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    loss, m = ImageClassifier(Fixed(), channels_last=False)({"image": logits, "label": labels})
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert m["accuracy"].item() == pytest.approx(2 / 3)


def test_channels_last_gives_the_same_outputs() -> None:
    info = {"num_classes": 10, "image_shape": [3, 16, 16]}
    torch.manual_seed(0)
    plain = cifar_resnet(info, channels_last=False).eval()
    nhwc = cifar_resnet(info, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    batch = {"image": torch.randn(2, 3, 16, 16), "label": torch.tensor([1, 2])}
    with torch.no_grad():
        assert nhwc(batch)[0].item() == pytest.approx(plain(batch)[0].item(), rel=1e-4)


# ---- MNIST: the real IDX files -------------------------------------------------------------


def test_mnist_split_of_the_test_set(mnist: MNISTData) -> None:
    info = mnist.info
    assert (info["n_train"], info["n_eval"], info["num_classes"]) == (8000, 2000, 10)
    assert info["image_shape"] == [1, 28, 28]
    assert info["steps_per_epoch"] == 63  # ceil(8000 / 128): the last batch is smaller
    train_x = torch.stack([s[0] for s in mnist.train_set.base])
    train_y = torch.tensor([s[1] for s in mnist.train_set.base])
    val_x = torch.stack([s[0] for s in mnist.eval_set.base])
    val_y = torch.tensor([s[1] for s in mnist.eval_set.base])
    # together exactly the 10k test set, no image in both parts
    counts = torch.bincount(torch.cat([train_y, val_y]), minlength=10).tolist()
    assert counts == MNIST_T10K_COUNTS
    assert not set(fingerprints(train_x)) & set(fingerprints(val_x))
    # normalised with the MNIST training-set statistics: close to zero mean and unit std here
    assert abs(train_x.mean().item()) < 0.05 and abs(train_x.std().item() - 1) < 0.05
    assert train_x.min().item() == pytest.approx(-0.1307 / 0.3081, rel=1e-5)


def test_mnist_batches_and_deterministic_epochs(mnist: MNISTData) -> None:
    first = next(mnist.train_batches(0))
    assert first["image"].shape == (128, 1, 28, 28) and first["image"].dtype == torch.float32
    assert first["label"].dtype == torch.int64
    rng = torch.get_rng_state()
    a, again, other = epoch(mnist, 3), epoch(mnist, 3), epoch(mnist, 4)
    assert torch.equal(torch.get_rng_state(), rng)  # the trainer's RNG stream is untouched
    assert torch.equal(a["image"], again["image"]) and torch.equal(a["label"], again["label"])
    assert not torch.equal(a["label"], other["label"])  # reshuffled every epoch
    assert sorted(fingerprints(a["image"])) == sorted(fingerprints(other["image"]))
    assert len(a["label"]) == 8000  # every training image once
    (val,) = list(mnist.eval_batches())[:1]
    assert val["image"].shape == (1000, 1, 28, 28)
    assert 0 <= int(val["label"].min()) and int(val["label"].max()) <= 9


def test_distributed_shards_are_disjoint_and_cover_the_epoch(mnist: MNISTData) -> None:
    shards = [epoch(mnist, 2, rank=r, world_size=2) for r in (0, 1)]
    assert len(next(mnist.train_batches(2, rank=1, world_size=2))["label"]) == 64  # 128 / 2
    ids = [fingerprints(s["image"]) for s in shards]
    assert len(ids[0]) == len(ids[1]) == 4000
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(fingerprints(epoch(mnist, 2)["image"]))
    assert mnist.steps_per_epoch(2) == 63
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        mnist.steps_per_epoch(3)


def test_mnist_torchvision_layout_and_plain_files(mnist_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"  # torchvision.datasets.MNIST's layout, uncompressed
    raw.mkdir(parents=True)
    for name in MNIST_FILES["t10k"]:
        with gzip.open(mnist_dir / f"{name}.gz") as src:
            (raw / name).write_bytes(src.read())
    data = MNISTData(root=tmp_path, n_train=1000, n_val=500)
    reference = MNISTData(root=mnist_dir, n_train=1000, n_val=500)
    assert (data.info["n_train"], data.info["n_eval"]) == (1000, 500)
    assert torch.equal(epoch(data, 0)["image"], epoch(reference, 0)["image"])


def test_mnist_missing_files_say_what_to_do(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Set dataset.root"):
        MNISTData(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        MNISTData(root=mnist_dir, split="official")  # the shared folder has no training files


# ---- CIFAR: generated directories in the real format ------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_stand_in_reads_through_torchvision(name: str, tmp_path: Path) -> None:
    data = CIFARData(name=name, stand_in=True, batch_size=16, eval_batch_size=32, num_workers=0)
    classes = 10 if name == "cifar10" else 100
    assert data.info["num_classes"] == classes and data.info["stand_in"]
    assert (data.info["n_train"], data.info["n_eval"], data.info["steps_per_epoch"]) == (80, 32, 5)
    folder = next((tmp_path / "amm-cache" / "stand-in").glob(f"{name}-*"))
    files = sorted(p.name for p in next(folder.iterdir()).iterdir())
    expected = ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    assert files == (expected if name == "cifar10" else ["meta", "test", "train"])

    batch = next(data.train_batches(0))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    labels = torch.cat([b["label"] for b in data.train_batches(0)])
    assert 0 <= int(labels.min()) and int(labels.max()) < classes

    # eval: normalisation only, with the data set's own statistics
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in CIFAR_STATS[name])
    raw = torch.from_numpy(data.eval_set.base.data[3]).permute(2, 0, 1).float() / 255
    assert torch.allclose(data.eval_set[3]["image"], (raw - mean) / std, atol=1e-6)


def test_cifar_train_augmentation_is_a_padded_crop_and_flip() -> None:
    data = CIFARData(stand_in=True, num_workers=0)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in CIFAR_STATS["cifar10"])
    seen = set()
    for index in range(6):
        for ep in range(4):
            data.train_set.epoch = ep
            image = data.train_set[index]["image"]
            assert torch.equal(data.train_set[index]["image"], image)  # a function of (ep, index)
            out = image * std + mean  # back to [0, 1] pixels
            raw = torch.from_numpy(data.train_set.base.data[index]).permute(2, 0, 1).float() / 255
            padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))  # RandomCrop pads with zeros
            matches = [
                (i, j, flip)
                for flip in (False, True)
                for i in range(9)
                for j in range(9)
                if torch.allclose(
                    (padded.flip(-1) if flip else padded)[:, i : i + 32, j : j + 32], out, atol=1e-5
                )
            ]
            assert matches, (index, ep)
            seen.add(matches[0])
    assert len(seen) > 6 and any(flip for *_, flip in seen)  # random offsets and flips


def test_workers_give_the_same_batches_as_the_main_process() -> None:
    main = CIFARData(stand_in=True, batch_size=16, num_workers=0)
    workers = CIFARData(stand_in=True, batch_size=16, num_workers=2)
    a, b = epoch(main, 1), epoch(workers, 1)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], epoch(main, 2)["image"])


def test_missing_cifar_offline_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*AMM_OFFLINE='1'"):
        CIFARData(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="allow_download=False"):
        CIFARData(name="cifar100", root=tmp_path, allow_download=False)


# ---- ImageNet: a generated ImageFolder tree -----------------------------------------------------


def test_imagefolder_stand_in(tmp_path: Path) -> None:
    data = ImageNetData(stand_in=True, image_size=32, resize_size=36, batch_size=8, num_workers=0)
    info = data.info
    assert (info["num_classes"], info["n_train"], info["n_eval"]) == (4, 32, 16)
    assert info["image_shape"] == [3, 32, 32] and info["steps_per_epoch"] == 4
    batches = list(data.train_batches(0))
    assert [b["image"].shape for b in batches] == [(8, 3, 32, 32)] * 4
    assert sorted(torch.cat([b["label"] for b in batches]).tolist()) == sorted(list(range(4)) * 8)
    (val,) = list(data.eval_batches())[:1]
    assert val["image"].shape[1:] == (3, 32, 32)
    assert torch.equal(epoch(data, 1)["image"], epoch(data, 1)["image"])


def test_missing_imagenet_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot be downloaded automatically"):
        ImageNetData(root=tmp_path)


# ---- trainer: exact resume with augmentation ---------------------------------------------------


@pytest.mark.slow
def test_resume_mid_epoch_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    """Stop after step 6 (inside epoch 2 of 5-step epochs), resume to 10: same records."""
    overrides = [
        "experiment=figure7",
        "dataset.stand_in=true",
        "model=resnet_small",
        "dataset.batch_size=16",
        "trainer.progress=false",
    ]
    train(compose_config([*overrides, "trainer.max_steps=10"]), tmp_path / "full")
    train(compose_config([*overrides, "trainer.max_steps=6"]), tmp_path / "resumed")
    (tmp_path / "resumed" / "summary.json").unlink()  # as if stopped there
    train(compose_config([*overrides, "trainer.max_steps=10"]), tmp_path / "resumed")
    full, resumed = metrics(tmp_path / "full"), metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 11))
    # step 6 was the short run's last step, evaluated there; every other record is the same
    assert [r for r in resumed if r["step"] != 6] == [r for r in full if r["step"] != 6]
    assert resumed[-1]["epoch"] == 1 and "eval_accuracy" in resumed[-1]


# ---- artifacts ----------------------------------------------------------------------------------


def reproduce(artifact: str, tmp_path: Path) -> Path:
    cmd = [sys.executable, "-m", "experiments.reproduce", artifact, "--scale", "smoke"]
    cmd.append("trainer.progress=false")
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out_dir = tmp_path / "results" / artifact / "smoke"
    for name in (artifact, *(["figure4_beta"] if artifact == "figure4" else [])):
        png = out_dir / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert (out_dir / f"{name}.pdf").stat().st_size > 1_000
    assert json.loads((out_dir / "provenance.json").read_text())["run_dirs"]
    return out_dir


@pytest.mark.slow
def test_figure4_smoke(tmp_path: Path) -> None:
    out_dir = reproduce("figure4", tmp_path)
    table = (out_dir / "table.md").read_text()
    assert "SMOKE PLUMBING CHECK" in table  # stand-in data is labelled as such
    main, paired = table.split("Paired differences")
    rows = [line for line in main.splitlines() if "(stand-in) |" in line]
    assert len(rows) == 4  # 2 data sets x (AM-MGD, MGD)
    for row in rows:
        _, setting, method, *cells, _ = row.split("|")
        assert method.strip() in {"AM-MGD", "MGD"}
        # one seed at smoke scale: each cell is "value (n=1)"
        assert all(c.strip().endswith(" (n=1)") for c in cells)
        final, best, loss = (float(c.split()[0]) for c in cells)
        assert 0 <= final <= best <= 100 and loss > 0
    # one paired AM-MGD − MGD row per data set (no interval from one seed)
    assert len([line for line in paired.splitlines() if "(stand-in) |" in line]) == 2
    assert "(n=1, no interval)" in paired
    runs = sorted((tmp_path / "runs" / "figure4" / "smoke").glob("*/summary.json"))
    assert len(runs) == 4
    cfg = OmegaConf.load(runs[0].parent / "config.yaml")
    assert cfg.dataset.stand_in and cfg.trainer.scheduler.name == "step"


@pytest.mark.slow
def test_figure7_smoke(tmp_path: Path) -> None:
    out_dir = reproduce("figure7", tmp_path)
    assert (out_dir / "figure7c_curves.png").stat().st_size > 10_000
    table = (out_dir / "table.md").read_text()
    assert "SMOKE PLUMBING CHECK" in table
    sections = [line for line in table.splitlines() if line.startswith("## 7")]
    assert [s[:5] for s in sections] == ["## 7a", "## 7b", "## 7c"]
    # 7c: both methods at both learning rates (lam and batch size at their defaults)
    c7, working = table.split("## 7c")[1].split("Working range")
    values = [
        line.split("|")[1].strip()
        for line in c7.splitlines()
        if line.startswith("| ") and "acc" not in line
    ]
    assert values == ["0.1", "1"]
    assert "90% of the grid's best run" in working and "| AM-MGD − MGD (paired) |" in working


@pytest.mark.slow
def test_figure_imagenet_smoke_artifact(tmp_path: Path) -> None:
    """The smoke jobs in-process (reproduce's subprocess path is tested by the two above)."""
    base = ["experiment=figure_imagenet", "scale=smoke", "trainer.progress=false"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        blocks = sweep_blocks("figure_imagenet", "smoke")  # stand-in data; AM-MGD, MGD
    run_dirs = []
    for i, job in enumerate(job for b in blocks for job in expand_jobs([*base, *b])):
        run_dirs.append(tmp_path / f"run{i}")
        summary = train(compose_config(job), run_dirs[-1])
        assert summary["step"] == 8 and np.isfinite(summary["loss"])
    figure_imagenet.make(run_dirs, tmp_path / "out", "smoke")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "SMOKE PLUMBING CHECK" in table
    assert "| ResNet-18 / ImageNet (stand-in) | AM-MGD |" in table
    assert "| ResNet-18 / ImageNet (stand-in) | MGD |" in table
    assert (tmp_path / "out" / "figure_imagenet.png").stat().st_size > 10_000
