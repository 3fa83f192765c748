"""A user's categories are checked once, with errors that name the JSON and the entry."""

import json

import pytest

from panoptic_ext.data import PanopticFormatError
from panoptic_ext.data.custom.categories import MAX_STUFF, normalize_categories, read_categories

GOOD = [{"id": 9, "name": "b", "isthing": 0, "color": [1, 2, 3]},
        {"id": 2, "name": "a", "isthing": True, "supercategory": "x"}]


def test_normalized_sorted_and_coloured():
    cats = normalize_categories(GOOD, "my.json")
    assert [c["id"] for c in cats] == [2, 9]
    assert cats[0]["isthing"] == 1 and cats[0]["supercategory"] == "x"
    assert len(cats[0]["color"]) == 3 and all(0 <= v <= 255 for v in cats[0]["color"])
    assert normalize_categories(GOOD, "my.json")[0]["color"] == cats[0]["color"]  # stable


@pytest.mark.parametrize("raw, match", [
    ([], "non-empty list"),
    ([{"id": 1, "name": "a"}], "needs 'id', 'name' and 'isthing'"),
    ([{"id": 0, "name": "a", "isthing": 1}], "positive integer"),
    ([{"id": True, "name": "a", "isthing": 1}], "positive integer"),
    ([{"id": 1, "name": " ", "isthing": 1}], "non-empty string"),
    ([{"id": 1, "name": "a", "isthing": 2}], "isthing must be 0 or 1"),
    ([{"id": 1, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}],
     "id 1 is used by both 'a' and 'b'"),
    ([{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "a", "isthing": 0}],
     "name 'a' is used by ids 1 and 2"),
    ([{"id": i, "name": str(i), "isthing": 0} for i in range(1, MAX_STUFF + 2)],
     f"at most {MAX_STUFF}"),
])
def test_bad_categories_are_named(raw, match):
    with pytest.raises(PanopticFormatError, match=match) as info:
        normalize_categories(raw, "my.json")
    assert str(info.value).startswith("my.json")
    assert isinstance(info.value, ValueError)  # what callers catching bad values expect


def test_read_categories_caches_by_size_and_mtime(tmp_path, monkeypatch):
    pan_json = tmp_path / "p.json"
    pan_json.write_text(json.dumps({"annotations": [], "categories": GOOD}))
    first = read_categories(str(pan_json), str(tmp_path), "n")
    assert (tmp_path / "categories.json").is_file()

    import panoptic_ext.data.custom.categories as mod

    def no_parse(*args):
        raise AssertionError("the JSON was parsed again")

    monkeypatch.setattr(mod, "load_folder_json", no_parse)
    assert read_categories(str(pan_json), str(tmp_path), "n") == first
    with pytest.raises(FileNotFoundError, match="Dataset 'n'.*PANOPTIC_JSON"):
        read_categories(str(tmp_path / "gone.json"), str(tmp_path), "n")
