"""Loading weights runs no code from the file: crafted .pth/.pkl files are refused (naming the
file and the type) and create nothing; the config opt-in loads trusted ones; Detectron2's
model-zoo pickles load as with plain pickle; .safetensors round trips."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from PIL import Image
from safetensors import safe_open
from torch import nn

from panoptic_ext.engine import weights as weights_mod
from panoptic_ext.engine.checkpoint import AtomicCheckpointer
from panoptic_ext.engine.convert import save_safetensors
from panoptic_ext.engine.trainer import _rng_state, _set_rng_state
from panoptic_ext.engine.weights import (
    TRUST_KEY,
    WeightsError,
    load_weights,
    read_checkpoint,
    trust_weights_file,
)
from tests.helpers.tools import SYNTHETIC_CONFIG, TINY_OPTS, synthetic_cfg, tool_main


class _MakeDir:
    """Unpickling this creates a folder (harmless, but proof that code from the file ran)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


class _Shell:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _model() -> nn.Module:
    """Detectron2's parameter names (ResNet stem, a res2 block, the box classifier), tiny."""
    torch.manual_seed(0)
    res2 = nn.ModuleList([nn.Module()])
    res2[0].conv1 = Conv2d(4, 4, 1, bias=False, norm=FrozenBatchNorm2d(4))
    bottom_up = nn.Module()
    bottom_up.stem = nn.Module()
    bottom_up.stem.conv1 = Conv2d(3, 4, 1, bias=False, norm=FrozenBatchNorm2d(4))
    bottom_up.res2 = res2
    backbone = nn.Module()
    backbone.bottom_up = bottom_up
    model = nn.Module()
    model.backbone = backbone
    model.roi_heads = nn.Module()
    model.roi_heads.box_predictor = nn.Module()
    model.roi_heads.box_predictor.cls_score = nn.Linear(4, 3)
    return model


def _arrays(model: nn.Module, seed: int = 1) -> dict[str, np.ndarray]:
    """Random float32 arrays in the shapes of `model`'s tensors, by its names."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32)
            for k, v in model.state_dict().items()}


def _crafted(path, payload, ext: str) -> str:
    """A checkpoint of `_model` whose unpickling also builds `payload`."""
    state = _model().state_dict()
    if ext == ".pth":
        torch.save({"model": state, "iteration": 7, "extra": payload}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()},
                         "__author__": "a colleague", "extra": payload}, f)
    return str(path)


@pytest.mark.parametrize("ext", [".pth", ".pkl"])
@pytest.mark.parametrize("kind", ["makedirs", "shell"])
def test_crafted_files_are_refused_and_run_nothing(tmp_path, ext, kind):
    target = tmp_path / "pwned"
    payload = _MakeDir(target) if kind == "makedirs" else _Shell(target)
    path = _crafted(tmp_path / f"evil{ext}", payload, ext)
    name = "os.makedirs" if kind == "makedirs" else f"{os.system.__module__}.system"
    for load in (lambda: read_checkpoint(path),
                 lambda: load_weights(_model(), path, purpose="the demo"),
                 lambda: load_weights(_model(), path, purpose="training", allow_partial=True)):
        with pytest.raises(WeightsError) as info:
            load()
        msg = str(info.value)
        assert f"weights {path} were refused: reading them would build {name}" in msg
        assert f"{TRUST_KEY} True" in msg and "convert_weights.py --trust-input" in msg
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"evil{ext}"]


@pytest.mark.parametrize("ext", [".pth", ".pkl"])
def test_opt_in_loads_a_trusted_file_with_a_warning(tmp_path, monkeypatch, ext):
    target = tmp_path / "ran"
    path = _crafted(tmp_path / f"trusted{ext}", _MakeDir(target), ext)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(_model(), path, purpose="evaluation")
    assert not target.exists()
    warned = []
    monkeypatch.setattr(weights_mod.logger, "warning", lambda msg, *a: warned.append(msg))
    model = _model()
    with torch.no_grad():  # other weights than the file's: the load must change them
        for p in model.parameters():
            p.add_(1.0)
    report = load_weights(model, path, purpose="evaluation", trust_file=True)
    assert target.is_dir()  # the file's code ran, as asked
    assert report.loaded == report.total == len(_model().state_dict())
    for k, v in _model().state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert any(TRUST_KEY in w and path in w and "runs any code" in w for w in warned)


def test_checkpointer_resume_reads_safely_unless_trusted(tmp_path):
    target = tmp_path / "ran"
    _crafted(tmp_path / "model_0000003.pth", _MakeDir(target), ".pth")
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(WeightsError, match=r"model_0000003.pth were refused.*os.makedirs"):
        AtomicCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert not target.exists()
    model = _model()
    extra = AtomicCheckpointer(model, str(tmp_path), trust_file=True).resume_or_load(
        "", resume=True)
    assert target.is_dir() and extra["iteration"] == 7


def test_own_checkpoint_with_trainer_state_reads_weights_only(tmp_path):
    """What Trainer.state_dict saves (optimizer, scheduler, data seed, RNG) loads without the
    opt-in, and the random streams continue exactly."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    ckpt = AtomicCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    ckpt.save("model_0000004", iteration=4, data_seed=11, rng=_rng_state())
    expected = (np.random.rand(3), random.random(), torch.rand(3))
    data = read_checkpoint(str(tmp_path / "model_0000004.pth"))
    assert data["iteration"] == 4 and data["data_seed"] == 11
    assert data["scheduler"] == scheduler.state_dict()
    assert torch.equal(data["optimizer"]["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    _set_rng_state(data["rng"])
    again = (np.random.rand(3), random.random(), torch.rand(3))
    assert np.array_equal(again[0], expected[0]) and again[1] == expected[1]
    assert torch.equal(again[2], expected[2])


# ---- Detectron2 model-zoo pickles -------------------------------------------------------------

_C2_NAMES = {  # Caffe2 blob -> our name (Detectron2's c2 conversion)
    "conv1_w": "backbone.bottom_up.stem.conv1.weight",
    "res_conv1_bn_s": "backbone.bottom_up.stem.conv1.norm.weight",
    "res_conv1_bn_b": "backbone.bottom_up.stem.conv1.norm.bias",
    "res2_0_branch2a_w": "backbone.bottom_up.res2.0.conv1.weight",
    "res2_0_branch2a_bn_s": "backbone.bottom_up.res2.0.conv1.norm.weight",
    "res2_0_branch2a_bn_b": "backbone.bottom_up.res2.0.conv1.norm.bias",
    "cls_score_w": "roi_heads.box_predictor.cls_score.weight",
    "cls_score_b": "roi_heads.box_predictor.cls_score.bias",
}


def _zoo_file(path, layout: str, protocol: int = 2) -> tuple[str, dict[str, np.ndarray]]:
    """A model-zoo pickle in `layout`; returns its path and the arrays by our names."""
    arrays = _arrays(_model())
    if layout == "detectron2":  # Detectron2 model zoo: full names
        data = {"model": arrays, "__author__": "Detectron2 Model Zoo"}
    elif layout == "heuristics":  # names without the backbone prefix, matched by suffix
        arrays = {k: v for k, v in arrays.items() if k.startswith("backbone.")}
        short = {k.replace("backbone.bottom_up.", ""): v for k, v in arrays.items()}
        data = {"model": short, "__author__": "torchvision", "matching_heuristics": True}
    else:  # bare dict of Caffe2 blobs (ImageNet R-50.pkl) or under "blobs" (Detectron1)
        blobs = {c2: arrays[ours] for c2, ours in _C2_NAMES.items()}
        # Caffe2's classifier has the background first (Detectron2 moves it last): the values
        # of the others are compared as they are.
        arrays = {ours: arrays[ours] for ours in _C2_NAMES.values() if "cls_score" not in ours}
        blobs["conv1_w_momentum"] = np.ones(1, np.float32)
        data = blobs if layout == "caffe2" else {"blobs": blobs, "lr": np.float32(0.1)}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return str(path), arrays


@pytest.mark.parametrize("layout,protocol", [("detectron2", 2), ("detectron2", 4),
                                             ("detectron2", 5), ("heuristics", 2),
                                             ("caffe2", 2), ("blobs", 4)])
def test_model_zoo_pickles_load_as_with_plain_pickle(tmp_path, layout, protocol):
    path, arrays = _zoo_file(tmp_path / "zoo.pkl", layout, protocol)
    old = _model()
    DetectionCheckpointer(old).load(path)  # Detectron2's own loader: plain pickle.load
    new = _model()
    load_weights(new, path, purpose="training", allow_partial=True)
    for k, v in old.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k
    for ours, array in arrays.items():  # the file's values arrived (not the initial ones)
        assert np.array_equal(new.state_dict()[ours].numpy(), array), ours


def test_matching_heuristics_query_applies_to_pth(tmp_path):
    """Detectron2's ``FILE?matching_heuristics=True``: short names matched by suffix."""
    arrays = _arrays(_model())
    short = {k.replace("backbone.bottom_up.", ""): torch.from_numpy(v)
             for k, v in arrays.items() if k.startswith("backbone.")}
    torch.save(short, tmp_path / "short.pth")
    path = f"{tmp_path / 'short.pth'}?matching_heuristics=True"
    assert read_checkpoint(path)["matching_heuristics"] is True
    loaded, checkpointed = _model(), _model()
    load_weights(loaded, path, purpose="training", allow_partial=True)
    AtomicCheckpointer(checkpointed).load(path)  # Detectron2's load passes the query on
    for model in (loaded, checkpointed):
        for k, v in arrays.items():
            if k.startswith("backbone."):
                assert np.array_equal(model.state_dict()[k].numpy(), v), k
    with pytest.raises(WeightsError, match="the only query Detectron2 knows"):
        read_checkpoint(f"{tmp_path / 'short.pth'}?foo=1")


def test_numpy_2_pickles_load(tmp_path):
    """numpy 2 names its array functions numpy._core.*; such files read the same."""
    path, arrays = _zoo_file(tmp_path / "np1.pkl", "detectron2", protocol=2)
    raw = open(path, "rb").read()
    assert b"numpy.core.multiarray\n" in raw
    (tmp_path / "np2.pkl").write_bytes(raw.replace(b"numpy.core.multiarray\n",
                                                   b"numpy._core.multiarray\n"))
    state = read_checkpoint(str(tmp_path / "np2.pkl"))["model"]
    assert set(state) == set(arrays)
    assert all(np.array_equal(state[k], v) for k, v in arrays.items())


def test_numpy_arrays_in_pth_read_but_object_arrays_refused(tmp_path):
    arrays = _arrays(_model())
    torch.save({"model": arrays, "step": np.int64(3)}, tmp_path / "np.pth")
    data = read_checkpoint(str(tmp_path / "np.pth"))
    assert data["step"] == 3 and all(np.array_equal(data["model"][k], v)
                                     for k, v in arrays.items())
    for ext in (".pth", ".pkl"):
        path = tmp_path / f"objects{ext}"
        state = {"model": {"a": np.array([1, "x"], dtype=object)}, "__author__": "x"}
        if ext == ".pth":
            torch.save(state, path)
        else:
            path.write_bytes(pickle.dumps(state))
        with pytest.raises(WeightsError, match=rf"objects{ext} were refused.*Object|object"):
            read_checkpoint(str(path))


# ---- safetensors ------------------------------------------------------------------------------

def test_safetensors_round_trip_of_our_checkpoint(tmp_path):
    model = _model()
    for p in model.parameters():
        p.data.normal_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    AtomicCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_final",
                                                                       iteration=9)
    out = str(tmp_path / "model_final.safetensors")
    report = save_safetensors(str(tmp_path / "model_final.pth"), out)
    assert report.tensors == len(model.state_dict()) and not report.skipped
    data = read_checkpoint(out)
    assert set(data) == {"model"}  # weights only, no optimizer
    for k, v in model.state_dict().items():
        assert torch.equal(data["model"][k], v) and data["model"][k].dtype == v.dtype
    fresh = _model()
    assert load_weights(fresh, out, purpose="evaluation").loaded == len(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        save_safetensors(str(tmp_path / "model_final.pth"), out)


@pytest.mark.parametrize("layout", ["heuristics", "caffe2"])
def test_safetensors_keeps_detectron2_name_matching(tmp_path, layout):
    path, arrays = _zoo_file(tmp_path / "zoo.pkl", layout)
    out = str(tmp_path / "zoo.safetensors")
    save_safetensors(path, out)
    with safe_open(out, framework="pt") as f:
        meta = f.metadata()
    assert meta["matching_heuristics"] == "True" and meta["source"] == "zoo.pkl"
    from_pkl, from_st = _model(), _model()
    load_weights(from_pkl, path, purpose="training", allow_partial=True)
    load_weights(from_st, out, purpose="training", allow_partial=True)
    for k, v in from_pkl.state_dict().items():
        assert torch.equal(from_st.state_dict()[k], v), k
    assert all(np.array_equal(from_st.state_dict()[k].numpy(), v) for k, v in arrays.items())


def test_convert_weights_tool(tmp_path, capsys):
    convert = tool_main("convert_weights.py")
    model = _model()
    torch.save({"model": model.state_dict(), "iteration": 1}, tmp_path / "m.pth")
    out = tmp_path / "m.safetensors"
    assert convert([str(tmp_path / "m.pth"), str(out)]) == 0
    assert f"Wrote {len(model.state_dict())} tensors" in capsys.readouterr().out
    written = out.read_bytes()
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    assert convert([str(tmp_path / "other.pth"), str(out)]) == 1
    assert f"{out} already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert convert(["--force", str(tmp_path / "other.pth"), str(out)]) == 0
    assert set(read_checkpoint(str(out))["model"]) == {"x"}
    # a crafted input stays refused; --trust-input converts a trusted one
    target = tmp_path / "ran"
    evil = _crafted(tmp_path / "evil.pkl", _MakeDir(target), ".pkl")
    assert convert([evil, str(tmp_path / "evil.safetensors")]) == 1
    assert "were refused: reading them would build os.makedirs" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "evil.safetensors").exists()
    assert convert(["--trust-input", evil, str(tmp_path / "evil.safetensors")]) == 0
    assert target.is_dir()
    state = read_checkpoint(str(tmp_path / "evil.safetensors"))["model"]
    assert all(torch.equal(state[k], v) for k, v in _model().state_dict().items())
    assert convert([str(tmp_path / "m.pth"), str(tmp_path / "m.bin")]) == 1
    assert "must end in .safetensors" in capsys.readouterr().err
    # an output that is a folder, under a file, or the input itself: named, nothing written
    (tmp_path / "d.safetensors").mkdir()
    assert convert([str(tmp_path / "m.pth"), str(tmp_path / "d.safetensors")]) == 1
    assert f"output: {tmp_path / 'd.safetensors'} is a folder" in capsys.readouterr().err
    assert convert([str(tmp_path / "m.pth"), str(tmp_path / "m.pth" / "x.safetensors")]) == 1
    assert f"{tmp_path / 'm.pth'} is a file, not a folder" in capsys.readouterr().err
    assert convert(["--force", str(out), str(out)]) == 1
    assert f"would replace the input {out}" in capsys.readouterr().err


def test_trust_key_is_checked():
    cfg = synthetic_cfg([])
    assert trust_weights_file(cfg) is False
    cfg.MODEL.PANOPTIC_EXT.TRUST_WEIGHTS_FILE = "yes"
    with pytest.raises(ValueError, match=f"{TRUST_KEY} must be True or False, got 'yes'"):
        trust_weights_file(cfg)


def test_demo_refuses_a_crafted_file(tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = _crafted(tmp_path / "model_final.pkl", _Shell(target), ".pkl")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    rc = tool_main("demo.py")(["--config-file", SYNTHETIC_CONFIG, "--input", str(image),
                               "--output", str(tmp_path / "out"), "--opts", *TINY_OPTS,
                               "MODEL.WEIGHTS", evil])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"ERROR: weights {evil} were refused" in err and f"{TRUST_KEY} True" in err
    assert not target.exists() and not (tmp_path / "out" / "a.png").exists()


def test_eval_only_and_benchmark_refuse_a_crafted_file(tmp_path):
    from benchmarks.model_speed import build_models
    from panoptic_ext.engine.trainer import evaluate_only

    target = tmp_path / "pwned"
    evil = _crafted(tmp_path / "model_final.pth", _Shell(target), ".pth")
    cfg = synthetic_cfg([*TINY_OPTS, "MODEL.WEIGHTS", evil, "OUTPUT_DIR", str(tmp_path / "o")])
    with pytest.raises(WeightsError, match=rf"weights {evil} were refused.*\.system"):
        evaluate_only(cfg)
    with pytest.raises(WeightsError, match=rf"weights {evil} were refused.*\.system"):
        build_models(cfg)
    assert not target.exists() and not (tmp_path / "o" / "inference").exists()
