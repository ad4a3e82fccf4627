"""The 3D variational auto-encoder of To et al. (section 3.2, supplement A).

An encoder ``f_theta`` maps a FLAIR crop to the mean and log-variance of a
*spatial* latent (a small feature volume, one latent vector per 2^L voxels), so that
perturbing the latent changes the image locally; a decoder ``g_gamma`` maps a latent
back to an image. Two encoders, as in the paper's supplement: max-pooling (used for
all of the paper's experiments) and strided convolutions (more mottled outputs).

The paper gives no layer sizes; channel widths and latent size are config keys.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mschange.model_files import ModelFileError, read_model_payload, save_model_file

ENCODERS = ("maxpool", "strided")
LOGVAR_LIMIT = 10.0  # keeps exp(logvar) finite early in training


@dataclass(frozen=True)
class VaeArchitecture:
    """Shape of the network; stored in the model file so that it rebuilds itself."""

    encoder: str = "maxpool"
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 8

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown VAE encoder {self.encoder!r}; choose one of {ENCODERS}")
        if not self.channels or min(self.channels) < 1 or self.latent_channels < 1:
            raise ValueError("VAE channels and latent_channels must be positive")

    @property
    def downsampling(self) -> int:
        """Voxels per latent vector along each axis: crops must be multiples of this."""
        return int(2 ** len(self.channels))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VaeArchitecture:
        return cls(
            encoder=str(values["encoder"]),
            channels=tuple(int(c) for c in values["channels"]),
            latent_channels=int(values["latent_channels"]),
        )


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # Group normalisation: stable with mini-batches of 2, unlike batch normalisation.
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _downsample(encoder: str, channels: int) -> nn.Module:
    if encoder == "maxpool":
        return nn.MaxPool3d(2)
    return nn.Sequential(
        nn.Conv3d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)
    )


class Vae3d(nn.Module):
    """``forward(x) -> (reconstruction, mu, logvar)`` for ``x`` of shape (N, 1, X, Y, Z)."""

    def __init__(self, architecture: VaeArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        widths = architecture.channels
        encoder_layers: list[nn.Module] = []
        previous = 1
        for width in widths:
            encoder_layers += [
                _conv_block(previous, width),
                _downsample(architecture.encoder, width),
            ]
            previous = width
        self.encoder = nn.Sequential(*encoder_layers)
        self.to_latent = nn.Conv3d(widths[-1], 2 * architecture.latent_channels, 1)
        self.from_latent = nn.Sequential(
            nn.Conv3d(architecture.latent_channels, widths[-1], 1), nn.LeakyReLU(0.2, inplace=True)
        )
        decoder_layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            below = widths[level - 1] if level > 0 else widths[0]
            decoder_layers += [
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                _conv_block(widths[level], below),
            ]
        self.decoder = nn.Sequential(*decoder_layers)
        self.to_image = nn.Conv3d(widths[0], 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the latent, each (N, latent_channels, X/2^L, ...)."""
        stats = self.to_latent(self.encoder(x))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.to_image(self.decoder(self.from_latent(z)))
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z), mu, logvar


def vae_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L1, KL): voxel-wise L1 plus ``kl_weight`` x KL(N(mu, sigma) || N(0, I)).

    Both terms are means (per voxel, per latent element), so the weight does not
    depend on the crop size.
    """
    l1 = F.l1_loss(reconstruction.float(), target.float())
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * torch.mean(1.0 + logvar - mu.pow(2) - logvar.exp())
    return l1 + kl_weight * kl, l1, kl


VAE_KIND = "mschange-vae"


def save_vae(model: Vae3d, path: str | os.PathLike[str], *, training: dict[str, Any]) -> Path:
    """Write weights, architecture, training settings and package version, atomically.

    Only tensors and plain values go in (:func:`mschange.model_files.save_model_file`), so
    :func:`load_vae` never unpickles code.
    """
    architecture = asdict(model.architecture)
    architecture["channels"] = list(model.architecture.channels)
    return save_model_file(
        model, path, VAE_KIND, {"architecture": architecture, "training": training}
    )


def load_vae(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[Vae3d, dict[str, Any]]:
    """The model (in eval mode, on ``device``) and the file's metadata.

    A file that cannot be read safely or holds something else is a
    :class:`~mschange.model_files.ModelFileError` (a ``ValueError``) saying why.
    """
    payload = read_model_payload(path)
    if not isinstance(payload, dict):
        raise ModelFileError(path, [f"holds a {type(payload).__name__}, not an mschange model"])
    if payload.get("kind") != VAE_KIND:
        raise ModelFileError(
            path, [f"not an mschange VAE model file (kind {payload.get('kind')!r})"]
        )
    model = Vae3d(VaeArchitecture.from_dict(payload["architecture"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    metadata = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, metadata
