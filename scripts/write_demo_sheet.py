"""Rule write_demo_sheet: thin adapter to mschange.demo_cohort."""

from pathlib import Path

from mschange.demo_cohort import demo_single_ids, demo_subject_ids, write_demo_sheet
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "write_demo_sheet"):
    write_demo_sheet(
        Path(snakemake.output[0]).parent,
        demo_subject_ids(snakemake.params.n_train, snakemake.params.n_test),
        Path(snakemake.output[0]),
        single=demo_single_ids(
            snakemake.params.n_train, snakemake.params.n_test, snakemake.params.n_single
        ),
    )
