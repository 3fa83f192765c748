"""The train loop: bf16 autocast around the forward pass, fp32 weights and updates."""

import itertools

import pytest
import torch
from detectron2.utils.events import EventStorage

from panoptic_ext.engine.train_loop import PanopticTrainLoop, parse_dtype


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.seen: list[torch.dtype] = []

    def forward(self, batch):
        out = self.conv(torch.stack([d["image"] for d in batch]))
        self.seen.append(out.dtype)
        return {"loss_toy": out.float().pow(2).mean()}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_step_autocasts_the_forward_and_keeps_fp32_weights(dtype):
    torch.manual_seed(0)
    model = _Toy().train()
    loader = itertools.repeat([{"image": torch.randn(3, 8, 8)} for _ in range(2)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = PanopticTrainLoop(model, loader, optimizer, autocast_dtype=dtype)
    before = model.conv.weight.detach().clone()
    with EventStorage(0) as storage:
        loop.storage = storage
        loop.iter = 0
        loop.run_step()
    assert model.seen == [dtype or torch.float32]
    assert model.conv.weight.dtype == torch.float32
    assert not torch.equal(model.conv.weight, before)  # the step was applied


def test_dtype_names():
    assert parse_dtype("bf16", "SOLVER.AMP.DTYPE") is torch.bfloat16
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE"):
        parse_dtype("int8", "SOLVER.AMP.DTYPE")
