"""Uncertainty loss balancing: the log-variances learn (toward each task's loss scale), start
exactly at the fixed weights, log the effective weights, get no weight decay, and travel in
checkpoints both ways (a "fixed" / Detectron2 checkpoint loads into a balanced model and back).
"""

import math

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from panoptic_ext.engine import Trainer
from panoptic_ext.engine.weights import load_weights
from panoptic_ext.modeling.loss_balancing import LossBalancer, build_loss_balancer

from .test_meta_arch import _batch, _cfg

UNCERTAINTY = ["MODEL.PANOPTIC_EXT.LOSS_BALANCING", "uncertainty"]


def test_log_variances_learn_each_tasks_scale_on_a_toy_problem():
    """Two regression tasks whose losses differ 20x: the learned weights move from 1 and end
    near 1 / loss (the equilibrium of exp(-s) * L + s), the larger loss weighted less."""
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    balancer = LossBalancer({"small": ("loss_small",), "large": ("loss_large",)})
    opt = torch.optim.SGD([*net.parameters(), *balancer.parameters()], lr=0.1)
    x = torch.randn(64, 4)
    target = torch.stack([x[:, 0], 20 * x[:, 1]], 1) + torch.randn(64, 2) * torch.tensor([
        0.3, 6.0])
    for _ in range(120):
        pred = net(x)
        raw = {"loss_small": (pred[:, 0] - target[:, 0]).abs().mean(),
               "loss_large": (pred[:, 1] - target[:, 1]).abs().mean()}
        total = sum(balancer(raw).values())
        opt.zero_grad()
        total.backward()
        opt.step()
    s_small, s_large = (balancer.log_var(g).item() for g in ("small", "large"))
    assert s_small < -0.5 and s_large > 1.0, (s_small, s_large)  # moved from 0, apart
    assert s_large == pytest.approx(math.log(raw["loss_large"].item()), abs=0.3)
    assert s_small == pytest.approx(math.log(raw["loss_small"].item()), abs=0.3)


def _losses(model, batch):
    torch.manual_seed(0)
    with EventStorage(0) as storage:
        return model(batch), storage


def test_starts_at_the_fixed_weights_and_logs_the_effective_ones():
    torch.manual_seed(0)
    fixed = build_model(_cfg())
    balanced = build_model(_cfg(*UNCERTAINTY))
    # "fixed" is the model as before: no new tensor, the same state dict
    assert [k for k in balanced.state_dict() if k not in fixed.state_dict()] == [
        "loss_balancer.log_var_semantic", "loss_balancer.log_var_instance"]
    assert fixed.loss_balancer is None and fixed.no_weight_decay_params() == []
    balanced.load_state_dict(fixed.state_dict(), strict=False)
    batch = _batch()
    a, _ = _losses(fixed, batch)
    b, storage = _losses(balanced, batch)
    for k, v in a.items():  # s = 0: bit-identical terms
        assert torch.equal(b[k], v), k
    assert b["loss_balancing_semantic"].item() == b["loss_balancing_instance"].item() == 0.0
    with torch.no_grad():
        balanced.loss_balancer.log_var_semantic.fill_(0.7)
    c, storage = _losses(balanced, batch)
    assert torch.allclose(c["loss_sem_seg"], a["loss_sem_seg"] * math.exp(-0.7))
    assert torch.equal(c["loss_mask"], a["loss_mask"])
    logged = {k: v[0] for k, v in storage.latest().items() if k.startswith("loss_weight/")}
    # SEM_SEG_HEAD.LOSS_WEIGHT 0.5 (Base-Panoptic-FPN.yaml), then the learned factor
    assert logged["loss_weight/loss_sem_seg"] == pytest.approx(0.5 * math.exp(-0.7))
    assert logged["loss_weight/loss_cls"] == pytest.approx(1.0)
    assert len(logged) == 6


def test_checkpoints_load_both_ways(tmp_path):
    torch.manual_seed(0)
    balanced = build_model(_cfg(*UNCERTAINTY, "MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS", "term"))
    assert len(balanced.no_weight_decay_params()) == 6
    with torch.no_grad():
        balanced.loss_balancer.log_var_loss_mask.fill_(-0.25)
    DetectionCheckpointer(balanced, str(tmp_path)).save("balanced")
    fixed = build_model(_cfg())
    DetectionCheckpointer(fixed, str(tmp_path)).save("fixed")

    again = build_model(_cfg(*UNCERTAINTY, "MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS", "term"))
    report = load_weights(again, str(tmp_path / "balanced.pth"), purpose="test")
    assert not report.partial
    assert again.loss_balancer.log_var_loss_mask.item() == -0.25
    # a "fixed" (or Detectron2) checkpoint into a balanced model, also for inference (no
    # allow_partial): the training-only log-variances are not required from the file
    report = load_weights(again, str(tmp_path / "fixed.pth"), purpose="evaluation")
    assert not report.partial and report.missing == []
    assert report.total == len(again.state_dict()) - len(again.loss_balancer.param_names())
    assert again.loss_balancer.log_var_loss_mask.item() == -0.25  # untouched: not in the file
    fresh = build_model(_cfg(*UNCERTAINTY))
    load_weights(fresh, str(tmp_path / "fixed.pth"), purpose="training", allow_partial=True)
    assert fresh.loss_balancer.factors() == {"semantic": 1.0, "instance": 1.0}
    # and a balanced checkpoint into a "fixed" model: every model tensor loads
    report = load_weights(build_model(_cfg()), str(tmp_path / "balanced.pth"), purpose="test")
    assert not report.partial and len(report.unexpected) == 6


def test_optimizer_does_not_decay_the_log_variances():
    cfg = _cfg(*UNCERTAINTY)
    model = build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.loss_balancer.log_var_semantic)] == 0.0
    assert decay[id(model.loss_balancer.log_var_instance)] == 0.0
    assert decay[id(model.sem_seg_head.predictor.weight)] == cfg.SOLVER.WEIGHT_DECAY > 0
    assert len(decay) == len(list(model.parameters()))


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"LOSS_BALANCING=.*'fixed', 'uncertainty'"):
        build_loss_balancer(_cfg("MODEL.PANOPTIC_EXT.LOSS_BALANCING", "learned"))
    with pytest.raises(ValueError, match=r"LOSS_BALANCING_GROUPS=.*'task', 'term'"):
        build_loss_balancer(_cfg(*UNCERTAINTY, "MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS", "x"))
    with pytest.raises(KeyError, match="loss_keypoint"):
        LossBalancer({"a": ("loss_a",)})({"loss_a": torch.ones(()),
                                          "loss_keypoint": torch.ones(())})


def test_resume_with_another_balancing_names_the_setting():
    from detectron2.config import get_cfg

    from panoptic_ext.config import add_panoptic_config
    from panoptic_ext.modeling.loss_balancing import balancing_setting, check_resumed_balancing

    def setting(mode, groups):
        cfg = add_panoptic_config(get_cfg())
        cfg.MODEL.PANOPTIC_EXT.LOSS_BALANCING, cfg.MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS = (
            mode, groups)
        return balancing_setting(cfg)

    fixed = setting("fixed", "term")
    assert fixed == setting("fixed", "task")  # no parameters either way
    task, term = setting("uncertainty", "task"), setting("uncertainty", "term")
    check_resumed_balancing(task, task)
    check_resumed_balancing(None, task)  # an older checkpoint: nothing recorded
    with pytest.raises(ValueError, match=r"LOSS_BALANCING_GROUPS 'task' in x.pth, 'term' now"):
        check_resumed_balancing(task, term, "x.pth")
    with pytest.raises(ValueError, match=r"LOSS_BALANCING 'fixed' in .*'uncertainty' now; "
                                         r".*LOSS_BALANCING_GROUPS '\(unused\)'"):
        check_resumed_balancing(fixed, task)
