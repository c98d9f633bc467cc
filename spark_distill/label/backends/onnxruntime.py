# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""ONNX Runtime on the CPU: the reference every other backend is checked against."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from spark_distill.errors import ConfigError, LabelError, MissingDependencyError, first_line
from spark_distill.openpilot.teachers import Teacher, check_batching, make_batch_dynamic

log = logging.getLogger(__name__)


class OrtBackend:
    """Runs both graphs with ONNX Runtime; batches in one call when the graph allows it, else row by row."""

    name = "onnxruntime"

    def __init__(self, teacher: Teacher, vision_model: Any, policy_model: Any, *, batch: int = 8,
                 precision: str = "auto", device: str | None = None, cache_dir: Any = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingDependencyError("the onnxruntime backend needs: pip install onnxruntime") from e
        if precision not in ("auto", "fp32"):
            raise ConfigError(f"the onnxruntime backend runs fp32 only, not {precision}")
        if device not in (None, "cpu"):
            raise ConfigError(f"the onnxruntime backend runs on the CPU, not {device}; use --backend torch for a GPU")
        self.precision, self.device, self.version = "fp32", torch.device("cpu"), ort.__version__
        self.sessions, self.batched = {}, {}
        self.paths = {role: mf.path for role, mf in teacher.models}
        for (role, mf), model in zip(teacher.models, (vision_model, policy_model), strict=False):  # combined: one
            dynamic = make_batch_dynamic(model)
            ok = batch == 1 or check_batching(model, dynamic, mf.inputs)
            if not ok:
                log.warning("%s: the graph does not batch; running it row by row", mf.path.name)
            self.batched[role] = ok
            chosen = dynamic if ok else model
            try:
                self.sessions[role] = ort.InferenceSession(chosen.SerializeToString(),
                                                           providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime's own types (Fail, InvalidGraph, NotImplemented, ...)
                raise LabelError(f"{mf.path}: ONNX Runtime cannot load it ({first_line(e)})") from e

    def _run(self, role: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {k: v.numpy() for k, v in inputs.items()}
        session = self.sessions[role]
        try:
            if self.batched[role]:
                out = session.run(None, feeds)[0]
            else:
                n = next(iter(feeds.values())).shape[0]
                out = np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
                                      for i in range(n)])
        except Exception as e:  # inputs the graph does not take (dtype, shape): the teacher does not fit the contract
            raise LabelError(f"{self.paths[role]}: ONNX Runtime cannot run it on the label pass's inputs "
                             f"({first_line(e)})") from e
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def vision(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("vision", inputs)

    def policy(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("policy", inputs)

    def step_parts(self) -> None:
        """None: ONNX Runtime runs on the host."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "device": "cpu", "onnxruntime": self.version,
                "batched": self.batched}


