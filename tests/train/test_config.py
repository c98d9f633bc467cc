# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A run's config.yaml: the keys it is written with, and runs written before the adapter's rank and the process's
rank got names of their own (`rank`, `alpha`, `rank_id`): `--config` and `--resume` still read them."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.models.checkpoint import latest_checkpoint
from spark_distill.train.config import TrainConfig, read_config, write_config


def _to_old_keys(config_yaml: Path) -> None:
    """Rewrite a config.yaml as runs written before the renaming have it (same order, the old names)."""
    old = {"adapter_rank": "rank", "adapter_alpha": "alpha", "process_rank": "rank_id"}
    text = config_yaml.read_text()
    for new, was in old.items():
        assert f"\n{new}: " in text
        text = text.replace(f"\n{new}: ", f"\n{was}: ")
    config_yaml.write_text(text)


def test_config_yaml_names_the_adapter_rank_and_the_process_rank(tmp_path: Path) -> None:
    cfg = TrainConfig(root=Path("ds"), labels="set", run="r", adapter_rank=4, adapter_alpha=8.0, process_rank=1,
                      world=2)
    write_config(tmp_path / "config.yaml", cfg)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (written["adapter_rank"], written["adapter_alpha"], written["process_rank"]) == (4, 8.0, 1)
    assert not {"rank", "alpha", "rank_id"} & set(written)
    _to_old_keys(tmp_path / "config.yaml")
    read = read_config(tmp_path / "config.yaml")
    assert (read["adapter_rank"], read["adapter_alpha"], read["process_rank"]) == (4, 8.0, 1)
    assert not {"rank", "alpha", "rank_id"} & set(read)
    (tmp_path / "both.yaml").write_text("rank: 4\nadapter_rank: 8\n")
    assert read_config(tmp_path / "both.yaml") == {"adapter_rank": 8}, "a new key wins over its old name"


def test_a_run_with_the_old_keys_resumes_exactly_and_drives_config(labeled: Path, tmp_path: Path) -> None:
    runner, runs = CliRunner(), tmp_path / "runs"
    common = ["train", str(labeled), "--labels", "set", "--student", "compact-xs", "--adapter", "dora",
              "--dora-rank", "4", "--dora-alpha", "8", "--max-steps", "4", "--burn-in", "4", "--no-mask-warmup",
              "--workers", "1", "--val-fraction", "0", "--device", "cpu", "--runs-dir", str(runs), "--checkpoint-every",
              "100"]
    r = runner.invoke(app, [*common, "--run", "straight", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "--run", "old", "--batch-size", "2", "--stop-at", "2"])
    assert r.exit_code == 0, r.output
    _to_old_keys(runs / "old" / "config.yaml")
    # the resumed run deals batches as recorded in the old file (2 clips), not as the command line now asks (3)
    r = runner.invoke(app, [*common, "--run", "old", "--batch-size", "3", "--resume"])
    assert r.exit_code == 0, r.output
    a, b = (load_file(str(latest_checkpoint(runs / run / "checkpoints") / "adapter.safetensors"))
            for run in ("straight", "old"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # --config reads the old file's adapter rank and alpha (not the option defaults 16 and 32)
    r = runner.invoke(app, ["train", str(labeled), "--labels", "set", "--config", str(runs / "old" / "config.yaml"),
                            "--run", "again", "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    again = yaml.safe_load((runs / "again" / "config.yaml").read_text())
    assert (again["adapter_rank"], again["adapter_alpha"], again["adapter"]) == (4, 8.0, "dora")
    spec = yaml.safe_load((runs / "again" / "student.json").read_text())
    assert (spec["rank"], spec["alpha"]) == (4, 8.0)
    # keys with no option of their own are read too (they were dropped silently); a misspelt one is refused
    (tmp_path / "recipe.yaml").write_text("weight_decay: 0.05\ngrad_clip: 0.5\nwarmup_steps: 1\nmax-steps: 1\n"
                                          "student: compact-xs\nresume: true\nprocess_rank: 3\n")
    r = runner.invoke(app, ["train", str(labeled), "--labels", "set", "--config", str(tmp_path / "recipe.yaml"),
                            "--run", "recipe", "--runs-dir", str(runs), "--device", "cpu", "--workers", "1",
                            "--batch-size", "2", "--no-mask-warmup", "--burn-in", "4"])
    assert r.exit_code == 0, r.output
    recipe = yaml.safe_load((runs / "recipe" / "config.yaml").read_text())
    assert (recipe["weight_decay"], recipe["grad_clip"], recipe["warmup_steps"], recipe["max_steps"]) == (0.05, 0.5,
                                                                                                           1, 1)
    assert recipe["resume"] is False and recipe["process_rank"] == 0, "a run's own state is not adopted"
    (tmp_path / "typo.yaml").write_text("weight_decy: 0.05\n")
    r = runner.invoke(app, ["train", str(labeled), "--labels", "set", "--config", str(tmp_path / "typo.yaml")])
    assert r.exit_code == 2 and "unknown key 'weight_decy'" in r.output and "weight_decay" in r.output
