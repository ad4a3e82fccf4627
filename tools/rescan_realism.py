"""Real versus simulated no-change differences (README, "Realistic training data").

Compares |follow-up - baseline| outside the true lesion changes of each real development
pair (its two studies, preprocessed by the workflow) with the same follow-up scan paired
with its simulated rescan (the cohort's ``long-<patient>-study2`` single-scan row),
optionally after the detector's on-the-fly augmentation. Reads a finished preprocessing
of ``presets/real_training.yaml`` (the run folder) and writes a table and a figure:

    python tools/rescan_realism.py RUN_DIR --out docs/figures/rescan_realism.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mschange.io import brain_intersection, load_float_image, voxel_sizes
from mschange.preprocessing.resample import resample_to_grid
from mschange.synthesis.realism import (
    absolute_differences,
    difference_table,
    plot_difference_distributions,
)


def load_pair(run: Path, subject: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A preprocessed pair of the run, the intersection of its brain masks, its affine."""
    prefix = run / "results" / "preproc" / f"sub-{subject}" / f"sub-{subject}"
    baseline, _ = load_float_image(f"{prefix}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz")
    followup, image = load_float_image(
        f"{prefix}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz")
    brain = brain_intersection(f"{prefix}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
                               f"{prefix}_tp-followup_desc-brain_mask.nii.gz")
    return baseline, followup, brain, np.asarray(image.affine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the real_training run folder")
    parser.add_argument("--patients", nargs="+", default=["patient01", "patient03"])
    parser.add_argument("--augment", action="store_true",
                        help="also the simulated pair after the sampler's augmentation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="figure (PNG); a TSV beside it")
    args = parser.parse_args()

    cohort = pd.read_csv(args.run / "cohort.tsv", sep="\t", keep_default_na=False
                         ).set_index("subject")
    regions = {}
    for patient in args.patients:
        baseline, followup, brain, affine = load_pair(args.run, patient)
        label = load_float_image(cohort.loc[patient, "label"])
        truth = resample_to_grid(label[0], label[1].affine, baseline.shape, affine, order=0,
                                 antialias=False) > 0
        zooms = voxel_sizes(affine)
        regions[f"real {patient}"] = absolute_differences(baseline, followup, brain,
                                                          exclude=truth, zooms=zooms)
        simulated = f"long-{patient}-study2"
        sim_baseline, sim_followup, sim_brain, _ = load_pair(args.run, simulated)
        regions[f"simulated {simulated}"] = absolute_differences(sim_baseline, sim_followup,
                                                                 sim_brain, zooms=zooms)
        if args.augment:
            from mschange.detection.augment import AugmentationSettings, augment_pair

            rng = np.random.default_rng(args.seed)
            aug_baseline, aug_followup, _ = augment_pair(
                sim_baseline, sim_followup, np.zeros(sim_baseline.shape, np.uint8),
                AugmentationSettings(enabled=True), rng)
            regions[f"simulated+augmented {simulated}"] = absolute_differences(
                aug_baseline, aug_followup, sim_brain, zooms=zooms)
    table = difference_table(regions)
    table_path = args.out.with_suffix(".tsv")
    table.to_csv(table_path, sep="\t", index=False, float_format="%.4f")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    plot_difference_distributions(regions, args.out, title="|FU - BL| where nothing changed: "
                                  "real pairs (solid) versus simulated rescans (dashed)")
    print(f"wrote {args.out} and {table_path}")


if __name__ == "__main__":
    main()
