"""The one rule for a subject id.

Ids become file and folder names (``sub-<id>/``), so only ASCII letters and digits
with single hyphens between them are allowed. The demo cohort, ``mschange predict``
and the workflow's ``{subject}`` wildcard constraint take the rule from here; the
cohort sheet's schema (``schemas/cohort.schema.yaml``, which checks sheets) states the
same pattern, and tests/test_demo.py checks that the two agree. Standard library
only: the workflow reads it while it builds the DAG, and the demo's conda env (no
YAML parser) imports it.
"""

from __future__ import annotations

import re

# Anchored, as in the schema.
SUBJECT_ID_PATTERN = "^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$"
# The same rule unanchored and without capturing groups: a Snakemake wildcard constraint.
SUBJECT_ID_WILDCARD = re.sub(
    r"\((?!\?)", "(?:", SUBJECT_ID_PATTERN.removeprefix("^").removesuffix("$")
)


def is_subject_id(text: str) -> bool:
    return re.fullmatch(SUBJECT_ID_PATTERN, text) is not None
