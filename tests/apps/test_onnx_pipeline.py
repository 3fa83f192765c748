"""OpenVINO's CPU plugin swaps the calling thread's alternate signal stack; a later signal
(SIGCHLD from a DataLoader worker) then crashed the test process. keep_signal_stack restores it."""

import ctypes

import numpy as np
import pytest

from panoptic_ext.apps.onnx_pipeline import _SignalStack, keep_signal_stack


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
