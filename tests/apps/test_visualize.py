"""tools/visualize_data.py's logic: the panoptic ground truth of builtin, synthetic and own
datasets, and the training samples after augmentation."""

import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext.apps.visualize import (
    GAP,
    draw_panoptic,
    visualize_annotations,
    visualize_dataset,
)
from panoptic_ext.engine import setup_cfg
from panoptic_ext.evaluation import PanopticGroundTruth
from tests.helpers.data import FOLDER_CATEGORIES, write_panoptic_folder
from tests.helpers.tools import FAST, SYNTHETIC_CONFIG


def _decoded(path):
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _stems(dataset):
    return {os.path.splitext(os.path.basename(d["file_name"]))[0]: d
            for d in DatasetCatalog.get(dataset)}


def test_annotation_pictures_are_named_after_images_at_their_size(data, tmp_path):
    for dataset in ("synthetic_panoptic_train_separated", "synthetic_panoptic_val"):
        out = tmp_path / dataset
        written = visualize_annotations(dataset, str(out), progress=False)
        stems = _stems(dataset)
        assert sorted(os.path.basename(p) for p in written) == sorted(f"{s}.png" for s in stems)
        for path in written:
            d = stems[os.path.splitext(os.path.basename(path))[0]]
            with Image.open(d["file_name"]) as im:
                assert _decoded(path).shape == (im.height, im.width, 3)
    assert len(visualize_annotations("synthetic_panoptic_val", str(tmp_path / "n"), num=1,
                                     progress=False)) == 1


def test_output_replacing_the_ground_truth_or_a_file_is_refused(data, tmp_path):
    gt = PanopticGroundTruth("synthetic_panoptic_val")
    before = {f: open(os.path.join(gt.root, f), "rb").read() for f in os.listdir(gt.root)}
    with pytest.raises(OSError, match=f"would replace the input {gt.root}/"):
        visualize_annotations("synthetic_panoptic_val", gt.root, progress=False)
    assert {f: open(os.path.join(gt.root, f), "rb").read() for f in before} == before
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError, match=f"--output: {tmp_path / 'f'} is a file"):
        visualize_annotations("synthetic_panoptic_val", str(tmp_path / "f"), progress=False)


def test_ground_truth_is_drawn_in_the_dataset_colours(data):
    """A segment is tinted towards its category's colour: names and ids map right."""
    dataset = "synthetic_panoptic_val_separated"
    gt = PanopticGroundTruth(dataset)
    ann = gt.annotation({"image_id": gt.image_ids[0]})
    ids = gt.read(ann)
    image = np.full((*ids.shape, 3), 128, np.uint8)  # flat grey: only the drawing has colour
    pic = draw_panoptic(image, ids, ann["segments_info"], MetadataCatalog.get(dataset),
                        gt.categories).astype(np.float32)
    for seg in ann["segments_info"]:
        cat = gt.categories[seg["category_id"]]
        if cat["isthing"]:
            continue  # things get jittered colours
        mask = ids == seg["id"]
        mean = pic[mask].mean(axis=0)
        target = np.asarray(cat["color"], np.float32)
        others = [np.asarray(c["color"], np.float32) for c in gt.categories.values()
                  if c["id"] != cat["id"] and not c["isthing"]]
        dist = np.linalg.norm(mean - (0.3 * 128 + 0.7 * target))
        assert all(dist < np.linalg.norm(mean - (0.3 * 128 + 0.7 * o)) for o in others)


def test_own_folder_through_the_config_setup(tmp_path):
    img, js, pan = write_panoptic_folder(tmp_path, "train", 2)
    spec = f"mine_train:{img}:{js}:{pan}"
    cfg = setup_cfg(SYNTHETIC_CONFIG, [*FAST, "DATASETS.TRAIN", "('mine_train_separated',)"],
                    datasets=[spec])
    written = visualize_dataset(cfg, "annotation", str(tmp_path / "vis"), progress=False)
    assert sorted(os.path.basename(p) for p in written) == ["train_000.png", "train_001.png"]
    assert MetadataCatalog.get("mine_train_separated").thing_classes == [
        c["name"] for c in sorted(FOLDER_CATEGORIES.values(), key=lambda c: c["id"])
        if c["isthing"]]
    for path in written:
        assert _decoded(path).shape == (64, 64, 3)


def test_dataloader_samples_show_instances_and_stuff_side_by_side(data, tmp_path):
    cfg = setup_cfg(SYNTHETIC_CONFIG, [*FAST, "DATALOADER.VALIDATE", "False"])
    written = visualize_dataset(cfg, "dataloader", str(tmp_path / "dl"), num=3, progress=False)
    assert len(written) == 3
    stems = _stems("synthetic_panoptic_train_separated")
    for path in written:
        name = os.path.basename(path)
        assert name.rsplit("_", 1)[0] in stems
        pic = _decoded(path)
        assert pic.shape == (256, 2 * 256 + GAP, 3)  # panel_size of INPUT.MIN_SIZE_TRAIN 64
        left, right = pic[:, :256], pic[:, 256 + GAP:]
        assert not np.array_equal(left, right)  # instances on one, the stuff map on the other
