"""OpenVINO's CPU plugin swaps the calling thread's alternate signal stack; a later signal
(SIGCHLD from a DataLoader worker) then crashed the test process. keep_signal_stack restores it."""

import ctypes

import numpy as np
import pytest

from panoptic_ext.deploy.numpy_pipeline import _SignalStack, keep_signal_stack


def _current() -> tuple[int, int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    cur = _SignalStack()
    assert libc.sigaltstack(None, ctypes.byref(cur)) == 0
    return cur.ss_sp or 0, cur.ss_flags, cur.ss_size


def test_openvino_compile_keeps_the_signal_stack():
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    before = _current()
    with keep_signal_stack():
        x = ops.parameter([1, 3, 8, 8], np.float32)
        w = ops.constant(np.ones((4, 3, 3, 3), np.float32))
        conv = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
        compiled = ov.Core().compile_model(ov.Model([conv], [x]), "CPU")
        out = compiled([np.ones((1, 3, 8, 8), np.float32)])[0]
    assert out.shape == (1, 4, 8, 8) and float(out[0, 0, 4, 4]) == 27.0
    assert _current() == before


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_damaged_graph_is_named(tmp_path, engine):
    pytest.importorskip(engine)
    from panoptic_ext.deploy.numpy_pipeline import OnnxPanoptic

    (tmp_path / "dense.onnx").write_bytes(b"\x08\x07\x12\x04trun")  # an export cut short
    info = {"onnx": {"files": {"dense": "dense.onnx", "box_head": "box_head.onnx"}}}
    with pytest.raises(ValueError, match=rf"(?s){tmp_path / 'dense.onnx'} cannot be loaded by "
                                         rf"{engine} .*re-export"):
        OnnxPanoptic(str(tmp_path), info, engine=engine)


def test_missing_or_malformed_export_info_is_named(tmp_path):
    from panoptic_ext.deploy.runner_io import read_export_info

    path = tmp_path / "export_info.json"
    with pytest.raises(FileNotFoundError, match=f"{path} is missing: --model-dir"):
        read_export_info(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path} cannot be read"):
        read_export_info(str(path))
