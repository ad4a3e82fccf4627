"""Rule use_pretrained_detector: a model folder's files copied as the model's own."""

import shutil

from mschange.detection.modelfile import load_detector
from mschange.io import atomic_path
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "use_pretrained_detector"):
    load_detector(snakemake.input.model)  # refuse a broken or foreign file up front
    for key in ("model", "log", "curve"):
        with atomic_path(snakemake.output[key]) as tmp:
            shutil.copyfile(snakemake.input[key], tmp)
