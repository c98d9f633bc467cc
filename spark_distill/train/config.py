# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The options of a training run (`TrainConfig`), their defaults and checks, and the run's config.yaml
(`write_config`, `read_config`). What the data and the memory make of the options is train/sizing.py's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spark_distill.data import files, store
from spark_distill.errors import ConfigError
from spark_distill.models.compact import PRESETS
from spark_distill.train.cache import MODES as CACHE_MODES
from spark_distill.train.capture import CAPTURE_MODES
from spark_distill.train.head_init import HEAD_INITS
from spark_distill.train.losses import LossWeights
from spark_distill.train.step import COMPILE_MODES

LR = {"none": 1e-3, "lora": 5e-4, "dora": 5e-4}  # peak AdamW LR: full training from scratch; adapters fine-tune


def default_adapter(student: str) -> str:
    """`none` for a built-in student (random weights: everything must learn), DoRA for a trained model (openpilot,
    the pre-trained student, a run)."""
    return "none" if student in PRESETS else "dora"  # "pretrained" and any folder: fine-tuning a trained model


ADAPTERS = ("dora", "lora", "none")  # "auto" resolves to one of them (sizing.default_adapter)
STUDENTS = (*PRESETS, "openpilot", "pretrained")  # pretrained: the shipped one distilled from the fitted teacher


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of `spark-distill train`."""

    root: Path
    labels: str
    run: str
    runs_dir: Path = Path("runs")
    student: str = "compact"  # compact, compact-xs (built in), pretrained (shipped, models/pretrained.py), openpilot
    # (the release in student_onnx), or a trained run / pre-trained student folder
    student_onnx: Path | None = None  # an openpilot release folder: split pair or one supercombo
    adapter: str = "auto"  # auto: none for a built-in student (random weights), dora to fine-tune a trained one
    fresh_policy: bool = False  # renew a trained compact student's recurrent half and policy heads (heads at the
    # labels' mean) and train them alone on its frozen vision: openpilot's second stage (compact.reset_policy)
    head_init: str = "label-mean"  # a fresh built-in student's head biases start at the labels' mean (random: at
    # their PyTorch init; a short run then spends its steps walking the biases out from 0 m); trained students ignore it
    adapter_rank: int = 16  # --dora-rank; >32 rarely helps DoRA on heads and projections (the DoRA paper's sweeps)
    adapter_alpha: float = 32.0  # --dora-alpha; the adapters' scale is alpha / rank
    targets: tuple[str, ...] | None = None  # module-name globs; None: the student's defaults
    train_modules: tuple[str, ...] = ()
    epochs: int = 10
    batch_size: int = 32  # clips per optimizer step; capped by the clips a loader worker gets, split into
    # accumulated micro-batches where its activations would not fit in memory (train/sizing.py)
    grad_accum: int = 1
    lr: float | None = None  # None: 1e-3 training fully, 5e-4 with adapters (train/sizing.py LR)
    weight_decay: float = 0.01
    warmup_steps: int | None = None  # None: 10% of the schedule, at most 100 steps
    grad_clip: float = 1.0
    burn_in: int = 5  # frames per clip that only warm the recurrent state (>= the 4-frame image skip)
    val_fraction: float = 0.1
    mask_warmup: bool = True  # drop labels from each segment's first 5 s (zero-history teacher outputs)
    workers: int = 0  # loader workers per rank, capped by the training shards it reads; 0: auto (train.sizing)
    seed: int = 0
    log_every: int | None = None  # None: about LOG_POINTS logged points over the schedule, every step of a short
    # run (train/sizing.py), so that any run's loss.png shows a curve
    checkpoint_every: int = 200
    feature_cached: str = "auto"  # auto: on when nothing in the vision network trains (openpilot student)
    feature_cache: str = "auto"  # feature-cached clips decoded once, held in device memory (train.cache); auto: if
    # they fit in a share of the free memory
    max_steps: int | None = None  # optimizer steps of the whole schedule, repeating the data as needed (epochs then
    # does not apply) [default: epochs of data]
    stop_at: int | None = None  # checkpoint and stop at this step without changing the schedule (resume later)
    resume: bool = False
    device: str | None = None
    amp: str = "auto"  # auto: bf16 on CUDA GPUs that have it, else fp32
    compile: str = "auto"  # torch.compile the student's two halves; auto: on CUDA (train.step.use_compile)
    capture: str = "auto"  # the whole step as one CUDA graph; auto: on CUDA in one process (train.capture)
    process_rank: int = 0  # this process among `world` (torch.distributed's rank; RANK under torchrun)
    world: int = 1
    init_method: str | None = None  # torch.distributed init URL when world > 1 ("env://" under torchrun)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.fresh_policy:
            if self.student in PRESETS or self.student == "openpilot":
                raise ConfigError(f"--fresh-policy renews the policy half of a trained compact student (pretrained or "
                                  f"a run's folder); --student {self.student} has no trained vision to keep")
            if self.adapter not in ("auto", "none"):
                raise ConfigError(f"--fresh-policy trains the renewed policy half fully (--adapter none): adapters "
                                  f"on random weights (--adapter {self.adapter}) cannot learn it")
            object.__setattr__(self, "adapter", "none")
        if self.adapter == "auto":
            object.__setattr__(self, "adapter", default_adapter(self.student))
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"unknown --adapter {self.adapter!r}; choose one of {', '.join(ADAPTERS)}")
        if self.student not in STUDENTS and not Path(self.student).exists():
            raise ConfigError(f"unknown --student {self.student!r}; choose one of {', '.join(STUDENTS)} "
                              "or give a trained run's folder")
        if (self.student == "openpilot") != (self.student_onnx is not None):
            raise ConfigError("--student openpilot takes --student-onnx DIR (the ONNX pair to fine-tune), and only it")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"unknown head init {self.head_init!r}; choose one of {', '.join(HEAD_INITS)}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        if self.feature_cache not in CACHE_MODES:
            raise ConfigError(f"--feature-cache must be one of {', '.join(CACHE_MODES)}, not {self.feature_cache!r}")
        if self.capture not in CAPTURE_MODES:
            raise ConfigError(f"--capture must be one of {', '.join(CAPTURE_MODES)}, not {self.capture!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", LR[self.adapter])
        if (min(self.epochs, self.batch_size, self.grad_accum, self.adapter_rank) < 1 or self.workers < 0
                or self.lr <= 0):
            raise ConfigError("--epochs, --batch-size, --grad-accum and --dora-rank must be >= 1, --workers >= 0 "
                              "(0: auto), --lr > 0")
        if self.log_every is not None and self.log_every < 1:
            raise ConfigError(f"--log-every must be >= 1, got {self.log_every}")


def write_config(path: Path, cfg: TrainConfig) -> None:
    """The resolved configuration as YAML (what `--config` reads back)."""
    import yaml

    plain = json.loads(json.dumps(asdict(cfg), default=str))
    plain["root"] = store.source_of(Path(cfg.root))  # the URL of a remote root, not its local mirror
    files.write_bytes_atomic(path, yaml.safe_dump(plain, sort_keys=False).encode())


RENAMED = {"rank": "adapter_rank", "alpha": "adapter_alpha", "rank_id": "process_rank"}  # config.yaml keys of
# runs written before the adapter's rank and the process's rank got names of their own: read as the new keys


def read_config(path: Path) -> dict[str, Any]:
    """A YAML mapping of option values (what write_config writes, or a user's file; a key of RENAMED is read as its
    new name); ConfigError otherwise."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    for old, new in RENAMED.items():
        if old in loaded:
            loaded.setdefault(new, loaded.pop(old))
    return loaded
