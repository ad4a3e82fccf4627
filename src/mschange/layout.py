"""Where each file of a preprocessed pair lives: one path builder for the rules and the package.

Names follow BIDS derivatives (``sub-<id>_tp-<time point>_space-<grid>_desc-<what>_FLAIR``),
built by :func:`bids` as hippunfold builds its paths. The rules call these with Snakemake
wildcards (``subject="{subject}"``), ``mschange predict`` with a subject id and its own
folder, so that both write the same names. Kept free of heavy imports: the workflow
reads it while building the job graph.
"""

from __future__ import annotations

PREPROC_DIR = "results/preproc"
TIMEPOINTS = ("baseline", "followup")


def bids(
    folder: str, *, subject: str, suffix: str, extension: str = ".nii.gz", **entities: str | None
) -> str:
    """``<folder>/sub-<subject>/sub-<subject>[_<key>-<value>...]_<suffix><extension>``,
    entities in the order given, those set to None left out (``from_`` is written
    ``from``)."""
    parts = [f"sub-{subject}"] + [
        f"{key.rstrip('_')}-{value}" for key, value in entities.items() if value is not None
    ]
    return f"{folder}/sub-{subject}/{'_'.join(parts)}_{suffix}{extension}"


def timepoint_files(
    subject: str = "{subject}", tp: str = "{tp}", folder: str = PREPROC_DIR
) -> dict[str, str]:
    """The files the preprocessing writes for one time point, by kind: on the scan's own
    1 mm grid (``resampled``, ``brain``, ``brain_mask``) and on the follow-up's
    (``n4``, ``preproc``)."""

    def path(desc: str, suffix: str = "FLAIR", space: str | None = None) -> str:
        return bids(folder, subject=subject, tp=tp, space=space, desc=desc, suffix=suffix)

    return {
        "resampled": path("resampled"),
        "brain": path("brain"),
        "brain_mask": path("brain", "mask"),
        "n4": path("n4", space="followup"),
        "preproc": path("preproc", space="followup"),
    }


def registration_files(subject: str = "{subject}", folder: str = PREPROC_DIR) -> dict[str, str]:
    """What the registration writes: the transform, and the baseline's brain and mask
    moved onto the follow-up's grid."""
    moved = {
        kind: bids(
            folder, subject=subject, tp="baseline", space="followup", desc="brain", suffix=suffix
        )
        for kind, suffix in (("brain", "FLAIR"), ("mask", "mask"))
    }
    transform = bids(
        folder,
        subject=subject,
        from_="baseline",
        to="followup",
        mode="image",
        suffix="xfm",
        extension=".mat",
    )
    return {"transform": transform, **moved}


def brain_on_followup_grid(
    tp: str, subject: str = "{subject}", folder: str = PREPROC_DIR
) -> dict[str, str]:
    """A time point's brain and mask on the follow-up's grid: the follow-up's own (it is
    the reference grid), the baseline's as registered."""
    if tp == "followup":
        own = timepoint_files(subject, tp, folder)
        return {"brain": own["brain"], "mask": own["brain_mask"]}
    moved = registration_files(subject, folder)
    return {"brain": moved["brain"], "mask": moved["mask"]}


def preprocessed_pair(subject: str = "{subject}", folder: str = PREPROC_DIR) -> dict[str, str]:
    """The four files every stage after preprocessing reads: both time points ready for
    the network, and their brain masks, all on the follow-up's grid."""
    files = {tp: timepoint_files(subject, tp, folder)["preproc"] for tp in TIMEPOINTS}
    masks = {f"{tp}_mask": brain_on_followup_grid(tp, subject, folder)["mask"] for tp in TIMEPOINTS}
    return {**files, **masks}
