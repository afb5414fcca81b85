"""The MLP and the CNNs: ``MLP``, ``LeNet``, ``CNN1d`` and ``DSCNN`` (depthwise-separable)."""

from __future__ import annotations

from torch import Tensor, nn

from labkit.models.configs import CNN1dConfig, DSCNNConfig, LeNetConfig, MLPConfig

# --------------------------------------------------------------------------- CNNs and MLP


class MLP(nn.Module):
    """Fully connected classifier on flattened inputs. Example: ``MLP()(X)  # (B, 10)``"""

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MLPConfig()
        layers: list[nn.Module] = [nn.Flatten()]
        width = config.in_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, *input_shape) -> (B, num_classes)


class LeNet(nn.Module):
    """LeNet-style CNN for (B, C, S, S) images. Example: ``LeNet()(torch.rand(2, 1, 8, 8))``"""

    def __init__(self, config: LeNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LeNetConfig()
        features: list[nn.Module] = []
        channels, size = config.in_channels, config.image_size
        for out in config.channels:
            features += [nn.Conv2d(channels, out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = out, size // 2
        self.features = nn.Sequential(*features)
        head: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for hidden in config.hidden:
            head += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        head.append(nn.Linear(width, config.num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, C_last, S / 2**len(channels), same)
        return self.classifier(x)  # (B, num_classes)


class CNN1d(nn.Module):
    """1-D CNN for (B, C, L) signals such as MNIST-1D. Example: ``CNN1d()(torch.rand(2, 1, 40))``"""

    def __init__(self, config: CNN1dConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CNN1dConfig()
        layers: list[nn.Module] = []
        channels, length, k = config.in_channels, config.length, config.kernel_size
        for out in config.channels:
            conv = nn.Conv1d(channels, out, k, stride=2, padding=k // 2, bias=False)
            layers += [conv, nn.BatchNorm1d(out), nn.ReLU()]
            channels, length = out, (length - 1) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * length, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, C_last, L / 2**len(channels))
        return self.head(x.flatten(1))  # (B, num_classes)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` as a Sequential (0, 1, 2: easy to fuse)."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())


class DSBlock(nn.Module):
    """Depthwise 3x3 conv (one filter per channel), then pointwise 1x1 conv mixing channels."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = _conv_bn_relu(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.depthwise(x)  # (B, C_in, H / stride, W / stride)
        return self.pointwise(x)  # (B, C_out, H / stride, W / stride)


class DSCNN(nn.Module):
    """MobileNet-style CNN for (B, C, S, S) images. Example: ``DSCNN()(torch.rand(2, 1, 8, 8))``"""

    def __init__(self, config: DSCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DSCNNConfig()
        chans = config.channels
        self.stem = _conv_bn_relu(config.in_channels, chans[0], 3)
        self.blocks = nn.Sequential(*[DSBlock(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, C_0, S, S)
        x = self.blocks(x)  # (B, C_last, S / 2**(len(channels) - 1), same)
        x = self.pool(x).flatten(1)  # (B, C_last)
        return self.head(x)  # (B, num_classes)
