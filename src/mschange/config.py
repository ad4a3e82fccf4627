"""Validation of the workflow configuration against its schema, before any job starts.

``jsonschema`` is imported where it is used: the merging and defaults here also serve
scripts on machines without it (benchmarks/gpu_check.py on a bare GPU machine).
"""

from __future__ import annotations

import copy
import math
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jsonschema


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("mschange.schemas").joinpath(f"{name}.schema.yaml").read_text()
    schema: dict[str, Any] = yaml.safe_load(text)
    return schema


def setting_schema(*keys: str) -> dict[str, Any]:
    """The config schema's rule for one setting, e.g. ``("detector", "inference",
    "kappa")``."""
    node = load_schema("config")
    for key in keys:
        node = node["properties"][key]
    return node


def schema_default(*keys: str) -> Any:
    """The config schema's default of a setting, e.g. ``("preprocessing", "registration",
    "sampling_points")``: code outside the workflow takes its defaults from here."""
    return copy.deepcopy(setting_schema(*keys)["default"])


def section_defaults(*keys: str, **values: Any) -> dict[str, Any]:
    """A config section as the schema fills it, with ``values`` set on top, e.g.
    ``section_defaults("preprocessing", resolution_mm=1.0)``: the settings a run of the
    defaults uses, for code outside the workflow (benchmarks, tests)."""
    section = copy.deepcopy(values)
    _fill_defaults(section, setting_schema(*keys))
    return section


def check_setting(value: Any, *keys: str) -> str | None:
    """What is wrong with ``value`` for the setting ``keys`` (None: nothing), by the
    config schema's rule, so that options given outside a config file (``mschange
    predict``'s) follow the workflow's rules. NaN and infinities are refused (JSON Schema
    lets NaN through every bound)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    try:
        import jsonschema
    except ImportError:  # only outside an install (the bare GPU machine of gpu_check.py)
        return None
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(setting_schema(*keys)).iter_errors(value)
    )
    return None if error is None else error.message


def _fill_defaults(instance: Any, schema: dict[str, Any]) -> None:
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key not in instance and sub.get("type") == "object":
            instance[key] = {}
        if key in instance:
            _fill_defaults(instance[key], sub)


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return (
            f"unknown config key(s) {', '.join(repr(u) for u in unknown)} under {where}; "
            f"allowed: {', '.join(allowed)}"
        )
    return f"config key {where}: {error.message}"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with defaults filled in, or raise :class:`ConfigError`.

    Every problem is reported at once, one line each.
    """
    import jsonschema

    schema = load_schema("config")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(
            "invalid configuration:\n" + "\n".join(f"  - {_describe(e)}" for e in errors)
        )
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema)
    source = filled["cohort"]["source"]
    if source == "sheet" and not filled["cohort"].get("sheet"):
        raise ConfigError(
            "invalid configuration:\n  - cohort.source is 'sheet' but "
            "cohort.sheet (the TSV path) is missing"
        )
    if source == "bids" and not filled["cohort"].get("bids_dir"):
        raise ConfigError(
            "invalid configuration:\n  - cohort.source is 'bids' but cohort.bids_dir is missing"
        )
    problems = _consistency_problems(filled)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return filled


def _consistency_problems(config: dict[str, Any]) -> list[str]:
    """Rules across keys, which the schema cannot express."""
    problems = []
    normalize = config["preprocessing"]["normalize"]
    if normalize["low_percentile"] >= normalize["high_percentile"]:
        problems.append("preprocessing.normalize: low_percentile must be below high_percentile")
    synthesis = config["synthesis"]
    ranges = {
        "synthesis.supermix.n_segments": synthesis["supermix"]["n_segments"],
        **{
            f"synthesis.rescan.{key}": synthesis["rescan"][key]
            for key in ("slice_thickness_factor", "noise_fraction", "gamma")
        },
    }
    for key, (low, high) in ranges.items():
        if low > high:
            problems.append(f"{key}: [low, high] with low <= high, got [{low}, {high}]")
    vae = synthesis["vae"]
    factor = 2 ** len(vae["channels"])
    if any(size % factor for size in vae["crop_size"]):
        problems.append(
            f"synthesis.vae.crop_size {vae['crop_size']}: each side must be a "
            f"multiple of {factor} (2 to the number of VAE levels, "
            f"len(synthesis.vae.channels) = {len(vae['channels'])})"
        )
    problems += _detector_problems(config["detector"], "detector")
    problems += _experiment_problems(config)
    return problems


def _detector_problems(detector: dict[str, Any], where: str) -> list[str]:
    problems = []
    architecture = detector["architecture"]
    factor = 2 ** (len(architecture["channels"]) - 1)
    for key in ("training.patch_size", "inference.window"):
        section, name = key.split(".")
        size = detector[section][name]
        if size is not None and any(n % factor for n in size):
            problems.append(
                f"{where}.{key} {size}: each side must be a multiple of {factor} "
                f"(2^(levels-1), len(architecture.channels) = "
                f"{len(architecture['channels'])})"
            )
    if architecture["inception"] and any(c % 4 or c < 8 for c in architecture["channels"]):
        problems.append(
            f"{where}.architecture.channels {architecture['channels']}: Inception "
            "blocks need multiples of 4 that are >= 8"
        )
    return problems


# The classical baseline's name in every table; no detector may take it.
BASELINE_NAME = "subtraction"


def merge_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` laid over ``base`` key by key (as Snakemake layers config files)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _experiment_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    experiments = config["experiments"]
    main = config["detector"]["name"]
    names = [main, *experiments["compare"]]
    if BASELINE_NAME in names:
        problems.append(
            f"model name {BASELINE_NAME!r} is the subtraction baseline's; "
            "choose another for detector.name or experiments.compare"
        )
    if main in experiments["compare"]:
        problems.append(
            f"experiments.compare lists {main!r}, which is detector.name "
            "(the main model is always trained)"
        )
    import jsonschema

    schema = load_schema("config")["properties"]["detector"]
    validator = jsonschema.Draft202012Validator(schema)
    for name in experiments["compare"]:
        if name not in experiments["models"]:
            problems.append(
                f"experiments.compare: {name!r} is not defined under "
                f"experiments.models (defined: "
                f"{', '.join(sorted(experiments['models'])) or 'none'})"
            )
            continue
        merged = merge_config(config["detector"], experiments["models"][name])
        merged["name"] = name
        source = merged.pop("finetune_from", None)  # not a detector key: checked here
        if source is not None and (source == name or source not in names):
            others = ", ".join(n for n in names if n != name)
            problems.append(
                f"experiments.models.{name}: finetune_from {source!r} must name "
                f"another model of this run ({others})"
            )
        errors = list(validator.iter_errors(merged))
        problems += [f"experiments.models.{name}: {_describe(e)}" for e in errors]
        if not errors:
            problems += _detector_problems(merged, f"experiments.models.{name}")
    return problems


def model_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every model to train and evaluate: name -> its full ``detector`` section.

    The main model is ``detector`` itself; each name in ``experiments.compare`` is
    ``detector`` with that model's overrides applied (``config`` already validated).
    """
    detector = config["detector"]
    models = {detector["name"]: copy.deepcopy(detector)}
    for name in config["experiments"]["compare"]:
        overrides = config["experiments"]["models"][name]
        merged = merge_config(detector, overrides)
        merged["name"] = name
        # Pretrained weights belong to one model; a compared model is trained unless it
        # names its own.
        merged["pretrained"] = overrides.get("pretrained")
        models[name] = merged
    for merged in models.values():
        merged.setdefault("finetune_from", None)
    return models


def config_warnings(config: dict[str, Any]) -> list[str]:
    """Settings of a validated config that cannot take effect as a reader would expect:
    the run goes on, and the workflow prints each at parse time."""
    warnings = []
    scored = config["experiments"]["min_blob_voxels"]
    models = config["experiments"]["models"]
    settings = {
        "detector": config["detector"]["inference"].get("min_blob_voxels"),
        **{
            f"experiments.models.{name}": models[name].get("inference", {}).get("min_blob_voxels")
            for name in config["experiments"]["compare"]
        },
    }
    for where, own in settings.items():
        if own is not None and own not in scored:  # None: inherited, warned of once
            warnings.append(
                f"{where}.inference.min_blob_voxels is {own}, but every score is computed "
                f"at experiments.min_blob_voxels {scored}: it shapes only the predicted "
                f"change masks; add {own} to experiments.min_blob_voxels to score it"
            )
    return warnings
