"""Triton Python-backend model that runs this version's ``model.onnx`` with onnxruntime.

Kinfer writes this file as the version's ``model.py`` beside a pushed ONNX file when
ONNX_BACKEND=python (the local Triton of the nvidia-pytriton wheel has only the Python
backend); production serves the same ONNX file with Triton's onnxruntime backend. The
tensors come from the model config Kinfer generated, so one file serves every ONNX model.
Self-contained on purpose: Triton's backend stub imports it, not Kinfer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class TritonPythonModel:
    """One onnxruntime session per instance; a dynamic batch of requests is one ``run``."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self._batched = int(config.get("max_batch_size", 0)) > 0
        self._inputs = [t["name"] for t in config["input"]]
        self._outputs = [(t["name"], len(t.get("dims", [])) + (1 if self._batched else 0)) for t in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._ranks = {i.name: len(i.shape) for i in self._session.get_inputs()}

    def execute(self, requests: list[Any]) -> list[Any]:
        if not self._batched:
            return [self._answer(self._run({n: self._input(r, n) for n in self._inputs}), None) for r in requests]
        per_request = [{n: self._input(r, n) for n in self._inputs} for r in requests]
        counts = [len(feed[self._inputs[0]]) for feed in per_request]
        feed = {n: np.concatenate([f[n] for f in per_request]) for n in self._inputs}
        try:
            outputs = self._session.run([name for name, _ in self._outputs], self._fit(feed))
        except Exception as exc:  # onnxruntime raises its own types: answer every request
            return [
                self._pb.InferenceResponse(error=self._pb.TritonError(f"onnxruntime failed: {exc}")) for _ in requests
            ]
        bounds = np.cumsum([0, *counts])
        return [self._answer(outputs, (int(lo), int(hi))) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def _input(self, request: object, name: str) -> np.ndarray[Any, Any]:
        found: np.ndarray[Any, Any] = self._pb.get_input_tensor_by_name(request, name).as_numpy()
        return found

    def _fit(self, feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Drop the trailing [1] Triton adds to a per-row scalar (config dims [1], reshape [])."""
        fitted: dict[str, np.ndarray[Any, Any]] = {}
        for name, array in feed.items():
            rank = self._ranks.get(name, array.ndim)
            while array.ndim > rank and array.shape[-1] == 1:
                array = array.reshape(array.shape[:-1])
            fitted[name] = array
        return fitted

    def _run(self, feed: dict[str, np.ndarray[Any, Any]]) -> list[Any] | Exception:
        try:
            return list(self._session.run([name for name, _ in self._outputs], self._fit(feed)))
        except Exception as exc:
            return exc

    def _answer(self, outputs: list[Any] | Exception, rows: tuple[int, int] | None) -> object:
        pb = self._pb
        if isinstance(outputs, Exception):
            return pb.InferenceResponse(error=pb.TritonError(f"onnxruntime failed: {outputs}"))
        tensors = []
        for (name, rank), array in zip(self._outputs, outputs, strict=True):
            array = np.asarray(array)
            if rows is not None:
                array = array[rows[0] : rows[1]]
            while array.ndim < rank:
                array = array.reshape(*array.shape, 1)
            tensors.append(pb.Tensor(name, np.ascontiguousarray(array)))
        return pb.InferenceResponse(output_tensors=tensors)
