"""The synthetic demo cohort: its subjects and sheet, and their images.

Two modules: :mod:`mschange.demo_cohort` (ids, file names, the sheet's rows; light,
the workflow imports it while building the DAG) and :mod:`mschange.demo_phantom`
(the image generator: nibabel, scipy and nilearn's templates). This module gathers
both for callers that want the whole demo.
"""

from mschange.demo_cohort import (
    SHEET_COLUMNS,
    DemoSubjectPaths,
    demo_cohort_rows,
    demo_rows,
    demo_single_ids,
    demo_subject_ids,
    demo_subject_paths,
    write_demo_sheet,
)
from mschange.demo_phantom import CHANGE_TYPE, TEMPLATES, make_demo_subject

__all__ = [
    "CHANGE_TYPE",
    "SHEET_COLUMNS",
    "TEMPLATES",
    "DemoSubjectPaths",
    "demo_cohort_rows",
    "demo_rows",
    "demo_single_ids",
    "demo_subject_ids",
    "demo_subject_paths",
    "make_demo_subject",
    "write_demo_sheet",
]
