"""Every bad input stops the run with a message naming the subject, the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mschange.cohort import (
    CohortError,
    check_cohort_images,
    cohort_from_bids,
    read_cohort_sheet,
)
from mschange.config import ConfigError, validate_config
from mschange.io import InputError, load_checked_image

# Small images with brain-sized fields of view (20 voxels of 5 mm: 100 mm per axis), so
# that "good" inputs pass the scan size checks (io.MIN_SCAN_FOV_MM, io.MIN_SCAN_VOXELS).
SHAPE = (20, 20, 20)
AFFINE = np.diag([5.0, 5.0, 5.0, 1.0])


def write_image(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def write_sheet(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    sheet = tmp_path / "cohort.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet


@pytest.fixture
def good_pair(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    write_image(tmp_path / "s1_bl.nii.gz", rng.random(SHAPE))
    write_image(tmp_path / "s1_fu.nii.gz", rng.random(SHAPE))
    return {
        "subject": "s1",
        "baseline": "s1_bl.nii.gz",
        "followup": "s1_fu.nii.gz",
        "split": "test",
        "change": "yes",
    }


def cohort_problems(sheet: Path) -> str:
    with pytest.raises(CohortError) as caught:
        check_cohort_images(read_cohort_sheet(sheet))
    return str(caught.value)


def test_good_sheet_resolves_relative_paths(tmp_path, good_pair):
    cohort = read_cohort_sheet(write_sheet(tmp_path, [good_pair]))
    check_cohort_images(cohort)
    assert cohort.loc[0, "baseline"] == str(tmp_path / "s1_bl.nii.gz")
    assert cohort.loc[0, "label"] == ""


def test_missing_file(tmp_path, good_pair):
    good_pair["followup"] = "nowhere.nii.gz"
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "subject 's1'" in message
    assert "nowhere.nii.gz" in message
    assert "does not exist" in message


def test_not_a_nifti(tmp_path, good_pair):
    (tmp_path / "s1_fu.nii.gz").write_bytes(b"this is not an image")
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "s1_fu.nii.gz" in message and "subject 's1'" in message
    assert "truncated or corrupt" in message or "not a readable NIfTI" in message


def test_unreadable_plain_nifti(tmp_path, good_pair):
    (tmp_path / "garbage.nii").write_bytes(b"\x00" * 400)
    good_pair["baseline"] = "garbage.nii"
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "garbage.nii" in message and "not a readable NIfTI" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_permission_denied(tmp_path, good_pair):
    os.chmod(tmp_path / "s1_bl.nii.gz", 0)
    assert "not readable" in cohort_problems(write_sheet(tmp_path, [good_pair]))


def test_truncated_gzip(tmp_path, good_pair):
    whole = (tmp_path / "s1_fu.nii.gz").read_bytes()
    (tmp_path / "s1_fu.nii.gz").write_bytes(whole[: len(whole) // 2])
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "s1_fu.nii.gz" in message and "truncated" in message


def test_two_dimensional_image(tmp_path, good_pair):
    write_image(tmp_path / "s1_fu.nii.gz", np.ones(SHAPE[:2]))
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "expected a 3D image, found a 2D image" in message


def test_single_slice_counts_as_2d(tmp_path):
    path = write_image(tmp_path / "slice.nii.gz", np.ones((*SHAPE[:2], 1)))
    with pytest.raises(InputError, match="single slice"):
        load_checked_image(path, "s9")


def test_four_dimensional_image(tmp_path, good_pair):
    write_image(tmp_path / "s1_bl.nii.gz", np.ones((*SHAPE, 3)))
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "s1_bl.nii.gz" in message and "found a 4D image" in message


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    path = write_image(tmp_path / "vol.nii.gz", np.ones((6, 7, 8, 1)))
    assert load_checked_image(path).shape == (6, 7, 8)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, good_pair, bad_value):
    volume = np.ones(SHAPE)
    volume[3, 4, 5] = bad_value
    volume[6, 6, 6] = bad_value
    write_image(tmp_path / "s1_fu.nii.gz", volume)
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "2 voxels are NaN or infinite" in message


def test_duplicate_subject(tmp_path, good_pair):
    sheet = write_sheet(tmp_path, [good_pair, dict(good_pair)])
    with pytest.raises(CohortError, match=r"subject 's1': duplicate subject .* \(lines 2 and 3\)"):
        read_cohort_sheet(sheet)


def test_label_on_another_grid(tmp_path, good_pair):
    write_image(tmp_path / "s1_label.nii.gz", np.zeros((20, 20, 18)))
    good_pair["label"] = "s1_label.nii.gz"
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert "s1_label.nii.gz" in message and "differs from the follow-up's grid" in message
    assert "shape (20, 20, 18) against (20, 20, 20)" in message


def test_label_with_shifted_affine(tmp_path, good_pair):
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    write_image(tmp_path / "s1_label.nii.gz", np.zeros(SHAPE), shifted)
    good_pair["label"] = "s1_label.nii.gz"
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    # The same shape: the message names what differs, the origin, with both values.
    assert "differs from the follow-up's grid" in message
    assert "origin (2, 0, 0) mm against (0, 0, 0) mm" in message
    assert "shape" not in message and "voxel size" not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (np.diag([5.0, 5.0, 6.0, 1.0]), "voxel size (5, 5, 6) mm against (5, 5, 5) mm"),
        (np.diag([-5.0, 5.0, 5.0, 1.0]), "orientation LAS against RAS"),
    ],
)
def test_label_grid_message_names_voxel_size_and_orientation(tmp_path, good_pair, change, expected):
    write_image(tmp_path / "s1_label.nii.gz", np.zeros(SHAPE), change)
    good_pair["label"] = "s1_label.nii.gz"
    message = cohort_problems(write_sheet(tmp_path, [good_pair]))
    assert expected in message


def test_bad_values_in_sheet_are_all_reported(tmp_path, good_pair):
    second = dict(good_pair, subject="s_2", split="holdout", change="maybe")
    with pytest.raises(CohortError) as caught:
        read_cohort_sheet(write_sheet(tmp_path, [good_pair, second]))
    problems = caught.value.problems
    assert len(problems) == 3
    assert any("'s_2'" in p and "subject" in p for p in problems)
    assert any("'holdout' is not one of" in p for p in problems)
    assert any("'maybe' is not one of" in p for p in problems)


def test_single_scans_are_training_or_validation_scans_without_change(tmp_path, good_pair):
    rows = [
        dict(good_pair, subject=f"s{k}", baseline="", split=split, change=change)
        for k, (split, change) in enumerate(
            [("train", "no"), ("validation", "no"), ("test", "no"), ("validation", "yes")]
        )
    ]
    with pytest.raises(CohortError) as caught:
        read_cohort_sheet(write_sheet(tmp_path, rows))
    problems = caught.value.problems
    assert [p.split("'")[1] for p in problems] == ["s2", "s3", "s3"]
    assert "single scans can only be no-change training or validation pairs" in problems[0]
    assert "validation scans must be without change" in problems[2]
    cohort = read_cohort_sheet(write_sheet(tmp_path, rows[:2]))
    assert list(cohort["split"]) == ["train", "validation"]


def test_unknown_and_missing_columns(tmp_path, good_pair):
    row = dict(good_pair, lable="x.nii.gz")
    del row["split"]
    with pytest.raises(CohortError) as caught:
        read_cohort_sheet(write_sheet(tmp_path, [row]))
    assert "unknown column(s) 'lable'" in str(caught.value)
    assert "missing column(s) 'split'" in str(caught.value)


def test_every_problem_of_every_subject_is_listed(tmp_path, good_pair):
    other = dict(good_pair, subject="s2", baseline="missing.nii.gz")
    write_image(tmp_path / "s1_fu.nii.gz", np.ones((4, 4)))
    message = cohort_problems(write_sheet(tmp_path, [good_pair, other]))
    assert "subject 's1'" in message and "2D" in message
    assert "subject 's2'" in message and "missing.nii.gz" in message


def test_image_check_cache_skips_unchanged_files(tmp_path, good_pair):
    cohort = read_cohort_sheet(write_sheet(tmp_path, [good_pair]))
    cache = tmp_path / "cache.json"
    check_cohort_images(cohort, cache_file=cache)
    assert len(__import__("json").loads(cache.read_text())) == 2
    # A changed file (new size and mtime) is checked again, not trusted from the cache.
    volume = np.ones(SHAPE)
    volume[0, 0, 0] = np.nan
    write_image(tmp_path / "s1_bl.nii.gz", volume)
    with pytest.raises(CohortError, match="NaN"):
        check_cohort_images(cohort, cache_file=cache)


def test_cached_files_are_not_opened_again_unless_a_label_needs_their_grid(
    tmp_path, good_pair, monkeypatch
):
    rng = np.random.default_rng(1)
    write_image(tmp_path / "s2_bl.nii.gz", rng.random(SHAPE))
    write_image(tmp_path / "s2_fu.nii.gz", rng.random(SHAPE))
    # A label off its follow-up's grid: each file passes its own check (and is cached),
    # the pair does not.
    write_image(tmp_path / "s2_label.nii.gz", np.zeros((18, 20, 20)))
    labelled = dict(
        good_pair,
        subject="s2",
        baseline="s2_bl.nii.gz",
        followup="s2_fu.nii.gz",
        label="s2_label.nii.gz",
    )
    cohort = read_cohort_sheet(write_sheet(tmp_path, [good_pair, labelled]))
    cache = tmp_path / "cache.json"
    with pytest.raises(CohortError, match="label's grid"):
        check_cohort_images(cohort, cache_file=cache)
    opened: list[str] = []
    real_load = nib.load
    monkeypatch.setattr(
        nib,
        "load",
        lambda path, *a, **k: opened.append(Path(path).name) or real_load(path, *a, **k),
    )
    # Every file is cached now, yet the label is still compared with its follow-up.
    with pytest.raises(CohortError, match="label's grid"):
        check_cohort_images(cohort, cache_file=cache)
    assert sorted(opened) == ["s2_fu.nii.gz", "s2_label.nii.gz"]


def minimal_config() -> dict:
    return {
        "seed": 1,
        "cohort": {"source": "demo"},
        "preprocessing": {"resolution_mm": 1.0},
        "qc": {},
    }


def test_config_defaults_are_filled():
    config = validate_config(minimal_config())
    assert config["preprocessing"]["skullstrip"] == {"mode": "fast", "tta": False}
    assert config["preprocessing"]["n4"]["iterations"] == [50, 50, 30]
    assert config["device"] == "cpu"


def test_unknown_config_key_is_named():
    config = minimal_config()
    config["preprocessing"]["skullstrp"] = {"mode": "fast"}
    with pytest.raises(
        ConfigError,
        match=r"unknown config key\(s\) 'skullstrp' under "
        r"preprocessing",
    ):
        validate_config(config)


def test_bad_config_value_is_named():
    config = minimal_config()
    config["preprocessing"]["skullstrip"] = {"mode": "quick"}
    with pytest.raises(ConfigError, match=r"preprocessing\.skullstrip\.mode: 'quick' is not"):
        validate_config(config)


def test_sheet_source_needs_a_sheet():
    config = minimal_config()
    config["cohort"] = {"source": "sheet"}
    with pytest.raises(ConfigError, match=r"cohort\.sheet"):
        validate_config(config)


def test_bids_pairs_consecutive_sessions(tmp_path):
    volume = np.ones((5, 5, 5))
    for subject, sessions in (("01", ["1", "2", "10"]), ("02", ["1"])):
        for ses in sessions:
            write_image(
                tmp_path
                / f"sub-{subject}"
                / f"ses-{ses}"
                / "anat"
                / f"sub-{subject}_ses-{ses}_FLAIR.nii.gz",
                volume,
            )
    cohort = cohort_from_bids(tmp_path)
    assert list(cohort["subject"]) == ["01-1to2", "01-2to10"]
    assert cohort.loc[1, "baseline"].endswith("ses-2/anat/sub-01_ses-2_FLAIR.nii.gz")
    assert cohort.loc[1, "followup"].endswith("ses-10/anat/sub-01_ses-10_FLAIR.nii.gz")
    assert set(cohort["change"]) == {"unknown"}


def test_bids_ambiguous_session_is_an_error(tmp_path):
    for run in ("1", "2"):
        write_image(
            tmp_path / "sub-03" / "ses-1" / "anat" / f"sub-03_ses-1_run-{run}_FLAIR.nii.gz",
            np.ones((5, 5, 5)),
        )
    with pytest.raises(CohortError, match=r"subject .03.*2 FLAIR images"):
        cohort_from_bids(tmp_path)


def test_file_table_round_trip_and_length_check(tmp_path):
    from mschange.io import read_file_table, write_file_table

    path = write_file_table(
        {"images": ["a.nii.gz", "b.nii.gz"], "masks": ["am", "bm"]}, tmp_path / "table.tsv"
    )
    assert read_file_table(path) == {"images": ["a.nii.gz", "b.nii.gz"], "masks": ["am", "bm"]}
    with pytest.raises(ValueError, match="different lengths"):
        write_file_table({"images": ["a"], "masks": []}, tmp_path / "bad.tsv")
