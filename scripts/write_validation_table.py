"""Rule list_validation_pairs: the validation pairs' files as one table."""

from mschange.io import write_file_table
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "list_validation_pairs"):
    pairs = list(snakemake.params.pair)
    labels = list(snakemake.input.get("label", []))
    write_file_table(
        {
            "pair": pairs,
            "subject": [name.rsplit("-", 1)[0] for name in pairs],
            "baseline": list(snakemake.input.baseline),
            "followup": list(snakemake.input.followup),
            "baseline_mask": list(snakemake.input.baseline_mask),
            "followup_mask": list(snakemake.input.followup_mask),
            # No-change pairs first (no label), then the painted ones.
            "label": [""] * (len(pairs) - len(labels)) + labels,
        },
        snakemake.output[0],
    )
