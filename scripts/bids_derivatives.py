"""Rule bids_derivatives: thin adapter to mschange.bids."""

from mschange.bids import copy_predictions
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "bids_derivatives"):
    copy_predictions(snakemake.output[0], snakemake.params.pairs)
