"""Evaluation steps: the subtraction baseline, one pair's scoring, the tables, the report
and the experiment grid of the config."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from mschange.config import ConfigError, model_configs, validate_config
from mschange.evaluation.baseline import subtraction_zmap
from mschange.evaluation.methods import model_description
from mschange.evaluation.metrics import METRIC_COLUMNS, MetricSettings
from mschange.evaluation.outputs import evaluation_paths
from mschange.evaluation.report import ReportInputs, build_report, write_report
from mschange.evaluation.steps import evaluate_pair_step, tables_step

from .conftest import REPO

SHAPE = (24, 24, 24)


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


# ----------------------------------------------------------------- subtraction baseline


def test_subtraction_zmap_is_standardised_inside_the_brain_and_signed():
    rng = np.random.default_rng(0)
    brain = _ball((12, 12, 12), 10)
    baseline = np.where(brain, 0.5 + 0.01 * rng.standard_normal(SHAPE), 0.0)
    followup = baseline.copy()
    followup[_ball((8, 12, 12), 2)] += 0.5  # a new lesion: brighter
    followup[_ball((16, 12, 12), 2)] -= 0.3  # a shrinking one: darker
    zmap = subtraction_zmap(baseline, followup, brain, (1.0, 1.0, 1.0), sigma_mm=1.0)
    assert zmap[~brain].max() == 0.0 and zmap[~brain].min() == 0.0
    assert zmap[brain].mean() == pytest.approx(0.0, abs=1e-4)
    assert zmap[brain].std() == pytest.approx(1.0, abs=1e-3)
    assert zmap[8, 12, 12] > 3.0 and zmap[16, 12, 12] < -3.0
    # Unchanged tissue, including the brain's edge, stays well under the threshold.
    quiet = brain & ~_ball((8, 12, 12), 5) & ~_ball((16, 12, 12), 5)
    assert np.abs(zmap[quiet]).max() < 1.0


def test_subtraction_zmap_leaves_out_the_brain_edge():
    brain = _ball((12, 12, 12), 10)
    baseline = np.where(brain, 0.5, 0.0)
    followup = baseline.copy()
    followup[_ball((12, 12, 12), 2)] += 0.5  # deep inside: kept
    followup[_ball((12, 12, 21), 1)] += 0.5  # 1-2 voxels from the edge: left out
    zmap = subtraction_zmap(baseline, followup, brain, (1.0, 1.0, 1.0), sigma_mm=0.0, erode_mm=3.0)
    assert zmap[12, 12, 12] > 3.0
    assert zmap[12, 12, 21] == 0.0
    # Unchanged tissue 7 mm deep keeps its (small, negative) z; 2 mm deep it is zeroed.
    assert zmap[12, 12, 15] != 0.0 and zmap[12, 12, 20] == 0.0


# ----------------------------------------------------------------- one pair's evaluation


@pytest.fixture
def scored_pair(tmp_path):
    """A pair on a 1 mm grid whose label (native grid = the same) has 2 changes."""
    brain = _ball((12, 12, 12), 11)
    baseline = np.where(brain, 0.5, 0.0).astype(np.float32)
    followup = baseline.copy()
    new = _ball((7, 12, 12), 2.5)  # brighter at follow-up (33 voxels... see below)
    shrinking = _ball((17, 12, 12), 2.5)  # darker at follow-up
    followup[new] += 0.4
    followup[shrinking] -= 0.3
    label = (new | shrinking).astype(np.uint8)
    score = np.zeros(SHAPE, np.float32)
    score[new] = 0.9  # the model finds the new lesion...
    score[_ball((12, 5, 12), 1.5)] = 0.9  # ...and a false one (19 voxels) where nothing changed
    files = {
        name: _save(data, tmp_path / f"{name}.nii.gz")
        for name, data in {
            "score": score,
            "baseline": baseline,
            "followup": followup,
            "mask": brain.astype(np.uint8),
            "label": label,
        }.items()
    }
    return files, tmp_path


def _pair_inputs(files: dict, *, label, native: str = "followup") -> dict:
    """evaluate_pair_step's image inputs from a fixture's files."""
    return {
        "score": files["score"],
        "baseline": files["baseline"],
        "followup": files["followup"],
        "masks": [files["mask"]],
        "native_followup": files[native],
        "label": label,
    }


def test_evaluate_pair_scores_all_changes_and_each_direction(scored_pair):
    files, folder = scored_pair
    outputs = evaluation_paths(str(folder / "out"), "p1")
    metrics = evaluate_pair_step(
        **_pair_inputs(files, label=files["label"]),
        outputs=outputs,
        subject="p1",
        method="m",
        threshold=0.5,
        sweep_thresholds=[0.95],
        min_blob_voxels=5,
        settings=MetricSettings(),
    )
    rows = metrics.set_index("direction")
    new_voxels = int(_ball((7, 12, 12), 2.5).sum())
    false_voxels = int(_ball((12, 5, 12), 1.5).sum())
    # All changes: 2 true lesions, 1 found; 2 predicted, 1 real.
    assert rows.loc["all", "to_ltpr"] == pytest.approx(0.5)
    assert rows.loc["all", "to_ppv"] == pytest.approx(0.5)
    assert rows.loc["all", "msseg_dice"] == pytest.approx(
        2 * new_voxels / (2 * new_voxels + new_voxels + false_voxels)
    )
    # Brighter: the one new lesion, found; darker: the shrinking one, missed, and the
    # false detection (no intensity change: mean difference 0, so not brighter) is darker.
    assert rows.loc["brighter", "truth_lesions"] == 1
    assert rows.loc["brighter", "to_ltpr"] == 1.0 and rows.loc["brighter", "to_ppv"] == 1.0
    assert rows.loc["darker", "truth_lesions"] == 1
    assert rows.loc["darker", "to_ltpr"] == 0.0
    written = pd.read_csv(outputs["metrics"], sep="\t")
    assert list(written["direction"]) == ["all", "brighter", "darker"]
    assert (written["threshold"] == 0.5).all() and (written["min_blob_voxels"] == 5).all()
    # The sweep holds the configured thresholds and the operating one; at 0.95 nothing is left.
    sweep = pd.read_csv(outputs["sweep"], sep="\t")
    assert sorted(set(sweep["threshold"])) == [0.5, 0.95]
    high = sweep.loc[(sweep["threshold"] == 0.95) & (sweep["direction"] == "all")].iloc[0]
    assert high["predicted_lesions"] == 0 and high["to_ltpr"] == 0.0
    mask = nib.load(outputs["mask"])
    assert int(np.asarray(mask.dataobj).sum()) == new_voxels + false_voxels
    assert Path(outputs["figure"]).stat().st_size > 5_000


def test_min_blob_size_drops_small_detections_before_scoring(scored_pair):
    files, folder = scored_pair
    outputs = evaluation_paths(str(folder / "out"), "p1")
    false_voxels = int(_ball((12, 5, 12), 1.5).sum())
    metrics = evaluate_pair_step(
        **_pair_inputs(files, label=files["label"]),
        outputs=outputs,
        subject="p1",
        method="m",
        threshold=0.5,
        sweep_thresholds=[],
        min_blob_voxels=false_voxels + 1,
        settings=MetricSettings(),
    )
    row = metrics.set_index("direction").loc["all"]
    assert row["predicted_lesions"] == 1 and row["to_ppv"] == 1.0


def test_pair_without_label_is_scored_as_no_change(scored_pair):
    files, folder = scored_pair
    outputs = evaluation_paths(str(folder / "out"), "p1")
    metrics = evaluate_pair_step(
        **_pair_inputs(files, label=None),
        outputs=outputs,
        subject="p1",
        method="m",
        threshold=0.5,
        sweep_thresholds=[],
        min_blob_voxels=1,
        settings=MetricSettings(),
    )
    row = metrics.set_index("direction").loc["all"]
    assert row["truth_lesions"] == 0
    assert row["msseg_fp_count"] == 2 and np.isnan(row["msseg_dice"])


def test_evaluation_maps_the_prediction_onto_an_anisotropic_label_grid(tmp_path):
    # Label grid: 1 x 1 x 3 mm, shifted; the 1 mm score covers exactly the labelled
    # slab, so a correct mapping gives Dice 1 and a wrong one (axes or shift) does not.
    native_affine = np.diag([1.0, 1.0, 3.0, 1.0])
    native_affine[:3, 3] = [0.0, 0.0, 1.0]
    native_shape = (24, 24, 8)
    label = np.zeros(native_shape, np.uint8)
    label[8:14, 9:15, 3:5] = 1  # z = 10 and 13 mm
    score = np.zeros(SHAPE, np.float32)
    score[8:14, 9:15, 9:15] = 0.9  # z = 9..14 mm on the 1 mm grid
    brain = np.ones(SHAPE, np.uint8)
    followup = np.full(SHAPE, 0.5, np.float32)
    followup[score > 0] = 0.9
    files = {
        "score": _save(score, tmp_path / "s.nii.gz"),
        "baseline": _save(np.full(SHAPE, 0.5, np.float32), tmp_path / "b.nii.gz"),
        "followup": _save(followup, tmp_path / "f.nii.gz"),
        "mask": _save(brain, tmp_path / "m.nii.gz"),
        "native": _save(np.ones(native_shape, np.float32), tmp_path / "n.nii.gz", native_affine),
        "label": _save(label, tmp_path / "l.nii.gz", native_affine),
    }
    outputs = evaluation_paths(str(tmp_path / "out"), "p1")
    metrics = evaluate_pair_step(
        **_pair_inputs(files, label=files["label"], native="native"),
        outputs=outputs,
        subject="p1",
        method="m",
        threshold=0.5,
        sweep_thresholds=[],
        min_blob_voxels=1,
        settings=MetricSettings(),
    )
    row = metrics.set_index("direction").loc["all"]
    assert row["msseg_dice"] == pytest.approx(1.0)
    assert row["truth_volume_mm3"] == pytest.approx(6 * 6 * 2 * 3.0)
    mask = nib.load(outputs["mask"])
    assert mask.shape == native_shape
    np.testing.assert_allclose(mask.affine, native_affine)


# ----------------------------------------------------------------- tables and report


def _metric_rows(
    subject: str, method: str, blob: int, dice: float, ltpr: float, ppv: float
) -> list[dict]:
    rows = []
    for direction in ("all", "brighter", "darker"):
        rows.append(
            {
                **dict.fromkeys(METRIC_COLUMNS, np.nan),
                "subject": subject,
                "method": method,
                "min_blob_voxels": blob,
                "threshold": 0.1,
                "direction": direction,
                "truth_lesions": 2,
                "predicted_lesions": 3,
                "msseg_dice": dice,
                "msseg_f1": dice,
                "to_ltpr": ltpr,
                "to_ppv": ppv,
                "to_lfpr": 1 - ppv,
            }
        )
    return rows


@pytest.fixture
def table_inputs(tmp_path):
    rows = []
    values = {
        "model-a": [(0.6, 1.0, 0.5), (0.4, 0.5, 0.25), (0.5, 0.5, 1.0)],
        "subtraction": [(0.2, 0.5, 0.1), (0.1, 0.0, 0.0), (0.3, 0.5, 0.5)],
    }
    for method, triples in values.items():
        for i, (dice, ltpr, ppv) in enumerate(triples):
            for blob in (20, 100):
                rows += _metric_rows(f"p{i}", method, blob, dice, ltpr, ppv)
    frame = pd.DataFrame(rows)
    metric_file = tmp_path / "metrics.tsv"
    frame.to_csv(metric_file, sep="\t", index=False)
    sweep = frame.copy()
    sweep_file = tmp_path / "sweep.tsv"
    sweep.to_csv(sweep_file, sep="\t", index=False)
    return metric_file, sweep_file, tmp_path


def test_tables_give_means_the_table1_analogue_and_paired_tests(table_inputs):
    metric_file, sweep_file, folder = table_inputs
    tables = tables_step(
        [metric_file],
        [sweep_file],
        table_dir=folder / "tables",
        boxplots=folder / "box.png",
        threshold_curves=folder / "curves.png",
        methods=["model-a", "subtraction"],
        headline_blob=20,
        descriptions={"model-a": {"model": "U-net", "loss": "FTL"}},
    )
    summary = tables["summary"].set_index(["method", "min_blob_voxels"])
    assert summary.loc[("model-a", 20), "msseg_dice_mean"] == pytest.approx(0.5)
    assert summary.loc[("model-a", 20), "msseg_dice_sd"] == pytest.approx(0.1)
    assert summary.loc[("subtraction", 20), "to_ltpr_mean"] == pytest.approx(1 / 3)
    assert summary.loc[("model-a", 20), "pairs"] == 3
    table1 = tables["table1"]
    assert list(table1["method"]) == ["model-a", "model-a", "subtraction", "subtraction"]
    assert table1.iloc[0]["model"] == "U-net" and table1.iloc[0]["PPV"] == pytest.approx(
        (0.5 + 0.25 + 1.0) / 3
    )
    wilcoxon = tables["wilcoxon"].set_index("metric")
    assert wilcoxon.loc["msseg_dice", "n_pairs"] == 3
    assert wilcoxon.loc["msseg_dice", "median_difference"] == pytest.approx(0.3)
    for name in ("summary", "table1", "per_pair", "wilcoxon", "directions", "threshold_sweep"):
        assert (folder / "tables" / f"{name}.tsv").is_file()
        assert (folder / "tables" / f"{name}.md").read_text().startswith("|")
    markdown = (folder / "tables" / "summary.md").read_text()
    assert "0.500 ± 0.100 (n=3)" in markdown
    assert (folder / "box.png").stat().st_size > 5_000
    assert (folder / "curves.png").stat().st_size > 5_000


def test_report_opens_with_the_summary_and_embeds_every_figure(table_inputs, tmp_path):
    metric_file, sweep_file, folder = table_inputs
    tables_step(
        [metric_file],
        [sweep_file],
        table_dir=folder / "tables",
        boxplots=folder / "box.png",
        threshold_curves=folder / "curves.png",
        methods=["model-a", "subtraction"],
        headline_blob=20,
        descriptions={},
    )
    inputs = ReportInputs(
        tables={p.stem: p for p in (folder / "tables").glob("*.tsv")},
        boxplots=folder / "box.png",
        threshold_curves=folder / "curves.png",
        overlays={("p0", "model-a"): folder / "box.png"},
        training_curves={"model-a": folder / "curves.png"},
    )
    report = build_report(
        inputs,
        methods=["model-a", "subtraction"],
        baseline="subtraction",
        headline_blob=20,
        metric_settings=MetricSettings().as_dict(),
    )
    assert "3 test pair(s)" in report.summary
    assert "Best learned model by lesion F1 (MSSEG-2 rule): model-a" in report.summary
    # model-a's mean LTPR (1 + 0.5 + 0.5) / 3 = 67%; the baseline's 33%.
    assert "found 67% of the true change lesions" in report.summary
    assert "subtraction baseline, on the same preprocessing, found 33%" in report.summary
    assert "the difference is what learning adds" in report.summary  # F1 0.5 > 0.2
    html_path = tmp_path / "index.html"
    write_report(
        inputs,
        html_path,
        methods=["model-a", "subtraction"],
        baseline="subtraction",
        headline_blob=20,
        metric_settings=MetricSettings().as_dict(),
    )
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 4  # boxplots, curves, overlay, training
    assert "Table 1 analogue" in html and "msseg_alpha" in html


# ----------------------------------------------------------------- the experiment grid


def _config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_every_table1_row_is_a_model_of_the_grid():
    config = _config()
    config["experiments"]["compare"] = list(config["experiments"]["models"])
    models = model_configs(validate_config(config))
    described = {name: model_description(model) for name, model in models.items()}
    assert len(models) == 8  # the paper's Table 1, bar Li et al.'s external model
    assert described["unet-bce"] == {"model": "U-net", "loss": "BCE", "γ": "–", "L2": "–"}
    assert described["unet-ftl"] == {"model": "U-net", "loss": "FTL", "γ": "1", "L2": "–"}
    assert described["unet-ag-ms-ds"]["model"] == "U-net-AG-MS-DS"
    assert described["unet-inc-ag-ms-ds"]["model"] == "U-net-Inc-AG-MS-DS"
    assert described["siamese-inc-ag-ms-ds"] == {
        "model": "Siamese U-net-Inc-AG-MS-DS",
        "loss": "FTL",
        "γ": "1",
        "L2": "1e-06",
    }
    assert described["siamese-g075-l2e4"]["γ"] == "0.75"
    assert described["siamese-g075-l2e4"]["L2"] == "0.0001"
    # Overrides touch only what they name: training comes from `detector`.
    assert models["unet-bce"]["training"] == models["siamese-inc-ag-ms-ds"]["training"]


def test_experiment_grid_errors_name_the_model():
    config = _config()
    config["experiments"]["compare"] = ["unet-ftl", "missing-model"]
    config["experiments"]["models"]["unet-ftl"] = copy.deepcopy(
        config["experiments"]["models"]["unet-ftl"]
    ) | {"training": {"patch_size": [50, 48, 48]}}
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert "'missing-model' is not defined under experiments.models" in message
    assert "experiments.models.unet-ftl.training.patch_size [50, 48, 48]" in message
    config = _config()
    config["detector"]["name"] = "subtraction"
    with pytest.raises(ConfigError, match="is the subtraction baseline's"):
        validate_config(config)


def test_summary_says_when_the_baseline_wins():
    from mschange.evaluation.report import summary_text

    summary = pd.DataFrame(
        [
            {
                "method": "model-a",
                "min_blob_voxels": 20,
                "msseg_f1_mean": 0.1,
                "to_ltpr_mean": 0.5,
                "to_ppv_mean": 0.2,
                "msseg_dice_mean": 0.3,
            },
            {
                "method": "subtraction",
                "min_blob_voxels": 20,
                "msseg_f1_mean": 0.4,
                "to_ltpr_mean": 0.9,
                "to_ppv_mean": 0.3,
                "msseg_dice_mean": 0.5,
            },
        ]
    )
    text = summary_text(
        summary,
        methods=["model-a", "subtraction"],
        baseline="subtraction",
        headline_blob=20,
        pairs_with_change=1,
        pairs_without=1,
    )
    assert "on these pairs the learned model does not beat it" in text
    assert "2 test pair(s)" in text and "1 with lesion changes, 1 without" in text


def test_report_leads_with_the_validation_set_and_shows_the_synthesis_figures(
    table_inputs, tmp_path
):
    from mschange.evaluation.validation import validation_tables_step

    metric_file, sweep_file, folder = table_inputs
    tables_step(
        [metric_file],
        [sweep_file],
        table_dir=folder / "tables",
        boxplots=folder / "box.png",
        threshold_curves=folder / "curves.png",
        methods=["model-a", "subtraction"],
        headline_blob=20,
        descriptions={},
    )
    scores = tmp_path / "scores.tsv"
    pd.DataFrame(
        [
            {
                "pair": "v-sample000",
                "subject": "v",
                "kind": "painted",
                "method": method,
                "min_blob_voxels": 20,
                "threshold": 0.1,
                "direction": "all",
                "to_ltpr": ltpr,
                "to_ppv": 0.5,
                "msseg_f1": 0.2,
                "msseg_dice": 0.3,
                "msseg_sensitivity": 0.3,
                "msseg_ppv": 0.2,
                "krueger_sensitivity": 0.4,
                "krueger_fp_count": 1,
                "predicted_lesions": 4,
            }
            for method, ltpr in (("model-a", 0.25), ("subtraction", 0.75))
        ]
    ).to_csv(scores, sep="\t", index=False)
    validation_tables_step(
        [scores],
        methods=["model-a", "subtraction"],
        summary_tsv=tmp_path / "validation.tsv",
        summary_md=tmp_path / "validation.md",
    )
    inputs = ReportInputs(
        tables={p.stem: p for p in (folder / "tables").glob("*.tsv")},
        boxplots=folder / "box.png",
        threshold_curves=folder / "curves.png",
        overlays={},
        training_curves={},
        validation=tmp_path / "validation.tsv",
        lesion_examples=folder / "box.png",
        augmentations=folder / "curves.png",
        rescan_realism=folder / "box.png",
    )
    report = build_report(
        inputs,
        methods=["model-a", "subtraction"],
        baseline="subtraction",
        headline_blob=20,
        metric_settings=MetricSettings().as_dict(),
    )
    titles = [section.title for section in report.sections]
    assert titles[0] == "Validation set"
    assert {
        "Synthetic training changes (lesion-based)",
        "Augmentation",
        "Real versus simulated no-change differences",
    } <= set(titles)
    validation = report.sections[0].tables[0].frame.set_index("method")
    assert validation.loc["model-a", "LTPR"] == pytest.approx(0.25)
    assert validation.loc["subtraction", "lesion F1 (To)"] == pytest.approx(0.6)
