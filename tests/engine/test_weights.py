"""The one weights loader: empty, missing, unreadable, foreign or misfitting files are errors
naming the file (and the key with both shapes); fine-tuning opts in to a partial load."""

import pickle

import pytest
import torch
from torch import nn

from panoptic_ext.engine import weights as weights_mod
from panoptic_ext.engine.checkpoint import AtomicCheckpointer
from panoptic_ext.engine.weights import (
    HeadShapeMismatch,
    WeightsError,
    load_weights,
    read_checkpoint,
)


def _model(things: int = 2, stuff: int = 3) -> nn.Module:
    """Parameter names as in PanopticFPNExt, tiny shapes."""
    predictor = nn.ModuleDict({"cls_score": nn.Linear(4, things + 1)})
    return nn.ModuleDict({
        "backbone": nn.ModuleDict({"stem": nn.Conv2d(3, 4, 1)}),
        "roi_heads": nn.ModuleDict({"box_predictor": predictor}),
        "sem_seg_head": nn.ModuleDict({"predictor": nn.Conv2d(4, stuff + 1, 1)}),
    })


def _save(path, model: nn.Module):
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    return str(path)


def test_full_load_copies_every_tensor(tmp_path):
    src, dst = _model(), _model()
    report = load_weights(dst, _save(tmp_path / "m.pth", src), purpose="evaluation")
    assert report.loaded == report.total == 6 and not report.partial
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_empty_weights_refused_for_inference_allowed_for_training():
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS is empty: the demo needs trained"):
        load_weights(_model(), "", purpose="the demo")
    assert load_weights(_model(), "", purpose="training", allow_partial=True).loaded == 0


@pytest.mark.parametrize("allow_partial", [False, True])
def test_unusable_files_are_named(tmp_path, allow_partial):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=f"{missing}: no such file"):
        load_weights(_model(), str(missing), purpose="x", allow_partial=allow_partial)
    with pytest.raises(WeightsError, match="is a folder"):
        load_weights(_model(), str(tmp_path), purpose="x", allow_partial=allow_partial)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00 this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match=f"cannot read weights {garbage}"):
        load_weights(_model(), str(garbage), purpose="x", allow_partial=allow_partial)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match=f"weights {tensor} hold a Tensor, not a state dict"):
        load_weights(_model(), str(tensor), purpose="x", allow_partial=allow_partial)
    foreign = tmp_path / "foo.pth"
    torch.save({"foo": torch.zeros(2)}, foreign)
    with pytest.raises(WeightsError, match=rf"weights {foreign} hold no tensor of this model "
                                           r"\(the file has 1: foo"):
        load_weights(_model(), str(foreign), purpose="x", allow_partial=allow_partial)
    with pytest.raises(WeightsError, match="cannot read weights .*bad.pkl"):
        (tmp_path / "bad.pkl").write_bytes(b"garbage")
        load_weights(_model(), str(tmp_path / "bad.pkl"), purpose="x",
                     allow_partial=allow_partial)


def test_other_class_count_is_an_error_unless_fine_tuning(tmp_path, monkeypatch):
    path = _save(tmp_path / "coco.pth", _model(things=80, stuff=53))
    with pytest.raises(HeadShapeMismatch, match=r"(?s)coco.pth.*cls_score.*80 thing classes "
                                                r"\(shape \(81, 4\)\).*2 thing classes"):
        load_weights(_model(), path, purpose="evaluation", dataset="mine_val")
    model = _model()
    before = model.roi_heads.box_predictor.cls_score.weight.clone()
    warned = []  # the logger itself: a tool's setup_logger may stop it propagating to caplog
    monkeypatch.setattr(weights_mod.logger, "warning", lambda msg, *a: warned.append(msg))
    report = load_weights(model, path, purpose="training", allow_partial=True)
    assert report.partial and report.loaded == 2 and report.total == 6
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)  # re-initialised
    assert any("Partial load for training: 2 of 6 tensors" in w for w in warned)


def test_other_shapes_and_missing_keys_named(tmp_path):
    src = _model()
    state = src.state_dict()
    state["backbone.stem.weight"] = torch.zeros(4, 3, 3, 3)
    del state["sem_seg_head.predictor.bias"]
    path = tmp_path / "m.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_weights(_model(), str(path), purpose="export")
    msg = str(info.value)
    assert f"weights {path} do not fit the model for export: 2 of 6" in msg
    assert "backbone.stem.weight: file (4, 3, 3, 3), model (4, 3, 1, 1)" in msg
    assert "not in the file: sem_seg_head.predictor.bias" in msg
    assert load_weights(_model(), str(path), purpose="training", allow_partial=True).loaded == 4


def test_reader_handles_model_zoo_pickles_and_wrapped_state(tmp_path):
    zoo = tmp_path / "zoo.pkl"
    with open(zoo, "wb") as f:
        pickle.dump({"model": {"a": torch.zeros(1).numpy()}, "__author__": "d2"}, f)
    assert set(read_checkpoint(str(zoo))["model"]) == {"a"}
    caffe = tmp_path / "caffe.pkl"
    with open(caffe, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": torch.zeros(1).numpy(), "x_momentum": 0}}, f)
    data = read_checkpoint(str(caffe))
    assert data["matching_heuristics"] and set(data["model"]) == {"conv1_w"}


def test_resume_reads_through_the_same_reader(tmp_path):
    ckpt = AtomicCheckpointer(_model(), str(tmp_path))
    (tmp_path / "model_0000001.pth").write_bytes(b"garbage")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    with pytest.raises(WeightsError, match="cannot read weights .*model_0000001.pth"):
        ckpt.resume_or_load("", resume=True)


def test_ddp_saved_names_and_stray_tensors(tmp_path):
    """A state saved from a DDP model ("module." names) loads as Detectron2 loads it; tensors
    the model lacks are reported, not loaded."""
    src = _model()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "ddp.pth"
    torch.save({"model": state}, path)
    dst = _model()
    report = load_weights(dst, str(path), purpose="evaluation")
    assert report.loaded == report.total == 6 and report.unexpected == ["extra.weight"]
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
