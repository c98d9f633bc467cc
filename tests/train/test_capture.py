# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The captured step (train/capture.py): its fixed-shape masked loss equals the indexed loss, its eager run on CPU
equals the uncaptured step, its NaN guard leaves weights and optimizer state alone, --capture resolves as
documented; and, on a CUDA GPU, the graph gives the weights the uncaptured step gives."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from spark_distill.errors import ConfigError
from spark_distill.models.compact import DEFAULT_TARGETS, CompactStudent, compact_xs
from spark_distill.models.lora import LoRALayer, apply_adapters
from spark_distill.openpilot import contract as C
from spark_distill.train.capture import (
    CapturedStep,
    adopt_loaded_state,
    make_captured_optimizer,
    optimizer_options,
    portable_state,
    set_lr,
    use_capture,
)
from spark_distill.train.losses import LossWeights
from spark_distill.train.step import (
    Unroll,
    freeze_norms,
    loss_step,
    make_autocast,
    make_optimizer,
    masked_loss,
    optimizer_step,
)

VISION, POLICY = C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V2)
SLICES = {"vision": {k: [s.start, s.stop] for k, s in VISION.items()},
          "policy": {k: [s.start, s.stop] for k, s in POLICY.items()}}
WEIGHTS = LossWeights(gt=0.5)  # every term, the ground-truth path too
CPU = torch.device("cpu")


def student(adapter: str) -> nn.Module:
    torch.manual_seed(0)
    s = CompactStudent(compact_xs(), VISION, POLICY)
    if adapter == "none":
        s.requires_grad_(True)
    else:
        apply_adapters(s, targets=DEFAULT_TARGETS, rank=4, alpha=8.0)
        with torch.no_grad():  # adapters away from their identity start
            for m in s.modules():
                if isinstance(m, LoRALayer):
                    m.lora_b.normal_(0, 0.05)
    s.train()
    freeze_norms(s)
    return s


def batch(seed: int, *, b: int = 2, t: int = 4, mask: str = "partial", device: torch.device = CPU) -> dict[str, Any]:
    """A labeled batch as the loader collates it (fp16 labels, uint8 frames); `mask` partial, none or all."""
    g = torch.Generator().manual_seed(seed)
    nv, np_ = max(s.stop for s in VISION.values()), max(s.stop for s in POLICY.values())
    m = torch.ones(b, t, dtype=torch.bool)
    m[:, :2] = False  # burn-in
    if mask == "partial":
        m[1, t - 1] = False
    elif mask == "none":
        m[:] = False
    out = {"road": torch.randint(0, 256, (b, t, 6, 128, 256), generator=g, dtype=torch.uint8),
           "wide": torch.randint(0, 256, (b, t, 6, 128, 256), generator=g, dtype=torch.uint8),
           "desire": torch.nn.functional.one_hot(torch.randint(0, 8, (b, t), generator=g), 8).float(),
           "traffic": torch.tensor([[1.0, 0.0]] * b), "v_ego": torch.rand(b, t, generator=g) * 30,
           "start": torch.tensor([True] + [False] * (b - 1)),
           "vision": torch.randn(b, t, nv, generator=g).half(), "policy": torch.randn(b, t, np_, generator=g).half(),
           "gt_path": torch.randn(b, t, 33, 3, generator=g), "gt_valid": torch.rand(b, t, 33, generator=g) > 0.3,
           "mask": m}
    out["policy"][0, 0] = float("nan")  # a frame outside the mask without labels (a label set from a log)
    out = {k: v.to(device) for k, v in out.items()}
    out["keys"] = [f"clip{i}" for i in range(b)]
    return out


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_masked_loss_equals_the_indexed_loss_and_its_gradients() -> None:
    s = student("dora")
    unroll, autocast = Unroll(s), make_autocast(CPU, "fp32")
    data = batch(1)
    ref, ref_terms = loss_step(unroll, data, SLICES, WEIGHTS, CPU, autocast)
    ref.backward()
    ref_grads = grads(s)
    s.zero_grad(set_to_none=True)
    loss, count, terms = masked_loss(unroll, data, SLICES, WEIGHTS, autocast)
    loss.backward()
    assert int(count) == int(data["mask"].sum()) == 3
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-6 * max(1.0, abs(float(ref.detach())))
    assert terms.keys() == ref_terms.keys() >= {"plan", "plan_prob", "lanes", "edges", "lead", "probs", "gt"}
    for k, v in ref_terms.items():
        assert abs(float(terms[k]) - v) < 1e-6 * max(1.0, abs(v)), k
    for n, g in ref_grads.items():
        torch.testing.assert_close(dict(s.named_parameters())[n].grad, g, rtol=1e-5, atol=1e-6, msg=n)

    s.zero_grad(set_to_none=True)  # no frame takes a loss: zero, with zero gradients (the indexed loss has none)
    empty = batch(2, mask="none")
    assert loss_step(unroll, empty, SLICES, WEIGHTS, CPU, autocast)[0] is None
    loss, count, _ = masked_loss(unroll, empty, SLICES, WEIGHTS, autocast)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(count) == 0
    assert all(g.abs().max() == 0 for g in grads(s).values())


def reference_steps(s: nn.Module, batches: list[dict], lrs: list[float]
                    ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Today's uncaptured step (loss_step, backward, optimizer_step) over the batches: the losses, and the
    gradients of the first step."""
    params = [p for p in s.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr=lrs[0], weight_decay=0.01, device=CPU)
    unroll, autocast, losses, first = Unroll(s), make_autocast(CPU, "fp32"), [], {}
    for data, lr in zip(batches, lrs, strict=True):
        loss, _ = loss_step(unroll, data, SLICES, WEIGHTS, CPU, autocast)
        loss.backward()
        first = first or grads(s)
        optimizer_step(opt, params, lr=lr, grad_clip=1.0)
        losses.append(float(loss.detach()))
    return losses, first


def captured(s: nn.Module, lr: float = 1e-3) -> CapturedStep:
    params = [p for p in s.parameters() if p.requires_grad]
    opt = make_captured_optimizer(params, lr=lr, weight_decay=0.01, device=CPU)
    return CapturedStep(Unroll(s), params, opt, slices=SLICES, weights=WEIGHTS,
                        autocast=make_autocast(CPU, "fp32", cache=False), grad_clip=1.0, device=CPU)


@pytest.mark.parametrize("adapter", ["dora", "none"])
def test_captured_step_run_eagerly_equals_the_uncaptured_step(adapter: str) -> None:
    """DoRA: two steps (the LR moving between them), every weight within 1e-6. Trained fully: one step, every
    weight within 1e-6 where its gradient is more than rounding noise; where it is not (biases and BatchNorm
    shifts that the next BatchNorm cancels: analytically zero gradients), Adam's normalised step turns a 1e-9
    difference of summation order into any step up to the learning rate, in either implementation alike."""
    steps = 2 if adapter == "dora" else 1
    ref, mine = student(adapter), student(adapter)
    batches, lrs = [batch(3), batch(4)][:steps], [1e-3, 5e-4][:steps]
    ref_losses, ref_grads = reference_steps(ref, batches, lrs)
    step = captured(mine)
    for data, lr, want in zip(batches, lrs, ref_losses, strict=True):
        set_lr(step.opt, lr)
        out = step(data)
        assert abs(float(out.loss) - want) < 1e-6 * max(1.0, want)
        assert float(out.grad_norm) > 0
    assert not step.graphed, "no graph on CPU: the same step, eagerly"
    params = dict(mine.named_parameters())
    for (n, a), b in zip(ref.state_dict().items(), mine.state_dict().values(), strict=True):
        if n in ref_grads and adapter == "none":
            signal = ref_grads[n].abs() > 1e-5
            torch.testing.assert_close(b[signal], a[signal], rtol=1e-6, atol=1e-6, msg=n)
            assert (b - a).abs().max() <= 2.1 * lrs[0], n  # noise gradients: within Adam's step bound
        else:
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=n)  # weights and BatchNorm statistics
    first = student(adapter)
    assert any(not torch.equal(p, first.get_parameter(n)) for n, p in params.items() if p.requires_grad)


def test_nan_guard_and_empty_batches_change_no_weight_and_no_optimizer_state(monkeypatch) -> None:
    from spark_distill.models import dora as D

    s = student("dora")
    step = captured(s)
    calls, real = [], D.row_norm
    monkeypatch.setattr(D, "row_norm", lambda **kw: calls.append(1) or real(**kw))
    step(batch(5))  # optimizer state exists from here on
    assert len(calls) == sum(1 for m in s.modules() if isinstance(m, LoRALayer)), "DoRA's row norms once per step"
    before = copy.deepcopy((s.state_dict(), step.opt.state_dict()))
    bad = batch(6)
    bad["vision"][0, 3, 0] = float("nan")  # a frame inside the mask
    out = step(bad)
    assert not torch.isfinite(out.loss) and float(step.opt.found_inf) == 1.0
    out = step(batch(7, mask="none"))
    assert float(out.loss) == 0.0
    after = (s.state_dict(), step.opt.state_dict())
    for k, v in before[0].items():
        assert torch.equal(after[0][k], v), k
    for i, state in before[1]["state"].items():
        for k, v in state.items():
            assert torch.equal(after[1]["state"][i][k], v), (i, k)
    step(batch(8))
    assert float(step.opt.found_inf) == 0.0
    assert not torch.equal(s.state_dict()["gru_h.lora_b"], before[0]["gru_h.lora_b"]), "a good batch steps again"


def test_capture_setting_and_optimizer_state_across_modes() -> None:
    cuda = torch.device("cuda")
    assert use_capture("auto", cuda) == (True, None) and use_capture("auto", CPU) == (False, None)
    assert use_capture("on", CPU) == (True, None) and use_capture("off", cuda) == (False, None)
    assert use_capture("auto", cuda, world=2) == (False, None)
    on, note = use_capture("on", cuda, grad_accum=2)
    assert not on and "2 accumulated micro-batches" in note
    with pytest.raises(ConfigError, match="--capture"):
        use_capture("graph", CPU)
    # a checkpoint of the uncaptured step (foreach AdamW, float lr) resumes in a captured one, and back
    s = student("dora")
    params = [p for p in s.parameters() if p.requires_grad]
    plain = make_optimizer(params, lr=3e-4, weight_decay=0.01, device=CPU)
    for p in params:
        p.grad = torch.ones_like(p)
    plain.step()
    step = captured(s, lr=1e-3)
    options = optimizer_options(step.opt)
    step.opt.load_state_dict(plain.state_dict())
    adopt_loaded_state(step.opt, options)
    g = step.opt.param_groups[0]
    assert g["fused"] and g["lr"] == 3e-4 and step.opt.state[params[0]]["step"].dtype == torch.float32
    saved = portable_state(step.opt)
    assert isinstance(saved["param_groups"][0]["lr"], float)
    plain.load_state_dict(saved)
    # the CUDA path's bookkeeping: static inputs made from the first batch, another shape refused (runs uncaptured);
    # no capture before AdamW's state exists (a capture would allocate it, and every replay reset it)
    fresh = captured(student("dora"))
    assert fresh._stage(batch(1)) and set(fresh.static) == set(batch(1)) - {"keys"}
    assert not fresh._stage(batch(2, b=3))
    assert not fresh._stage({k: v for k, v in batch(2).items() if not k.startswith("gt")})
    assert not fresh._state_ready() and step._state_ready()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("adapter", ["dora", "none"])
def test_cuda_graph_step_equals_the_uncaptured_step(adapter: str) -> None:
    """On CUDA (bf16 autocast, channels-last; DoRA with the compiled halves as train() runs them, full training with
    the eager ones, so both kinds of forward are captured once without two compiles each): 5 steps of the captured step
    (2 eager warm-up steps, the capture, 2 replays) move the weights as the uncaptured step does (within bf16's
    tolerance), and a batch with a NaN label in a loss frame, replayed in the graph, changes no weight.
    (*) Trained fully, the weight matrices and kernels are compared: the biases and BatchNorm shifts that a following
    BatchNorm cancels have rounding-noise gradients, which Adam turns into steps of any size up to the learning rate
    in either run (on CPU in fp32 they alone make a 0.5% difference; the rest agree to 4e-6)."""
    dev = torch.device("cuda")
    batches = [batch(10 + i, b=4, t=8, device=dev) for i in range(5)]
    runs = []
    for capture in (False, True):
        torch._dynamo.reset()
        s = student(adapter).to(dev).to(memory_format=torch.channels_last)
        start = {n: p.detach().clone() for n, p in s.named_parameters() if p.requires_grad}
        unroll = Unroll(s, channels_last=True)
        if adapter == "dora":
            unroll.compile_halves()
        params = [p for p in s.parameters() if p.requires_grad]
        if capture:
            opt = make_captured_optimizer(params, lr=1e-4, weight_decay=0.01, device=dev)
            step = CapturedStep(unroll, params, opt, slices=SLICES, weights=WEIGHTS, grad_clip=1.0, device=dev,
                                autocast=make_autocast(dev, "bf16", cache=False), strict=True)
            losses = []
            for data in batches:
                set_lr(opt, 1e-4)
                losses.append(float(step(data).loss))
            assert step.graphed
            frozen = {n: p.detach().clone() for n, p in s.named_parameters() if p.requires_grad}
            bad = dict(batches[0])
            bad["vision"] = bad["vision"].clone()
            bad["vision"][0, 5, 0] = float("nan")
            assert not torch.isfinite(step(bad).loss)
            for n, p in s.named_parameters():
                if p.requires_grad:
                    assert torch.equal(p, frozen[n]), n
        else:
            opt = make_optimizer(params, lr=1e-4, weight_decay=0.01, device=dev)
            autocast, losses = make_autocast(dev, "bf16"), []
            for data in batches:
                loss, _ = loss_step(unroll, data, SLICES, WEIGHTS, dev, autocast)
                loss.backward()
                optimizer_step(opt, params, lr=1e-4, grad_clip=1.0)
                losses.append(float(loss.detach()))
        delta = torch.cat([(p.detach() - start[n]).flatten().float() for n, p in s.named_parameters()
                           if p.requires_grad and (adapter == "dora" or p.dim() > 1)])  # (*)
        runs.append((losses, delta))
    (ref_losses, ref_delta), (losses, delta) = runs
    assert ref_delta.norm() > 0
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=2e-2, atol=1e-3)
    assert float((delta - ref_delta).norm() / ref_delta.norm()) < 0.05, "the weights moved alike"


def test_training_with_the_captured_step_resumes_exactly(labeled, tmp_path) -> None:
    """`train --capture on` on CPU (the captured step, eagerly): a run paused mid-epoch and resumed ends with the
    adapters of the uninterrupted run, bit for bit; the loss terms and the LR are logged."""
    import json

    from safetensors.torch import load_file

    from spark_distill.models.checkpoint import latest_checkpoint
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    def cfg(runs, **kw) -> TrainConfig:
        return TrainConfig(root=labeled, labels="set", run="r", runs_dir=runs, student="compact-xs", adapter="dora",
                           batch_size=2, epochs=2, lr=3e-3, warmup_steps=2, burn_in=4, val_fraction=0,
                           mask_warmup=False, workers=1, log_every=1, adapter_rank=4, adapter_alpha=8.0, device="cpu",
                           capture="on", max_steps=3, **kw)

    straight = train(cfg(tmp_path / "a"))
    assert train(cfg(tmp_path / "b", stop_at=1)).steps == 1
    resumed = train(cfg(tmp_path / "b", resume=True))
    assert straight.steps == resumed.steps == 3
    a, b = (load_file(str(latest_checkpoint(tmp_path / x / "r" / "checkpoints") / "adapter.safetensors"))
            for x in "ab")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x) for x in (tmp_path / "a" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {"loss", "plan", "lanes", "lr", "grad_norm"} <= set(lines[0])
    assert lines[0]["lr"] == pytest.approx(1.5e-3) and lines[1]["lr"] == pytest.approx(3e-3)


def test_a_failed_capture_warns_hands_its_memory_back_and_steps_uncaptured(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """In auto mode a capture that raises (on an H100: an operation the capture refused) leaves the same step
    running eagerly, with one warning; the failed capture's memory goes back to the device first (before, the
    eager steps that followed ran out of memory with 69 GB reserved by PyTorch but unallocated)."""
    import contextlib

    calls: list[str] = []

    @contextlib.contextmanager
    def refusing_graph(_graph: object, **_kw: object):  # refuses at once: a fake body would run the step for real
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        yield

    class Stream:
        def wait_stream(self, _other: object) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", refusing_graph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *_a: Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *_a: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda _s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *_a: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    s, ref = student("dora"), student("dora")
    params = [p for p in s.parameters() if p.requires_grad]
    opt = make_captured_optimizer(params, lr=1e-3, weight_decay=0.01, device=CPU)
    step = CapturedStep(Unroll(s), params, opt, slices=SLICES, weights=WEIGHTS, autocast=make_autocast(CPU, "fp32"),
                        grad_clip=1.0, device=CPU)
    step.cuda = True  # the CUDA path, with torch.cuda's capture calls faked
    batches = [batch(k) for k in range(4)]
    with caplog.at_level("WARNING", logger="spark_distill.train.capture"):
        losses = [float(step(b).loss) for b in batches]
    assert step.failed and not step.graphed
    assert calls == ["synchronize", "empty_cache"], "the failed capture's memory is handed back, once"
    warned = [r.getMessage() for r in caplog.records if r.name == "spark_distill.train.capture"]
    assert len(warned) == 1 and "previous error during capture" in warned[0] and "runs uncaptured" in warned[0]
    want, _ = reference_steps(ref, batches, [1e-3] * 4)
    np.testing.assert_allclose(losses, want, rtol=1e-5)
