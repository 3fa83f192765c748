"""Deployment beside the model, after Detectron2's `detectron2/export/`: nothing in
`panoptic_ext.modeling` imports it; it wraps the model from outside.

- `graphs.py`: the model's parts as ONNX graphs (dense part, box and mask heads).
- `runtime.py`: TEST.RUNTIME, the graphs compiled by OpenVINO / ONNX Runtime and checked
  against torch; `attach_runtime` / `build_inference_model` give a model its dense runner.
- `export.py`: the logic of `tools/export_model.py` (TorchScript, ONNX, OpenVINO IR).
- `numpy_pipeline.py`: torch-free; the numpy steps around the graphs and the one engine
  session. `runner_io.py`: torch-free; image reading and result writing the runners share.
  Both are copied next to an export with a `run_*_template.py`.
"""

from .runtime import AUTO_RUNTIME_ENV, RUNTIMES, attach_runtime, build_inference_model

__all__ = ["AUTO_RUNTIME_ENV", "RUNTIMES", "attach_runtime", "build_inference_model"]
