"""ONNX Runtime, the peer a CPU user would pick, on the same model: fp32 and int8 from
`onnxruntime.quantization.quantize_dynamic`. Needs the `bench` extra (onnx, onnxruntime)."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtPair:
    """The model exported once (TorchScript exporter, dynamic batch) and its dynamic-int8 copy,
    as two CPU inference sessions with as many threads as torch uses."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        self._tmp = tempfile.TemporaryDirectory()
        fp32, int8 = Path(self._tmp.name, "fp32.onnx"), Path(self._tmp.name, "int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(fp32), dynamo=False,
                              input_names=["video"], output_names=["logits"],
                              dynamic_axes={"video": {0: "batch"}})
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing hint
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.sessions = {name: ort.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
                         for name, path in (("ort_fp32", fp32), ("ort_int8", int8))}
        self.bytes = {"ort_fp32": os.path.getsize(fp32), "ort_int8": os.path.getsize(int8)}

    def latency_ms(self, name: str, video: torch.Tensor, repeats: int) -> float:
        """Median wall time of one run, after one warm-up run."""
        session, feed = self.sessions[name], {"video": np.ascontiguousarray(video.numpy())}
        session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
