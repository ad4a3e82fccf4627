"""Rule correct_bias_n4: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import n4_step

with logging_to(snakemake.log[0], "correct_bias_n4"):
    n4_step(
        snakemake.input.brain,
        snakemake.input.mask,
        snakemake.output[0],
        subject=snakemake.wildcards.subject,
        shrink_factor=snakemake.params.shrink_factor,
        iterations=snakemake.params.iterations,
        convergence=snakemake.params.convergence,
        threads=snakemake.threads,
    )
