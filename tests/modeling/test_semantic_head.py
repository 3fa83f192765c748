import torch
from detectron2.layers import ShapeSpec

from panoptic_ext.modeling import SemanticFPNHead, semantic_loss


def _head(**kw):
    shapes = {f"p{i}": ShapeSpec(channels=16, stride=2**i) for i in range(2, 6)}
    args = dict(num_classes=5, conv_dims=32, common_stride=4, norm="GN", ignore_value=255)
    args.update(kw)
    return SemanticFPNHead(shapes, **args)


def _features(n=2, size=64):
    return {f"p{i}": torch.randn(n, 16, size // 2**i, size // 2**i) for i in range(2, 6)}


def test_structure_matches_paper_and_detectron2_names():
    head = _head()
    # P2 is already at 1/4: one conv, no upsampling. P5 needs three conv + 2x up stages.
    assert [type(m).__name__ for m in head.p2] == ["Conv2d"]
    assert [type(m).__name__ for m in head.p5] == ["Conv2d", "Upsample"] * 3
    keys = set(head.state_dict())
    assert {"p2.0.weight", "p2.0.norm.weight", "p5.4.weight", "predictor.weight"} <= keys
    assert "p2.0.bias" not in keys  # GN replaces the conv bias


def test_output_shapes_train_and_eval():
    head = _head().eval()
    logits, losses = head(_features())
    assert logits.shape == (2, 5, 64, 64) and losses == {}
    assert head.layers(_features()).shape == (2, 5, 16, 16)


def test_loss_ignores_255_pixels():
    head = _head(loss_weight=0.5).train()
    feats = _features(n=1)
    target = torch.randint(0, 5, (1, 64, 64))
    loss = head(feats, target)[1]["loss_sem_seg"]
    # The loss is the mean over non-ignored pixels only.
    target2 = target.clone()
    target2[:, :32] = 255
    logits = head.upsample(head.layers(feats).float())
    expected = torch.nn.functional.cross_entropy(logits, target2, ignore_index=255) * 0.5
    got = head(feats, target2)[1]["loss_sem_seg"]
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, loss)


def test_all_ignored_gives_zero_loss_with_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = semantic_loss(logits, torch.full((1, 4, 4), 255), 255)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
