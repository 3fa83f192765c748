"""Category lists -> Detectron2 metadata, and the inverse id maps predictions are written with."""

import pytest
from detectron2.data import MetadataCatalog

from panoptic_ext.data import (
    THINGS_STUFF_COLOR,
    DatasetMetadataError,
    PanopticFormatError,
    contiguous_to_dataset_ids,
    dataset_categories,
    default_datasets_root,
    panoptic_separated_metadata,
    panoptic_standard_metadata,
    semantic_label_map,
)

# Non-contiguous ids, things and stuff interleaved, unsorted.
CATEGORIES = [
    {"id": 11, "name": "wall", "isthing": 0, "color": [10, 11, 12]},
    {"id": 2, "name": "cat", "isthing": 1, "color": [1, 2, 3]},
    {"id": 3, "name": "road", "isthing": 0, "color": [4, 5, 6]},
    {"id": 7, "name": "dog", "isthing": 1, "color": [7, 8, 9]},
]


def test_separated_metadata():
    meta = panoptic_separated_metadata(CATEGORIES)
    assert meta["thing_classes"] == ["cat", "dog"]
    assert meta["thing_dataset_id_to_contiguous_id"] == {2: 0, 7: 1}
    assert meta["stuff_classes"] == ["things", "road", "wall"]
    assert meta["stuff_dataset_id_to_contiguous_id"] == {0: 0, 3: 1, 11: 2}
    assert meta["stuff_colors"][0] == THINGS_STUFF_COLOR and meta["thing_colors"][1] == [7, 8, 9]


def test_standard_metadata_shares_one_contiguous_space():
    meta = panoptic_standard_metadata(CATEGORIES)
    assert meta["thing_classes"] == meta["stuff_classes"] == ["cat", "road", "dog", "wall"]
    assert meta["thing_dataset_id_to_contiguous_id"] == {2: 0, 7: 2}
    assert meta["stuff_dataset_id_to_contiguous_id"] == {3: 1, 11: 3}


def test_metadata_refuses_incomplete_categories():
    with pytest.raises(ValueError, match="duplicate category ids"):
        panoptic_standard_metadata(CATEGORIES + CATEGORIES[:1])
    with pytest.raises(ValueError, match="lacks \\['color'\\]"):
        panoptic_separated_metadata([{"id": 1, "name": "a", "isthing": 1}])


def test_semantic_label_map_matches_separated_stuff_ids():
    labels = semantic_label_map(CATEGORIES)
    assert labels == {2: 0, 7: 0, 3: 1, 11: 2}
    stuff = panoptic_separated_metadata(CATEGORIES)["stuff_dataset_id_to_contiguous_id"]
    assert all(labels[cid] == stuff[cid] for cid in (3, 11))
    with pytest.raises(PanopticFormatError, match="twice"):
        semantic_label_map(CATEGORIES + [CATEGORIES[0]])
    with pytest.raises(PanopticFormatError, match="lacks 'id' or 'isthing'"):
        semantic_label_map([{"id": 1}])
    too_many = [{"id": i, "isthing": 0} for i in range(1, 256)]
    with pytest.raises(PanopticFormatError, match="255 stuff categories"):
        semantic_label_map(too_many)


def test_default_datasets_root(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert default_datasets_root() == "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert default_datasets_root() == "/data/d2"


@pytest.mark.parametrize("style", [panoptic_separated_metadata, panoptic_standard_metadata])
def test_contiguous_to_dataset_ids_inverts_both_maps(style):
    meta = style(CATEGORIES)
    things, stuff = contiguous_to_dataset_ids(meta, "mine")
    assert things == {v: k for k, v in meta["thing_dataset_id_to_contiguous_id"].items()}
    assert stuff == {v: k for k, v in meta["stuff_dataset_id_to_contiguous_id"].items()}
    assert set(things.values()) == {2, 7}


def test_contiguous_to_dataset_ids_reads_catalog_metadata():
    meta = MetadataCatalog.get("test_metadata_inverse")
    try:
        meta.set(**panoptic_separated_metadata(CATEGORIES))
        things, stuff = contiguous_to_dataset_ids(meta)
        assert things == {0: 2, 1: 7} and stuff == {0: 0, 1: 3, 2: 11}
        meta_stuff_only = {"thing_dataset_id_to_contiguous_id": {},
                           "stuff_dataset_id_to_contiguous_id": {0: 0, 5: 1}}
        assert contiguous_to_dataset_ids(meta_stuff_only) == ({}, {0: 0, 1: 5})  # empty is fine
    finally:
        MetadataCatalog.remove("test_metadata_inverse")


def test_contiguous_to_dataset_ids_never_falls_back():
    bare = MetadataCatalog.get("test_metadata_bare")
    try:
        with pytest.raises(DatasetMetadataError) as info:
            contiguous_to_dataset_ids(bare)
        msg = str(info.value)
        assert "'test_metadata_bare'" in msg and "thing_dataset_id_to_contiguous_id" in msg
        assert isinstance(info.value, KeyError)  # what code catching missing metadata expects
    finally:
        MetadataCatalog.remove("test_metadata_bare")
    half = {"thing_dataset_id_to_contiguous_id": {1: 0}}
    with pytest.raises(DatasetMetadataError, match="'given' has no 'stuff_dataset_id_to_cont"):
        contiguous_to_dataset_ids(half, "given")
    clash = {"thing_dataset_id_to_contiguous_id": {1: 0, 4: 0},
             "stuff_dataset_id_to_contiguous_id": {}}
    with pytest.raises(DatasetMetadataError, match="both category ids 1 and 4 to class 0"):
        contiguous_to_dataset_ids(clash, "x")


@pytest.mark.parametrize("style", [panoptic_separated_metadata, panoptic_standard_metadata])
def test_dataset_categories_round_trip(style):
    cats = dataset_categories(style(CATEGORIES), "mine")
    assert cats == [{"id": 2, "name": "cat", "isthing": 1}, {"id": 7, "name": "dog", "isthing": 1},
                    {"id": 3, "name": "road", "isthing": 0},
                    {"id": 11, "name": "wall", "isthing": 0}]  # no merged "things" (id 0)


def test_dataset_categories_needs_names():
    meta = {"thing_dataset_id_to_contiguous_id": {5: 0}, "stuff_dataset_id_to_contiguous_id": {},
            "thing_classes": []}
    with pytest.raises(DatasetMetadataError, match="'m': class 0 \\(category id 5\\) has no"):
        dataset_categories(meta, "m")

