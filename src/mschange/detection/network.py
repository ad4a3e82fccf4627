"""The change detector of To et al. (section 3.2, Fig. 2): a siamese 3D U-Net.

Each time point enters its own copy of the encoder (shared weights) with the
absolute difference image as a second channel: ``(x_baseline, |x_followup - x_baseline|)``
and ``(x_followup, |x_followup - x_baseline|)``. The two branches' features are fused
at every level (concatenated by default) and a decoder turns them into a change map.

Every ingredient the paper ablates (Table 1) is a switch of
:class:`DetectorArchitecture`:

- ``siamese``: two weight-sharing encoder branches, or one encoder that gets
  baseline, follow-up and difference as three channels (early fusion, the "U-net" rows);
- ``inception``: blocks of 3D Inception modules (1, 3 and 5 voxel filters and a
  pooling branch, with 1x1x1 reductions) instead of two 3x3x3 convolutions;
- ``attention_gates``: additive attention gates on the skip connections
  (Schlemper et al. 2019), gated by the coarser decoder features;
- ``multiscale_inputs``: the input, average-pooled, fed to every deeper encoder level;
- ``deep_supervision``: a 1x1x1 convolution on each intermediate decoder level, whose
  output gets its own loss on a downsampled label.

The network returns logits (sigmoid gives the change probability): the full
resolution map first, then one map per deeply supervised level, coarsest last.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("concat", "difference")
CHANGE_PRIOR_LOGIT = -4.595  # log(0.01 / 0.99)


@dataclass(frozen=True)
class DetectorArchitecture:
    siamese: bool = True
    fusion: str = "concat"  # how the two branches' features meet: concat | difference
    inception: bool = True
    attention_gates: bool = True
    multiscale_inputs: bool = True
    deep_supervision: bool = True
    channels: tuple[int, ...] = (16, 32, 64, 128)  # per level; the paper gives no sizes
    modules_per_block: int = 2  # Inception modules (or 3x3x3 convolutions) per block

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if len(self.channels) < 2:
            raise ValueError("the U-Net needs at least 2 levels (channels with 2+ entries)")
        if self.inception and any(c % 4 or c < 8 for c in self.channels):
            raise ValueError(
                f"Inception blocks need channels that are multiples of 4 and "
                f">= 8 (four branches), got {list(self.channels)}"
            )
        if self.modules_per_block < 1:
            raise ValueError("modules_per_block must be >= 1")

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def downsampling(self) -> int:
        """Input sizes must be multiples of this (2 to the number of poolings)."""
        return int(2 ** (self.levels - 1))

    @property
    def n_outputs(self) -> int:
        """Maps returned by ``forward``: the final one plus the deeply supervised ones."""
        return 1 + (self.levels - 2 if self.deep_supervision else 0)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["channels"] = list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectorArchitecture:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "channels" in known:
            known["channels"] = tuple(int(c) for c in known["channels"])
        return cls(**known)


def _norm(channels: int) -> nn.GroupNorm:
    # Group norm: batch statistics are meaningless at the paper's mini-batch of 2.
    return nn.GroupNorm(min(8, channels // 2) or 1, channels)


class ConvModule(nn.Sequential):
    """3x3x3 convolution, group norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
        )


class InceptionModule(nn.Module):
    """Four parallel branches (Szegedy et al. 2015, in 3D), concatenated.

    1x1x1; 1x1x1 reduction then 3x3x3; 1x1x1 reduction then 5x5x5; 3x3x3 max pooling
    then 1x1x1. Each branch gives a quarter of the output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        quarter = out_channels // 4
        reduced = max(4, quarter // 2)

        def reduce(width: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(in_channels, width, 1), nn.ReLU(inplace=True))

        self.branch1 = nn.Conv3d(in_channels, quarter, 1, bias=False)
        self.branch3 = nn.Sequential(
            reduce(quarter), nn.Conv3d(quarter, quarter, 3, padding=1, bias=False)
        )
        self.branch5 = nn.Sequential(
            reduce(reduced), nn.Conv3d(reduced, quarter, 5, padding=2, bias=False)
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool3d(3, stride=1, padding=1), nn.Conv3d(in_channels, quarter, 1, bias=False)
        )
        self.finish = nn.Sequential(_norm(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        fused: torch.Tensor = self.finish(torch.cat(branches, dim=1))
        return fused


def make_block(
    in_channels: int, out_channels: int, architecture: DetectorArchitecture
) -> nn.Sequential:
    module = InceptionModule if architecture.inception else ConvModule
    layers: list[nn.Module] = [module(in_channels, out_channels)]
    layers += [
        module(out_channels, out_channels) for _ in range(architecture.modules_per_block - 1)
    ]
    return nn.Sequential(*layers)


class AttentionGate(nn.Module):
    """Additive attention gate (Schlemper et al. 2019) on a skip connection.

    The skip features ``x`` are weighted voxel-wise by ``sigmoid(psi(relu(theta(x) +
    phi(g))))``, computed at the gating signal's (half) resolution and upsampled.
    """

    def __init__(self, skip_channels: int, gating_channels: int) -> None:
        super().__init__()
        inner = max(4, skip_channels // 2)
        self.theta = nn.Conv3d(skip_channels, inner, 2, stride=2, bias=False)
        self.phi = nn.Conv3d(gating_channels, inner, 1)
        self.psi = nn.Conv3d(inner, 1, 1)

    def coefficients(self, x: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        joint = F.relu(self.theta(x) + self.phi(gating))
        alpha = torch.sigmoid(self.psi(joint))
        return F.interpolate(alpha, size=x.shape[2:], mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, gating)


class Encoder(nn.Module):
    """The down-sampling path of one branch; returns the features of every level."""

    def __init__(self, in_channels: int, architecture: DetectorArchitecture) -> None:
        super().__init__()
        self.multiscale = architecture.multiscale_inputs
        channels = architecture.channels
        self.blocks = nn.ModuleList()
        self.input_convs = nn.ModuleList()
        for level, width in enumerate(channels):
            incoming = in_channels if level == 0 else channels[level - 1]
            if level > 0 and self.multiscale:
                # The downsampled input gets its own features, concatenated with the pooled ones.
                self.input_convs.append(ConvModule(in_channels, channels[level - 1]))
                incoming += channels[level - 1]
            self.blocks.append(make_block(incoming, width, architecture))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        current = x
        for level, block in enumerate(self.blocks):
            if level > 0:
                current = F.max_pool3d(features[-1], 2)
                if self.multiscale:
                    scaled = F.avg_pool3d(x, 2**level)
                    current = torch.cat([current, self.input_convs[level - 1](scaled)], dim=1)
            features.append(block(current))
        return features


class ChangeDetector(nn.Module):
    """Siamese (or early-fusion) 3D U-Net: (baseline, follow-up) -> change logits."""

    def __init__(self, architecture: DetectorArchitecture | None = None) -> None:
        super().__init__()
        self.architecture = arch = architecture or DetectorArchitecture()
        channels = arch.channels
        self.encoder = Encoder(2 if arch.siamese else 3, arch)
        widen = 2 if arch.siamese and arch.fusion == "concat" else 1
        fused = [c * widen for c in channels]

        self.upsample = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder_blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        below = fused[-1]  # channels of the level under the one being decoded
        for level in range(arch.levels - 2, -1, -1):
            width = channels[level]
            self.upsample.append(nn.ConvTranspose3d(below, width, 2, stride=2))
            if arch.attention_gates:
                self.gates.append(AttentionGate(fused[level], below))
            self.decoder_blocks.append(make_block(width + fused[level], width, arch))
            if level == 0 or arch.deep_supervision:
                self.heads.append(nn.Conv3d(width, 1, 1))
            below = width
        for head in self.heads:
            assert isinstance(head, nn.Conv3d) and head.bias is not None
            # Start from "rare change" (p = 0.01, as RetinaNet does): with p = 0.5 everywhere
            # the first steps only fight a flood of false positives.
            nn.init.constant_(head.bias, CHANGE_PRIOR_LOGIT)

    def _fuse(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        if self.architecture.fusion == "concat":
            return torch.cat([first, second], dim=1)
        return torch.abs(first - second)

    def encode(self, baseline: torch.Tensor, followup: torch.Tensor) -> list[torch.Tensor]:
        difference = torch.abs(followup - baseline)
        if not self.architecture.siamese:
            levels: list[torch.Tensor] = self.encoder(
                torch.cat([baseline, followup, difference], dim=1)
            )
            return levels
        # One pass through the shared encoder with both branches stacked on the batch axis.
        both = self.encoder(
            torch.cat(
                [
                    torch.cat([baseline, difference], dim=1),
                    torch.cat([followup, difference], dim=1),
                ],
                dim=0,
            )
        )
        n = baseline.shape[0]
        return [self._fuse(level[:n], level[n:]) for level in both]

    def forward(self, baseline: torch.Tensor, followup: torch.Tensor) -> list[torch.Tensor]:
        """Logits: ``[full resolution, then 1/2, 1/4... for deep supervision]``."""
        skips = self.encode(baseline, followup)
        current = skips[-1]
        maps: list[torch.Tensor] = []
        heads = iter(self.heads)
        for index, level in enumerate(range(self.architecture.levels - 2, -1, -1)):
            skip = skips[level]
            if self.architecture.attention_gates:
                skip = self.gates[index](skip, current)
            current = self.decoder_blocks[index](
                torch.cat([self.upsample[index](current), skip], dim=1)
            )
            if level == 0 or self.architecture.deep_supervision:
                maps.append(next(heads)(current))
        # Collected coarse to fine; the final map goes first.
        return maps[::-1]
