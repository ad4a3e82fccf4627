"""Each setting has one source: the config schema owns every default, the settings
dataclasses agree with it, and a config whose settings cannot take effect is flagged."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import pytest
import yaml

from mschange.config import config_warnings, setting_schema, validate_config

from .conftest import REPO

# Settings dataclass -> the config section it is built from, and the prefix its fields
# carry there (the lesion bank's volume bounds are bank_min_volume_mm3, ...).
SETTINGS_SECTIONS = [
    ("mschange.detection.inference.InferenceSettings", ("detector", "inference"), ""),
    ("mschange.detection.network.DetectorArchitecture", ("detector", "architecture"), ""),
    ("mschange.detection.loss.LossSettings", ("detector", "loss"), ""),
    ("mschange.detection.training.DetectorTrainingSettings", ("detector", "training"), ""),
    (
        "mschange.detection.augment.AugmentationSettings",
        ("detector", "training", "augmentation"),
        "",
    ),
    ("mschange.synthesis.vae.VaeArchitecture", ("synthesis", "vae"), ""),
    ("mschange.synthesis.vae_training.VaeTrainingSettings", ("synthesis", "vae"), ""),
    ("mschange.synthesis.supermix.SuperMixSettings", ("synthesis", "supermix"), ""),
    ("mschange.synthesis.rescan.RescanSettings", ("synthesis", "rescan"), ""),
    ("mschange.synthesis.lesions.LesionBankSettings", ("synthesis", "lesions"), "bank_"),
    ("mschange.synthesis.lesions.LesionPaintSettings", ("synthesis", "lesions"), ""),
    ("mschange.evaluation.metrics.MetricSettings", ("evaluation", "metrics"), ""),
]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize(
    ("dotted", "section", "prefix"),
    SETTINGS_SECTIONS,
    ids=[row[0].rsplit(".", 1)[1] for row in SETTINGS_SECTIONS],
)
def test_settings_dataclass_defaults_are_the_schemas(dotted, section, prefix):
    module, name = dotted.rsplit(".", 1)
    settings = getattr(importlib.import_module(module), name)
    properties = setting_schema(*section)["properties"]
    compared = {}
    for field in dataclasses.fields(settings):
        rule = properties.get(prefix + field.name)
        if rule is None or "default" not in rule:
            continue
        compared[field.name] = (_plain(_default(field)), _plain(rule["default"]))
    # The table above must pair each class with its real section.
    assert len(compared) >= 2, f"{name}: no field found under {'.'.join(section)}"
    disagree = {key: pair for key, pair in compared.items() if pair[0] != pair[1]}
    assert not disagree, f"{name} (dataclass default, schema default): {disagree}"


def _config(**detector_inference: Any) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.setdefault("detector", {}).setdefault("inference", {}).update(detector_inference)
    return validate_config(config)


def test_a_blob_size_that_is_never_scored_is_flagged():
    assert config_warnings(_config()) == []
    assert config_warnings(_config(min_blob_voxels=100)) == []  # scored: in [20, 100]
    warnings = config_warnings(_config(min_blob_voxels=7))
    assert len(warnings) == 1
    assert "detector.inference.min_blob_voxels is 7" in warnings[0]
    assert "experiments.min_blob_voxels [20, 100]" in warnings[0]


def test_an_experiment_model_inherits_without_a_second_warning():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["detector"]["inference"] = {"min_blob_voxels": 7}
    config["experiments"] = {
        "models": {
            "other": {"inference": {"min_blob_voxels": 9}},
            "same": {"loss": {"alpha": 0.5}},
        },
        "compare": ["other", "same"],
    }
    warnings = config_warnings(validate_config(config))
    assert [w.split(" is ")[0] for w in warnings] == [
        "detector.inference.min_blob_voxels",
        "experiments.models.other.inference.min_blob_voxels",
    ]


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "presets").glob("*.yaml")))
def test_no_preset_sets_what_cannot_take_effect(preset):
    from mschange.config import merge_config

    config = merge_config(
        yaml.safe_load((REPO / "config.yaml").read_text()),
        yaml.safe_load((REPO / "presets" / preset).read_text()) or {},
    )
    assert config_warnings(validate_config(config)) == []
