"""Dreamer's convolutional encoder and decoder for 64 × 64 images: four stride-2 convolutions down
to a feature vector, a linear layer and four stride-2 transposed convolutions back up."""

from __future__ import annotations

from torch import Tensor, nn

from elbox._validation import check_positive_int, describe

__all__ = ["IMAGE_SIZE", "ConvDecoder", "ConvEncoder", "flat_size", "image_shape"]

#: The side of the images both networks take and give.
IMAGE_SIZE = 64

_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}


def _activation(name: str) -> type[nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; received {name!r}")
    return _ACTIVATIONS[name]


def image_shape(x: Tensor, channels: int, name: str = "x") -> None:
    """Checks that ``x`` is ``[..., channels, 64, 64]``; the error names the shape received."""
    if x.dim() < 3 or tuple(x.shape[-3:]) != (channels, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{name} must be images [..., {channels}, {IMAGE_SIZE}, {IMAGE_SIZE}] (channels first, "
                         f"{IMAGE_SIZE} × {IMAGE_SIZE} pixels); received {describe(x)}")  # fmt: skip


class ConvEncoder(nn.Module):
    r"""Images ``[..., C, 64, 64]`` to features ``[..., out_features]``: four 4 × 4 convolutions of
    stride 2 and depths ``depth·(1, 2, 4, 8)``, each followed by the activation, without padding
    (64 → 31 → 14 → 6 → 2), flattened: ``out_features = 8·depth·2·2 = 32·depth`` (1,024 for
    Dreamer's depth 32).

    References:
        Dream to Control: Learning Behaviors by Latent Imagination (Hafner et al., 2020),
        https://arxiv.org/abs/1912.01603

    Example:
        >>> encoder = ConvEncoder(channels=3, depth=8)
        >>> encoder(torch.rand(5, 2, 3, 64, 64)).shape
        torch.Size([5, 2, 256])
    """

    def __init__(self, channels: int = 3, depth: int = 32, activation: str = "relu"):
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.depth = check_positive_int(depth, "depth")
        act = _activation(activation)
        layers: list[nn.Module] = []
        width = self.channels
        for multiple in (1, 2, 4, 8):
            layers += [nn.Conv2d(width, multiple * self.depth, kernel_size=4, stride=2), act()]
            width = multiple * self.depth
        self.net = nn.Sequential(*layers)
        side = IMAGE_SIZE
        for _ in range(4):
            side = (side - 4) // 2 + 1
        self.out_features = width * side * side  # 8 depth · 2 · 2 = 32 depth

    def forward(self, x: Tensor) -> Tensor:
        image_shape(x, self.channels)
        batch = x.shape[:-3]
        out = self.net(x.reshape(-1, self.channels, IMAGE_SIZE, IMAGE_SIZE))  # [n, 8 depth, 2, 2]
        return out.reshape(*batch, self.out_features)  # [..., 32 depth]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, depth={self.depth}, out_features={self.out_features}"


class ConvDecoder(nn.Module):
    r"""Features ``[..., in_features]`` to the mean of images ``[..., C, 64, 64]``: a linear layer
    to ``32·depth`` features read as a 1 × 1 image, then transposed convolutions of stride 2 and
    kernels 5, 5, 6, 6 with depths ``depth·(4, 2, 1)`` and then C (1 → 5 → 13 → 30 → 64), the
    activation between them and none after the last.

    References:
        Dream to Control: Learning Behaviors by Latent Imagination (Hafner et al., 2020),
        https://arxiv.org/abs/1912.01603

    Example:
        >>> decoder = ConvDecoder(30, channels=3, depth=8)
        >>> decoder(torch.randn(4, 30)).shape
        torch.Size([4, 3, 64, 64])
    """

    def __init__(self, in_features: int, channels: int = 3, depth: int = 32, activation: str = "relu"):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.channels = check_positive_int(channels, "channels")
        self.depth = check_positive_int(depth, "depth")
        act = _activation(activation)
        self.linear = nn.Linear(self.in_features, 32 * self.depth)
        widths = (32 * self.depth, 4 * self.depth, 2 * self.depth, self.depth, self.channels)
        layers: list[nn.Module] = []
        for i, kernel in enumerate((5, 5, 6, 6)):
            layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=kernel, stride=2))
            if i < 3:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() < 1 or features.shape[-1] != self.in_features:
            raise ValueError(f"features must be [..., in_features] = [..., {self.in_features}]; received "
                             f"{describe(features)}")  # fmt: skip
        batch = features.shape[:-1]
        h = self.linear(features.reshape(-1, self.in_features))  # [n, 32 depth]
        out = self.net(h.reshape(-1, 32 * self.depth, 1, 1))  # [n, C, 64, 64]
        return out.reshape(*batch, self.channels, IMAGE_SIZE, IMAGE_SIZE)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, channels={self.channels}, depth={self.depth}"


def flat_size(channels: int) -> int:
    """The size of one flattened image of ``channels`` channels, ``channels · 64 · 64``."""
    return channels * IMAGE_SIZE * IMAGE_SIZE

