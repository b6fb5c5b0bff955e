"""The built-in CNN family: a stem, stages of plain / residual / inverted-residual blocks, a linear head."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from compress.config import Strict


class CnnSpec(Strict):
    """Architecture of a built-in CNN (image classification)."""

    widths: list[int] = Field([32, 64], min_length=1, description="Output channels of each stage.")
    depths: list[int] | None = Field(None, description="Blocks per stage (default: 1 per stage).")
    kernel: int = Field(3, description="Convolution kernel size (odd).")
    block: Literal["plain", "resnet", "mbv2"] = Field(
        "resnet", description="Block type: conv-bn-relu, ResNet basic block, or MobileNetV2 inverted residual."
    )
    expansion: int = Field(4, ge=1, description="Expansion ratio of `mbv2` blocks.")
    stem: int | None = Field(None, gt=0, description="Stem channels (default: first stage width).")
    in_channels: int | None = Field(None, gt=0, description="Input channels (default: from the data).")
    num_classes: int | None = Field(None, gt=1, description="Classes (default: from the data).")

    @model_validator(mode="after")
    def _check(self) -> CnnSpec:
        if self.depths is not None and len(self.depths) != len(self.widths):
            raise ValueError(f"depths has {len(self.depths)} entries but widths has {len(self.widths)}")
        if self.kernel % 2 == 0 or self.kernel < 1:
            raise ValueError(f"kernel must be a positive odd number, got {self.kernel}")
        if any(w <= 0 for w in self.widths) or any(d <= 0 for d in self.depths or []):
            raise ValueError("widths and depths must be positive")
        return self


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PlainBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.body = _conv_bn(cin, cout, k, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualBlock(nn.Module):
    """ResNet basic block (two k x k convs) with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, k, stride), _conv_bn(cout, cout, k, act=False))
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else _conv_bn(cin, cout, 1, stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, k x k depthwise, 1x1 linear projection; identity skip when shapes match."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, k, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        )
        self.skip = cin == cout and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.skip else out


class CNN(nn.Module):
    """Stem, then ``len(widths)`` stages (the first block of every stage after the first has stride 2)."""

    def __init__(self, spec: CnnSpec) -> None:
        super().__init__()
        if spec.in_channels is None or spec.num_classes is None:
            raise ValueError("CnnSpec needs in_channels and num_classes resolved before building")
        depths = spec.depths or [1] * len(spec.widths)
        stem = spec.stem or spec.widths[0]
        self.stem = _conv_bn(spec.in_channels, stem, spec.kernel)
        stages: list[nn.Module] = []
        cin = stem
        for i, (width, depth) in enumerate(zip(spec.widths, depths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(self._block(spec, cin, width, stride))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, spec.num_classes)

    @staticmethod
    def _block(spec: CnnSpec, cin: int, cout: int, stride: int) -> nn.Module:
        if spec.block == "plain":
            return PlainBlock(cin, cout, spec.kernel, stride)
        if spec.block == "resnet":
            return ResidualBlock(cin, cout, spec.kernel, stride)
        return InvertedResidual(cin, cout, spec.kernel, stride, spec.expansion)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for stage in self.stages:
            x = stage(x)
        return self.head(torch.flatten(self.pool(x), 1))
