# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The teacher fit: a few steps run end to end and are deterministic, the result keeps openpilot's contract,
and the shipped pair is what the current fitting code produced."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_distill.data import files
from spark_distill.errors import ConfigError
from spark_distill.synth import fit as F


def _tiny() -> F.FitConfig:
    return F.FitConfig(routes=1, seconds=2.0, vision_steps=2, vision_batch=2, policy_drives=2,
                       policy_seconds=2.0, policy_steps=2, policy_batch=4, ingested=1)


PROGRESS: list[tuple[int, int, str]] = []  # what the second tiny fit reported


@pytest.fixture(scope="module")
def fitted_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny fit (two 2 s drives, the second held out), twice: the second reports its progress."""
    base = tmp_path_factory.mktemp("fit")
    F.fit_teacher(base / "a", _tiny())
    F.fit_teacher(base / "b", _tiny(), on_progress=lambda *a: PROGRESS.append(a))
    return base / "a", base / "b"


def test_fit_reports_each_stage_from_zero_to_its_end(fitted_twice: tuple[Path, Path]) -> None:
    ends = {note: (done, total) for done, total, note in PROGRESS}  # the last report of each stage
    assert list(ends) == [f"{name} ({k + 1}/5)" for k, name in enumerate(F.FIT_STAGES)]
    assert list(ends.values()) == [(2, 2), (2, 2), (2, 2), (1, 1), (2, 2)]  # drives, drives, steps, -, steps
    firsts: dict[str, int] = {}
    for done, _, note in PROGRESS:
        firsts.setdefault(note, done)
    assert set(firsts.values()) == {0}  # each stage is shown at once, before its first drive or step ends


def test_fit_is_deterministic_and_keeps_the_contract(fitted_twice: tuple[Path, Path]) -> None:
    from spark_distill.openpilot.teachers import load_teacher

    a, b = fitted_twice
    for name in ("driving_vision.onnx", "driving_policy.onnx"):
        assert files.sha256_file(a / name) == files.sha256_file(b / name), name
    teacher, _, _ = load_teacher([a])
    assert set(teacher.policy.inputs) == {"desire", "traffic_convention", "lateral_control_params",
                                          "prev_desired_curv", "features_buffer"}
    assert teacher.layout.key == "split-lateral"
    assert set(teacher.image_inputs) == {"img", "big_img"}
    # the graphs batch (the label pass runs B segments in lockstep): no batch-1 constant is baked in
    import onnx
    import onnxruntime as ort

    from spark_distill.openpilot.teachers import make_batch_dynamic

    for name in ("driving_vision", "driving_policy"):
        session = ort.InferenceSession(make_batch_dynamic(onnx.load(a / f"{name}.onnx")).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros((3, *i.shape[1:]), np.uint8 if "uint8" in i.type else np.float32)
                 for i in session.get_inputs()}
        assert session.run(None, feeds)[0].shape[0] == 3, name
    report = json.loads((a / "fit.json").read_text())
    assert report["config"] == asdict(_tiny()) and report["source_sha256"] == F.source_digest()
    assert set(report["vision_rms_error_held_out"]) == set(F.STATE)


@pytest.mark.parametrize("contract", ["v1"])
def test_shipped_pair_is_what_the_fit_code_writes(contract: str) -> None:
    """The shipped pair came from `fit_teacher(FitConfig(contract=...))` of this very code: re-run
    `spark-distill synth-teacher spark_distill/synth/fitted/v1 --fit` after changing synth/fit.py or drive_model.py."""
    folder = F.SHIPPED / contract
    report = json.loads((folder / "fit.json").read_text())
    assert report["source_sha256"] == F.source_digest(), "fitting code changed since the pair was fitted: refit"
    assert report["config"] == asdict(F.FitConfig(contract=contract))
    for name, digest in report["files"].items():
        assert files.sha256_file(folder / name) == digest, name
    assert sum((folder / n).stat().st_size for n in F.PAIR_FILES) < 8 << 20  # package data stays small


def test_simulated_policy_feeds_have_the_contract_shapes() -> None:
    from spark_distill.synth.teacher import policy_inputs

    cfg = _tiny()
    feeds, targets = F.simulate(cfg, np.full(len(F.STATE), 0.1))
    n = cfg.policy_drives * round(cfg.policy_seconds * 20) // 2
    for name, shape in policy_inputs("v1").items():
        want = (n, *shape[1:]) if name != "features_buffer" else (n, shape[1], len(F.STATE))
        assert tuple(feeds[name].shape) == want, name
    # the plan target starts at the car and runs forward at the drive's speed
    plan = targets[:, :33 * 15].reshape(n, 33, 15)
    assert torch.all(plan[:, 0, :3].abs() < 1e-6) and torch.all(plan[:, -1, 0] > 100.0)
    desire = feeds["desire"]
    assert torch.all((desire == 0) | (desire == 1))


def test_fit_config_is_validated() -> None:
    for gone in ("v2", "v3"):  # v2 (no release shipped it) is gone: the fit has the project's own layout only
        with pytest.raises(ConfigError, match=f"unknown contract '{gone}': the fitted teacher has the project's"):
            F.FitConfig(contract=gone)
    with pytest.raises(ConfigError, match="steps"):
        F.FitConfig(vision_steps=0)
    with pytest.raises(ConfigError, match="no fitted v9"):
        F.copy_fitted(Path("/nonexistent"), "v9")


def test_cli_fit_is_tiny_only(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spark_distill.cli import app

    r = CliRunner().invoke(app, ["synth-teacher", str(tmp_path / "t"), "--fit", "--size", "bench"])
    assert r.exit_code == 2 and "--fit makes a tiny teacher" in r.output and not (tmp_path / "t").exists()
