"""Image classifiers of the paper (sec. 4.2, app. E.2), built from a data module's ``info``.

Every builder returns an :class:`ImageClassifier`, whose ``forward(batch)`` takes
``{"image", "label"}`` and returns ``(cross-entropy loss, {"accuracy": ...})``.

- CIFAR ResNet-18 / ResNet-50: torchvision's ResNet with the usual CIFAR stem (3x3 conv,
  stride 1, no max-pool), so a 32x32 image keeps 32x32 features in the first stage.
- CIFAR VGG-19: torchvision's ``vgg19_bn`` features with the CIFAR head (the 1x1 feature map
  after five poolings goes straight into one linear layer).
- Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): not in torchvision, so written out below.
  WRN-40-10 is the paper's; WRN-10-1 (16/32/64 channels, one block per stage, 78k parameters)
  is the small ResNet of the MNIST reduced scale and of the smoke runs.
- ImageNet ResNet-18 / ResNet-50: torchvision's models as they are.

Compilation is the trainer's ``trainer.compile``; ``channels_last`` (default: when a GPU is
present) stores weights and inputs in NHWC, the fast layout for convolutions on GPUs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models


class ImageClassifier(nn.Module):
    """Wraps a network ``images -> logits`` into the suite's model contract."""

    def __init__(self, net: nn.Module, channels_last: bool | str = "auto") -> None:
        super().__init__()
        self.net = net
        if channels_last == "auto":
            channels_last = torch.cuda.is_available()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)  # .to(device) keeps the layout

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["image"], batch["label"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}


def _image_shape(info: dict[str, Any]) -> tuple[int, int, int]:
    channels, height, width = info["image_shape"]
    return int(channels), int(height), int(width)


def cifar_resnet(
    info: dict[str, Any], arch: str = "resnet18", channels_last: bool | str = "auto"
) -> ImageClassifier:
    """torchvision ``resnet18`` / ``resnet50`` with the CIFAR stem (3x3 conv, no max-pool)."""
    net = models.get_model(arch, weights=None, num_classes=int(info["num_classes"]))
    channels = _image_shape(info)[0]
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    net.maxpool = nn.Identity()
    return ImageClassifier(net, channels_last)


def cifar_vgg(
    info: dict[str, Any], arch: str = "vgg19_bn", channels_last: bool | str = "auto"
) -> ImageClassifier:
    """torchvision VGG features (with BN) and the CIFAR head: one linear layer on 512 features."""
    channels, height, width = _image_shape(info)
    if channels != 3 or min(height, width) < 32:
        raise ValueError(f"{arch} needs 3x32x32 (or larger) images, got {info['image_shape']}")
    net = models.get_model(arch, weights=None, num_classes=int(info["num_classes"]))
    net.avgpool = nn.AdaptiveAvgPool2d(1)  # 32x32 inputs leave a 1x1 map after five poolings
    net.classifier = nn.Linear(512, int(info["num_classes"]))
    nn.init.normal_(net.classifier.weight, 0, 0.01)  # torchvision's VGG init of linear layers
    nn.init.zeros_(net.classifier.bias)
    return ImageClassifier(net, channels_last)


def imagenet_resnet(
    info: dict[str, Any], arch: str = "resnet18", channels_last: bool | str = "auto"
) -> ImageClassifier:
    """torchvision ``resnet18`` / ``resnet50`` (ImageNet stem), randomly initialised."""
    if _image_shape(info)[0] != 3:
        raise ValueError(f"{arch} takes RGB images, got {info['image_shape']}")
    net = models.get_model(arch, weights=None, num_classes=int(info["num_classes"]))
    return ImageClassifier(net, channels_last)


# ---- Wide ResNet -----------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with identity shortcut,
    or a 1x1 conv on the pre-activated input when the shape changes (as in the WRN code)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k: a 3x3 stem with 16 channels, three stages of (depth - 4) / 6 blocks with
    16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU, global average pooling, linear."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = 16
        for width, stride in zip(widths, (1, 2, 2)):
            for i in range(blocks):
                layers.append(WideBasicBlock(in_planes, width, stride if i == 0 else 1, dropout))
                in_planes = width
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def wide_resnet(
    info: dict[str, Any],
    depth: int = 40,
    widen_factor: int = 10,
    dropout: float = 0.0,
    channels_last: bool | str = "auto",
) -> ImageClassifier:
    """WRN-depth-widen_factor for the data set's image channels and classes."""
    net = WideResNet(
        depth, widen_factor, int(info["num_classes"]), _image_shape(info)[0], dropout=dropout
    )
    return ImageClassifier(net, channels_last)
