"""Training losses of the change detector (To et al., equations 2 and 3).

Focal Tversky loss ``(1 - TI)^gamma`` with the Tversky index
``TI = TP / (TP + alpha FN + beta FP)`` on soft counts (probabilities, not
thresholded), per sample, averaged over the batch. Binary cross-entropy is the
ablation alternative. With deep supervision, every intermediate map gets its own
term against the label average-pooled to its resolution; L2 weight regularisation
adds ``l2 * sum(w^2)`` over the convolution kernels (as Keras' ``kernel_regularizer``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOSS_KINDS = ("focal_tversky", "bce")


@dataclass(frozen=True)
class LossSettings:
    kind: str = "focal_tversky"
    alpha: float = 0.75  # weight of false negatives (recall), paper 0.75
    beta: float = 0.25  # weight of false positives, alpha + beta = 1
    gamma_final: float = 1.0  # paper: 0.75 or 1.0 on the final map
    gamma_intermediate: float = 0.75  # paper: 0.75 on the deeply supervised maps
    smooth: float = 1.0  # added to TP and to the denominator (empty labels)
    l2: float = 1e-6  # paper: 1e-6 or 1e-4 for the siamese U-Net

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        if min(self.alpha, self.beta) < 0 or min(self.gamma_final, self.gamma_intermediate) <= 0:
            raise ValueError("alpha, beta must be >= 0 and gamma > 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tversky_index(
    probability: torch.Tensor, target: torch.Tensor, *, alpha: float, beta: float, smooth: float
) -> torch.Tensor:
    """Per-sample Tversky index of soft maps shaped (batch, ...)."""
    p = probability.reshape(probability.shape[0], -1)
    t = target.reshape(target.shape[0], -1).to(p.dtype)
    true_positive = (p * t).sum(dim=1)
    false_negative = ((1.0 - p) * t).sum(dim=1)
    false_positive = (p * (1.0 - t)).sum(dim=1)
    return (true_positive + smooth) / (
        true_positive + alpha * false_negative + beta * false_positive + smooth
    )


def focal_tversky_loss(
    probability: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    smooth: float,
) -> torch.Tensor:
    """Mean over the batch of ``(1 - TI)^gamma``."""
    index = tversky_index(probability, target, alpha=alpha, beta=beta, smooth=smooth)
    return torch.clamp(1.0 - index, min=0.0).pow(gamma).mean()


def downsampled_label(label: torch.Tensor, factor: int) -> torch.Tensor:
    """The label at a deep-supervision level: the share of changed voxels per coarse voxel."""
    return label if factor == 1 else F.avg_pool3d(label, factor)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared convolution kernels (biases and norm parameters excluded)."""
    terms = [p.pow(2).sum() for p in model.parameters() if p.ndim == 5]
    return torch.stack(terms).sum()


def detector_loss(
    logits: list[torch.Tensor],
    label: torch.Tensor,
    settings: LossSettings,
    model: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss over the final and deeply supervised maps, and its parts (for the log).

    ``logits[i]`` has ``2**i`` times fewer voxels per axis than ``label``.
    """
    total = torch.zeros((), device=label.device)
    parts: dict[str, float] = {}
    for depth, raw in enumerate(logits):
        target = downsampled_label(label.float(), 2**depth)
        raw = raw.float()
        if settings.kind == "bce":
            term = F.binary_cross_entropy_with_logits(raw, target)
        else:
            gamma = settings.gamma_final if depth == 0 else settings.gamma_intermediate
            term = focal_tversky_loss(
                torch.sigmoid(raw),
                target,
                alpha=settings.alpha,
                beta=settings.beta,
                gamma=gamma,
                smooth=settings.smooth,
            )
        parts["final" if depth == 0 else f"deep{depth}"] = float(term.detach())
        total = total + term
    if settings.l2 > 0 and model is not None:
        penalty = settings.l2 * l2_penalty(model)
        parts["l2"] = float(penalty.detach())
        total = total + penalty
    return total, parts
