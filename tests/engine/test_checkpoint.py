"""Checkpoints: written whole or not at all; head shapes that do not fit the model's classes
are named."""

import types

import pytest
import torch

from panoptic_ext.engine import HeadShapeMismatch, check_head_shapes
from panoptic_ext.engine.checkpoint import AtomicCheckpointer


def test_head_mismatch_named():
    heads = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 8),
             "sem_seg_head.predictor.weight": torch.zeros(4, 8, 1, 1)}
    model = types.SimpleNamespace(state_dict=lambda: heads)
    ckpt = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 8),
            "sem_seg_head.predictor.weight": torch.zeros(4, 8, 1, 1)}
    with pytest.raises(HeadShapeMismatch, match=r"cls_score.*80 thing classes.*2 thing"):
        check_head_shapes(model, ckpt, strict=True, dataset="mine")
    problems = check_head_shapes(model, ckpt)  # fine-tuning: a warning, no error
    assert len(problems) == 1 and "box classifier" in problems[0]


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000000", iteration=0)
    good = (tmp_path / "model_0000000.pth").read_bytes()

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000001", iteration=1)
    assert not (tmp_path / "model_0000001.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert (tmp_path / "model_0000000.pth").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]


def test_pointer_to_missing_checkpoint_is_an_error(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model_0000009.pth"):
        ckpt.resume_or_load("", resume=True)


def test_failed_save_names_the_file_and_stops_before_the_final_evaluation(tmp_path, monkeypatch):
    from detectron2.engine import hooks

    from panoptic_ext.engine import Trainer
    from panoptic_ext.engine.checkpoint import CheckpointSaveError

    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    ckpt.save("model_0000000", iteration=0)

    def full_disk(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError, match=rf"cannot write {tmp_path}/model_final.pth: "
                                                  r"\[enforce fail.*the previous checkpoint "
                                                  rf"\({tmp_path}/model_0000000.pth\) is intact"):
        ckpt.save("model_final")
    # the trainer's end after the failed save at the last iteration: no evaluation
    evaluated = []
    trainer = Trainer.__new__(Trainer)
    trainer.checkpointer, trainer.iter, trainer.max_iter = ckpt, 3, 4
    trainer.storage = types.SimpleNamespace()
    trainer._hooks = [hooks.EvalHook(0, lambda: evaluated.append(1))]
    trainer._hooks[0].trainer = trainer
    trainer.after_train()
    assert evaluated == []
