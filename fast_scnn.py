"""Fast-SCNN semantic segmentation network, written for this repository.

Fast-SCNN is the real-time segmentation model described in
"Fast-SCNN: Fast Semantic Segmentation Network" by Rudra P. K. Poudel,
Stephan Liwicki and Roberto Cipolla (BMVC 2019). It shares a single
"learning to downsample" stem between a high-resolution spatial branch and a
low-resolution context branch, which keeps the whole network around 1.1 M
parameters.

Stage layout (resolutions relative to the input):

1. ``learning_to_downsample`` (1/8, 64 ch): conv 3x3 s2 -> 32, then two
   depthwise-separable convs s2 -> 48 -> 64.
2. ``global_feature_extractor`` (1/32, 128 ch): MobileNetV2 inverted-residual
   bottlenecks (expansion 6) 64 -> 64 (s2), 64 -> 96 (s2), 96 -> 128 (s1),
   three blocks each, followed by a pyramid pooling module (bins 1, 2, 3, 6).
3. ``feature_fusion`` (1/8, 128 ch): the context branch is upsampled to the
   spatial branch's actual size, refined by a depthwise conv, projected, and
   added to the projected spatial branch.
4. ``classifier``: two depthwise-separable convs, dropout and a 1x1 conv to
   the class logits, which are upsampled bilinearly to the input size.

With ``aux=True`` two auxiliary heads (on the stem and on the global feature
extractor outputs) are added for deep supervision during training; they are
only returned in training mode.

Every conv + BatchNorm pair is built as ``nn.Sequential(Conv2d, BatchNorm2d,
[ReLU])`` so a generic BN-folding pass can fuse them for inference.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(
    in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv2d (no bias, BN supplies it) + BatchNorm2d, optionally + ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.depthwise = conv_bn(in_ch, in_ch, 3, stride=stride, groups=in_ch)
        self.pointwise = conv_bn(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: expand 1x1, depthwise 3x3, linear project 1x1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expansion: int = 6):
        super().__init__()
        hidden = in_ch * expansion
        # The skip only makes sense when the shapes match exactly.
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = conv_bn(in_ch, hidden, 1)
        self.depthwise = conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
        # Linear bottleneck: no ReLU after the projection keeps information
        # in the low-dimensional output.
        self.project = conv_bn(hidden, out_ch, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


def bottleneck_stage(in_ch: int, out_ch: int, num_blocks: int, stride: int, expansion: int = 6) -> nn.Sequential:
    """Stack of inverted residuals; only the first block changes stride/width."""
    blocks = [InvertedResidual(in_ch, out_ch, stride, expansion)]
    blocks += [InvertedResidual(out_ch, out_ch, 1, expansion) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class PyramidPooling(nn.Module):
    """PSPNet-style pyramid pooling: multi-scale context for the 1/32 map."""

    def __init__(self, in_ch: int, out_ch: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        branch_ch = in_ch // 4
        # Registered as a ModuleList so the branch weights are trained, saved
        # and moved between devices with the rest of the model.
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn(in_ch, branch_ch, 1)) for b in bins
        )
        self.project = conv_bn(in_ch + branch_ch * len(bins), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.branches]
        return self.project(torch.cat([x] + pooled, dim=1))


class LearningToDownsample(nn.Module):
    """Shared stem: input -> 64 channels at 1/8 resolution."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv = conv_bn(in_channels, 32, 3, stride=2)
        self.dsconv1 = DepthwiseSeparableConv(32, 48, stride=2)
        self.dsconv2 = DepthwiseSeparableConv(48, 64, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsconv2(self.dsconv1(self.conv(x)))


class GlobalFeatureExtractor(nn.Module):
    """Low-resolution context branch: 64 ch at 1/8 -> 128 ch at 1/32."""

    def __init__(self):
        super().__init__()
        self.bottlenecks = nn.Sequential(
            bottleneck_stage(64, 64, 3, stride=2),
            bottleneck_stage(64, 96, 3, stride=2),
            bottleneck_stage(96, 128, 3, stride=1),
        )
        self.pyramid_pooling = PyramidPooling(128, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid_pooling(self.bottlenecks(x))


class FeatureFusion(nn.Module):
    """Merge the 1/8 spatial branch with the upsampled 1/32 context branch."""

    def __init__(self, high_ch: int = 64, low_ch: int = 128, out_ch: int = 128):
        super().__init__()
        self.low_depthwise = conv_bn(low_ch, low_ch, 3, groups=low_ch)
        # No ReLU before the sum so both branches contribute signed features.
        self.low_project = conv_bn(low_ch, out_ch, 1, relu=False)
        self.high_project = conv_bn(high_ch, out_ch, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        # Upsample to the real size of the high-res map rather than a fixed
        # x4, so inputs that are not multiples of 32 still line up.
        low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        low = self.low_project(self.low_depthwise(low))
        return self.relu(self.high_project(high) + low)


class Classifier(nn.Module):
    """Two depthwise-separable convs, dropout and a 1x1 conv to the logits."""

    def __init__(self, in_ch: int, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dsconv1 = DepthwiseSeparableConv(in_ch, in_ch)
        self.dsconv2 = DepthwiseSeparableConv(in_ch, in_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(in_ch, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(self.dsconv2(self.dsconv1(x))))


class AuxHead(nn.Module):
    """Small deep-supervision head used only during training."""

    def __init__(self, in_ch: int, n_classes: int, mid_ch: int = 32):
        super().__init__()
        self.conv = conv_bn(in_ch, mid_ch, 3)
        self.dropout = nn.Dropout(0.1)
        self.classify = nn.Conv2d(mid_ch, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.dropout(self.conv(x)))


class Model(nn.Module):
    """Fast-SCNN. Returns logits at the input resolution.

    In training mode with ``aux=True`` the forward pass returns
    ``(logits, aux_learning_to_downsample, aux_global_feature_extractor)``;
    otherwise it returns the logits tensor only. ``dropout``: the classifier's
    dropout probability (Fast-SCNN's 0.1; ``--dropout`` in the training scripts).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 19, aux: bool = False, dropout: float = 0.1):
        super().__init__()
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.aux = aux
        self.learning_to_downsample = LearningToDownsample(in_channels)
        self.global_feature_extractor = GlobalFeatureExtractor()
        self.feature_fusion = FeatureFusion(64, 128, 128)
        self.classifier = Classifier(128, n_classes, dropout)
        if aux:
            # Index 0: on the stem (64 ch); index 1: on the context branch.
            self.aux_heads = nn.ModuleList([AuxHead(64, n_classes), AuxHead(128, n_classes)])
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        size = x.shape[-2:]
        high = self.learning_to_downsample(x)
        low = self.global_feature_extractor(high)
        fused = self.feature_fusion(high, low)
        logits = F.interpolate(self.classifier(fused), size=size, mode="bilinear", align_corners=False)
        if not (self.aux and self.training):
            return logits
        aux_outputs = tuple(
            F.interpolate(head(feat), size=size, mode="bilinear", align_corners=False)
            for head, feat in zip(self.aux_heads, (high, low))
        )
        return (logits,) + aux_outputs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    net = Model().eval()
    print(f"parameters: {count_parameters(net):,}")
    with torch.no_grad():
        print("output:", tuple(net(torch.zeros(1, 3, 1024, 2048)).shape))
