# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The training loop on a synthetic labeled dataset: it learns, resumes exactly, survives a torn
checkpoint, and runs under DDP with two gloo processes."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from spark_distill.errors import ConfigError
from spark_distill.models.checkpoint import latest_checkpoint
from spark_distill.openpilot import contract as C
from spark_distill.train.config import TrainConfig
from spark_distill.train.loop import train


def _cfg(root: Path, runs: Path, **kw) -> TrainConfig:
    args = dict(root=root, labels="set", run="r", runs_dir=runs, student="compact-xs", adapter="dora", batch_size=2,
                epochs=2, lr=3e-3, warmup_steps=2, burn_in=4, val_fraction=0.25, mask_warmup=False, workers=1,
                log_every=1, checkpoint_every=3, adapter_rank=4, adapter_alpha=8.0, device="cpu")
    return TrainConfig(**(args | kw))


def test_distillation_lowers_validation_loss(labeled: Path, tmp_path: Path) -> None:
    result = train(_cfg(labeled, tmp_path, epochs=4))
    assert result.val_before is not None and result.val_after is not None
    assert result.val_after < 0.9 * result.val_before, (result.val_before, result.val_after)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "split", "loss", "plan", "lanes", "lr"} <= set(next(x for x in lines if x["split"] == "train"))
    assert [x["split"] for x in lines if x["split"] == "val"] == ["val", "val"]
    assert list((tmp_path / "r" / "tensorboard").iterdir())


def test_resume_is_exact(labeled: Path, tmp_path: Path) -> None:
    straight = train(_cfg(labeled, tmp_path / "a", max_steps=7))
    paused = train(_cfg(labeled, tmp_path / "b", max_steps=7, stop_at=4))
    assert paused.interrupted and paused.steps == 4
    resumed = train(_cfg(labeled, tmp_path / "b", max_steps=7, resume=True))
    assert straight.steps == resumed.steps == 7
    a = load_file(str(latest_checkpoint(tmp_path / "a" / "r" / "checkpoints") / "adapter.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "b" / "r" / "checkpoints") / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(_cfg(labeled, tmp_path / "a"))


def test_max_steps_repeats_the_data_past_epochs(labeled: Path, tmp_path: Path) -> None:
    one_pass = train(_cfg(labeled, tmp_path, run="one", epochs=1, batch_size=8)).steps
    result = train(_cfg(labeled, tmp_path, epochs=1, batch_size=8, max_steps=2 * one_pass + 1, checkpoint_every=100))
    assert result.steps == 2 * one_pass + 1
    state = torch.load(latest_checkpoint(tmp_path / "r" / "checkpoints") / "state.pt", weights_only=False)
    assert state["epoch"] >= 2, state["epoch"]  # passes over the training clips, though --epochs said 1


def test_fresh_policy_renews_and_trains_the_policy_half_alone(labeled: Path, tmp_path: Path) -> None:
    from spark_distill.models.restore import load_trained

    first = train(_cfg(labeled, tmp_path / "a", adapter="none", max_steps=2))
    second = train(_cfg(labeled, tmp_path / "b", student=str(first.run_dir), adapter="auto", fresh_policy=True,
                        max_steps=3))
    assert second.steps == 3
    before, after = (load_trained(r.run_dir).student.state_dict() for r in (first, second))
    renewed = load_file(str(second.run_dir / "student.safetensors"))  # the second stage's starting weights
    policy = [k for k in before if k.startswith(("policy.", "gru_x", "gru_h", "heads.policy_"))]
    vision = [k for k in before if k not in policy]
    assert policy and len(vision) > len(policy)
    for k in vision:  # frozen: weights and BatchNorm statistics as the first stage left them
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    for k in (k for k in policy if k.endswith("weight")):  # renewed, then trained
        assert not torch.equal(renewed[k], before[k]) and not torch.equal(after[k], renewed[k]), k
    n, total = second.trainable
    assert n == sum(after[k].numel() for k in policy) < total
    for bad in (dict(student="compact-xs"), dict(student=str(first.run_dir), adapter="dora")):
        with pytest.raises(ConfigError, match="--fresh-policy"):
            _cfg(labeled, tmp_path / "c", fresh_policy=True, **bad)


def test_torn_checkpoint_falls_back_to_the_previous(labeled: Path, tmp_path: Path) -> None:
    train(_cfg(labeled, tmp_path, max_steps=6))
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts][-2:] == ["step-00000003", "step-00000006"]
    (ckpts[-1] / "state.pt").write_bytes(b"torn")
    assert latest_checkpoint(tmp_path / "r" / "checkpoints") == ckpts[-2]
    resumed = train(_cfg(labeled, tmp_path, max_steps=6, resume=True))
    assert resumed.steps == 6


def _ddp_worker(rank: int, root: Path, runs: Path, url: str, out: Path) -> None:
    result = train(_cfg(root, runs, max_steps=3, process_rank=rank, world=2, init_method=url, val_fraction=0.25))
    torch.save({"steps": result.steps}, out / f"rank{rank}.pt")


def test_ddp_two_gloo_processes(labeled: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(labeled, tmp_path / "runs", f"tcp://127.0.0.1:{port}", tmp_path), nprocs=2)
    steps = [torch.load(tmp_path / f"rank{r}.pt")["steps"] for r in range(2)]
    assert steps == [3, 3]
    assert latest_checkpoint(tmp_path / "runs" / "r" / "checkpoints").name == "step-00000003"
    shutil.rmtree(tmp_path / "runs")


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_cleanly(labeled: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C does, loader workers included): the run says at once that
    it stops after the current step (piped: stderr is not a terminal), then checkpoints and exits 0."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    args = [sys.executable, "-m", "spark_distill", "train", str(labeled), "--labels", "set", "--student", "compact-xs",
            "--batch-size", "1", "--max-steps", "100000", "--val-fraction", "0", "--no-mask-warmup",
            "--workers", "2", "--runs-dir", str(tmp_path), "--run", "c", "--device", "cpu", "--burn-in", "4",
            "--log-every", "1"]  # metrics.jsonl tells when training runs (the default cadence logs every 2,500 here)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
    said: list[tuple[float, str]] = []  # (when, stderr line)
    reader = threading.Thread(target=lambda: said.extend((time.monotonic(), line) for line in proc.stderr))
    reader.start()
    metrics = tmp_path / "c" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join()
    err = "".join(line for _, line in said)
    assert proc.returncode == 0, err
    ckpt = latest_checkpoint(tmp_path / "c" / "checkpoints")
    assert ckpt is not None and re.search(r"stopped early \(resume with --resume\)\W+True", out), out
    notice = [t for t, line in said if "Ctrl-C: stopping after the current step" in line]
    assert notice and notice[0] - sent < 10, err  # at once, not when the step and its checkpoint are done
    assert "re-run with --resume" in " ".join(err.split())


def test_ctrl_c_during_the_first_validation_and_twice(labeled: Path, tmp_path: Path) -> None:
    """Ctrl-C before the first step (train reports step 0 just before its first validation): the validation is cut
    short and not recorded, no step is taken, nothing is checkpointed; Ctrl-C twice stops at once."""
    import gc
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c_at(step_to_stop: int, times: int) -> Callable[[int, int, float | None], None]:
        def report(step: int, total: int, loss: float | None) -> None:
            for _ in range(times if step == step_to_stop else 0):
                signal.raise_signal(signal.SIGINT)
        return report

    r = train(_cfg(labeled, tmp_path, max_steps=3), on_progress=ctrl_c_at(0, 1))
    assert r.interrupted and r.steps == 0 and r.val_before is None
    assert latest_checkpoint(tmp_path / "r" / "checkpoints") is None and signal.getsignal(signal.SIGINT) is before
    again = train(_cfg(labeled, tmp_path, max_steps=3))  # nothing was checkpointed: the same command starts over
    assert again.steps == 3 and again.val_before is not None and not again.interrupted
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(_cfg(labeled, tmp_path, run="twice", max_steps=6), on_progress=ctrl_c_at(2, 2))
    assert signal.getsignal(signal.SIGINT) is before
    del stopped  # its traceback holds the run's loader: its worker is stopped here, not at some later collection
    gc.collect()


def test_trained_student_restores_merged_and_seeds_a_new_run(labeled: Path, tmp_path: Path) -> None:
    from spark_distill.models.lora import LoRALayer
    from spark_distill.models.restore import load_trained

    first = train(_cfg(labeled, tmp_path, max_steps=6))
    adapted = load_trained(tmp_path / "r", merge=False)
    merged = load_trained(tmp_path / "r")
    assert merged.step == 6 and merged.adapted and not any(isinstance(m, LoRALayer) for m in merged.student.modules())
    assert any(isinstance(m, LoRALayer) for m in adapted.student.modules())
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 12, 128, 256), generator=g, dtype=torch.uint8)
    inputs = (img, img.flip(0), torch.zeros(2, 8), torch.tensor([[1.0, 0.0]] * 2), torch.randn(2, 128, generator=g),
              torch.tensor([20.0, 25.0]))  # the student reads the car's speed
    with torch.no_grad():
        for a, b in zip(adapted.student(*inputs), merged.student(*inputs), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a run started from the trained one begins where it ended: same validation loss (merged vs adapted)
    second = train(_cfg(labeled, tmp_path, run="r2", student=str(tmp_path / "r"), max_steps=2))
    assert second.val_before == pytest.approx(first.val_after, rel=1e-4)
    spec = json.loads((tmp_path / "r2" / "student.json").read_text())
    assert spec["architecture"] == {"kind": "compact", "preset": "compact-xs", "speed": True,
                                    "plan_from_speed": True}
    with pytest.raises(ConfigError, match="not a training run"):
        load_trained(tmp_path)


def test_fully_masked_batch_still_runs_backward_under_ddp(labeled: Path, tmp_path: Path) -> None:
    """A rank whose batch has no labeled frame (segment warm-up) must still take part in DDP's all-reduce."""
    import socket

    import torch.distributed as dist
    from torch import nn

    from spark_distill.data.pairs import shard_pairs
    from spark_distill.models.compact import PRESETS, CompactStudent
    from spark_distill.train.loader import ClipStream, make_loader
    from spark_distill.train.losses import LossWeights
    from spark_distill.train.step import Unroll, loss_step, make_autocast

    pairs, manifest = shard_pairs(labeled, "set", split="train", val_fraction=0)
    batch = next(iter(make_loader(ClipStream(pairs, manifest, batch=2, clip_len=10, burn_in=4, seed=0))))
    batch["mask"][:] = False
    slices = manifest["output_slices"]
    student = CompactStudent(PRESETS["compact-xs"](), {k: slice(*v) for k, v in slices["vision"].items()},
                             {k: slice(*v) for k, v in slices["policy"].items()})
    plain = Unroll(student)
    assert loss_step(plain, batch, slices, LossWeights(), torch.device("cpu"),
                     make_autocast(torch.device("cpu"), "fp32"))[0] is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(plain)
        loss, _ = loss_step(ddp, batch, slices, LossWeights(), torch.device("cpu"),
                            make_autocast(torch.device("cpu"), "fp32"))
        assert loss is not None and loss.item() == 0.0 and loss.requires_grad
        loss.backward()  # reaches the all-reduce hooks
        assert all(p.grad is not None for p in student.parameters())
    finally:
        dist.destroy_process_group()


def test_a_fresh_run_with_defaults_logs_every_step_starts_at_the_label_mean_and_notes_its_sizing(
        labeled: Path, tmp_path: Path, caplog) -> None:
    """What a newcomer's first short run gets from the defaults: head biases at the label set's mean, a logged
    point per step (a curve in loss.png), sizing changes as notes (not warnings), and whole-student
    checkpoints named weights.safetensors that a run written with the old name still loads like."""
    import dataclasses
    import logging

    import yaml

    from spark_distill.data.pairs import shard_pairs
    from spark_distill.models.restore import load_trained
    from spark_distill.train.head_init import label_means

    caplog.set_level(logging.INFO)
    cfg = TrainConfig(root=labeled, labels="set", run="d", runs_dir=tmp_path, student="compact-xs", batch_size=2,
                      max_steps=3, burn_in=4, workers=1, val_fraction=0.25, device="cpu")
    assert cfg.head_init == "label-mean" and cfg.log_every is None and cfg.adapter == "none"
    result = train(cfg)
    run = tmp_path / "d"
    # the heads start at the label set's mean outputs (of the training split)
    pairs, manifest = shard_pairs(labeled, "set", split="train", val_fraction=0.25, seed=0)
    _, policy_mean = label_means(pairs, manifest, 10)
    base = load_file(str(run / "student.safetensors"))
    plan = slice(*manifest["output_slices"]["policy"]["plan"])
    assert policy_mean[plan].abs().max() > 1.0, "the plan's mean is metres away from a fresh head's ~0"
    # less, in each hypothesis's mean, the constant-speed plan of its speed at t = 0 (plan_from_speed): x position
    # and velocity are residuals on v_ego * t, the rest of the plan is the mean's
    bias, mean = base["heads.policy_plan.bias"].view(5, -1), policy_mean[plan].view(5, -1)
    n = 33 * 15
    hyp_bias, hyp_mean = bias[:, :n].reshape(5, 33, 15), mean[:, :n].reshape(5, 33, 15)
    v0 = hyp_mean[:, 0, 3]
    assert v0.abs().min() > 1e-3, "a speed to take out (this stand-in teacher's plan is noise about 0)"
    t = torch.as_tensor(C.T_IDXS, dtype=torch.float32)
    torch.testing.assert_close(hyp_bias[..., 0], hyp_mean[..., 0] - v0[:, None] * t)
    torch.testing.assert_close(hyp_bias[..., 3], hyp_mean[..., 3] - v0[:, None])
    torch.testing.assert_close(hyp_bias[..., [1, 2, *range(4, 15)]], hyp_mean[..., [1, 2, *range(4, 15)]])
    torch.testing.assert_close(bias[:, n:], mean[:, n:])
    # a 3-step run logs every step
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logged if x["split"] == "train"] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["log_every"] == 1
    assert (run / "loss.png").stat().st_size > 10_000
    # a default the data cannot keep (the warm-up mask of 2 s segments) is a note, never a warning
    notes = [r for r in caplog.records if r.name == "spark_distill.notes"]
    assert any(r.getMessage().startswith("warm-up mask off: ") for r in notes), [r.getMessage() for r in notes]
    assert all(r.levelno == logging.INFO for r in notes)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "warm-up mask" in r.getMessage()]
    # the whole student is stored as weights.safetensors; a run that stored it as adapter.safetensors still loads
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt.name == "step-00000003" and result.steps == 3
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "state.pt", "weights.safetensors"]
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for step in (old / "checkpoints").glob("step-*"):
        (step / "weights.safetensors").rename(step / "adapter.safetensors")
        meta = json.loads((step / "meta.json").read_text())
        meta["sha256"]["adapter.safetensors"] = meta["sha256"].pop("weights.safetensors")
        (step / "meta.json").write_text(json.dumps(meta))
    new_student, old_student = load_trained(run).student.state_dict(), load_trained(old).student.state_dict()
    assert new_student.keys() == old_student.keys()
    for k in new_student:
        assert torch.equal(new_student[k], old_student[k]), k
    resumed = train(dataclasses.replace(cfg, run="old", max_steps=4, resume=True))
    assert resumed.steps == 4, "a run written with the old name resumes"


def test_loss_curve_draws_a_lone_point_and_lists_only_what_it_draws() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spark_distill.train.loop import plot_losses

    fig, ax = plt.subplots()
    try:
        assert plot_losses(ax, [{"step": 10, "split": "train", "loss": 0.5}]) == ["train"]
        (line,) = ax.get_lines()
        assert line.get_marker() not in ("None", "", " ", None) and list(line.get_xdata()) == [10]
        ax.legend()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train"]
    finally:
        plt.close(fig)


def test_log_cadence_gives_a_short_run_every_step_and_a_long_one_20_to_40_points() -> None:
    from spark_distill.train.sizing import log_cadence

    assert [log_cadence(n) for n in (1, 10, 40, 41, 80, 81, 1000)] == [1, 1, 1, 2, 2, 3, 25]
    for total in range(41, 20_000, 37):
        assert 20 <= total // log_cadence(total) <= 40, total
