"""How each method is described in the Table 1 analogue (model, loss, γ, L2).

Kept free of heavy imports: the workflow calls it while it is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def model_description(detector: Mapping[str, Any]) -> dict[str, str]:
    """The Table 1 columns of a detector configuration (model, loss, γ, L2)."""
    architecture, loss = detector["architecture"], detector["loss"]
    parts = [
        part
        for part, on in (
            ("Inc", architecture["inception"]),
            ("AG", architecture["attention_gates"]),
            ("MS", architecture["multiscale_inputs"]),
            ("DS", architecture["deep_supervision"]),
        )
        if on
    ]
    model = ("Siamese U-net" if architecture["siamese"] else "U-net") + "".join(
        f"-{part}" for part in parts
    )
    focal = loss["kind"] == "focal_tversky"
    return {
        "model": model,
        "loss": "FTL" if focal else "BCE",
        "γ": f"{loss['gamma_final']:g}" if focal else "–",
        "L2": f"{loss['l2']:g}" if loss["l2"] else "–",
    }


def baseline_description(
    k: float, sigma_mm: float, erode_mm: float = 0.0, harmonise: bool = False
) -> dict[str, str]:
    edge = f", edge {erode_mm:g} mm out" if erode_mm else ""
    matched = ", histograms matched" if harmonise else ""
    return {
        "model": f"subtraction (σ {sigma_mm:g} mm, |z| > {k:g}{edge}{matched})",
        "loss": "–",
        "γ": "–",
        "L2": "–",
    }
