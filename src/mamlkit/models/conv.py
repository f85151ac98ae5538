"""The paper's few-shot classifiers (§5.2, official cbfinn/maml code)."""

from torch import nn

from mamlkit.models.layers import GlobalMean, TransductiveBatchNorm
from mamlkit.models.mlp import mlp


def conv_block(in_channels: int, out_channels: int, max_pool: bool) -> nn.Sequential:
    """3×3 conv, BatchNorm, ReLU, then 2×2 max-pool (MiniImagenet) or a stride-2 conv (Omniglot)."""
    stride, pool = (1, [nn.MaxPool2d(2)]) if max_pool else (2, [])
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                         TransductiveBatchNorm(out_channels), nn.ReLU(), *pool)


def omniglot_conv(ways: int, filters: int = 64, channels: int = 1, max_pool: bool = False) -> nn.Sequential:
    """4 blocks of stride-2 convs (28 → 14 → 7 → 4 → 2), or with ``max_pool`` of stride-1 convs and
    2×2 max-pooling (28 → 14 → 7 → 3 → 1: MAML++'s Omniglot network), global mean over space, linear."""
    blocks = [conv_block(channels if i == 0 else filters, filters, max_pool) for i in range(4)]
    return nn.Sequential(*blocks, GlobalMean(), nn.Linear(filters, ways))


def miniimagenet_conv(ways: int, filters: int = 32, channels: int = 3, size: int = 84) -> nn.Sequential:
    """4 blocks with 2×2 max-pool (84 → 42 → 21 → 10 → 5), flatten, linear."""
    blocks = [conv_block(channels if i == 0 else filters, filters, max_pool=True) for i in range(4)]
    side = size
    for _ in range(4):
        side //= 2
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters * side * side, ways))


def omniglot_mlp(ways: int, pixels: int = 28 * 28) -> nn.Sequential:
    """The paper's no-convolution baseline: 256-128-64-64 with BatchNorm and ReLU, then linear."""
    return nn.Sequential(nn.Flatten(), mlp((pixels, 256, 128, 64, 64, ways), norm=TransductiveBatchNorm))
