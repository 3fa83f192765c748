"""The COCO panoptic format helpers every reader and writer shares."""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from panoptic_ext.formats import (
    OFFSET,
    PanopticFormatError,
    describe_segment_mismatch,
    encode_panoptic_png,
    id_to_rgb,
    load_panoptic_json,
    read_panoptic_png,
    rgb_to_id,
    segment_mismatch,
    write_panoptic_png,
)

# Ids that need all three channels, plus void and the largest id.
IDS = np.array([[0, 1, 255, 256], [65535, 65536, OFFSET - 1, 123456]], dtype=np.int64)


def test_rgb_id_round_trip():
    rgb = id_to_rgb(IDS)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[0, 3].tolist() == [0, 1, 0] and rgb[1, 2].tolist() == [255, 255, 255]
    out = rgb_to_id(rgb)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, IDS)
    rgba = np.concatenate([rgb, np.full((2, 4, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(rgb_to_id(rgba), IDS)  # alpha ignored, like panopticapi


def test_out_of_range_ids_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 2\^24\)"):
        id_to_rgb(np.array([OFFSET]))
    with pytest.raises(ValueError, match=r"\[0, 2\^24\)"):
        id_to_rgb(np.array([-1]))
    with pytest.raises(ValueError, match="RGB array"):
        rgb_to_id(np.zeros((4, 4), np.uint8))


def test_png_round_trip_through_every_reader(tmp_path):
    path = tmp_path / "p.png"
    write_panoptic_png(str(path), IDS)
    assert path.read_bytes() == encode_panoptic_png(IDS)
    np.testing.assert_array_equal(read_panoptic_png(str(path)), IDS)
    with Image.open(path) as im:  # a plain 8-bit RGB PNG, as panopticapi reads it
        assert im.mode == "RGB"
        np.testing.assert_array_equal(rgb_to_id(np.asarray(im)), IDS)
    assert not [p for p in os.listdir(tmp_path) if p != "p.png"], "no temp file left"


def test_pillow_path_reads_what_opencv_does_not(tmp_path):
    path = tmp_path / "p16.png"  # 16-bit RGB: not OpenCV's fast path
    cv2.imwrite(str(path), (id_to_rgb(IDS)[..., ::-1].astype(np.uint16) * 257))
    ids = read_panoptic_png(str(path))
    assert ids.shape == IDS.shape and ids.dtype == np.uint32


def test_rgba_is_read_or_refused(tmp_path):
    path = tmp_path / "a.png"
    rgba = np.concatenate([id_to_rgb(IDS), np.full((2, 4, 1), 9, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(read_panoptic_png(str(path)), IDS)
    with pytest.raises(PanopticFormatError) as info:
        read_panoptic_png(str(path), 42, allow_alpha=False)
    msg = str(info.value)
    assert f"In the image with ID 42 the PNG {path} is not an RGB image (mode RGBA" in msg
    assert "re-export it as RGB" in msg


def test_unreadable_pngs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"The PNG {tmp_path / 'no.png'} does not exist"):
        read_panoptic_png(str(tmp_path / "no.png"))
    with pytest.raises(PanopticFormatError, match="is a folder"):
        read_panoptic_png(str(tmp_path))
    good = tmp_path / "g.png"
    write_panoptic_png(str(good), IDS)
    for name, data in (("garbage.png", b"\x89PNG\r\n\x1a\n garbage"),
                       ("half.png", good.read_bytes()[:60])):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(PanopticFormatError, match=f"image with ID 3 the PNG {bad} cannot"):
            read_panoptic_png(str(bad), 3)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(gray)
    with pytest.raises(PanopticFormatError, match="not an RGB image \\(mode L"):
        read_panoptic_png(str(gray))


def test_format_error_is_a_key_and_a_value_error():
    err = PanopticFormatError("f.json: bad")
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert str(err) == "f.json: bad"  # not repr()'d like a KeyError
    assert str(PanopticFormatError()) == ""


def test_load_panoptic_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"annotations": [], "categories": [], "images": []}))
    assert load_panoptic_json(str(path))["annotations"] == []
    assert load_panoptic_json(str(path), keys=("images",))["images"] == []
    cases = [("{", "not valid JSON"), ("[]", "top level is not an object"),
             ('{"annotations": []}', "missing 'categories'")]
    for text, match in cases:
        path.write_text(text)
        with pytest.raises(PanopticFormatError, match=f"{path}: {match}"):
            load_panoptic_json(str(path))
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PanopticFormatError, match="not valid JSON"):
        load_panoptic_json(str(path))
    with pytest.raises(FileNotFoundError, match="no.json does not exist"):
        load_panoptic_json(str(tmp_path / "no.json"))
    with pytest.raises(PanopticFormatError, match="is a folder"):
        load_panoptic_json(str(tmp_path))


def test_segment_mismatch_and_its_messages():
    missing, extra = segment_mismatch(np.array([0, 5, 9, 12]), [5, 7, 0, 3])
    assert (missing, extra) == ([3, 7], [9, 12])  # void is neither
    assert segment_mismatch([0, 1], [1]) == ([], [])
    assert describe_segment_mismatch([], [], "p.json") == []
    msgs = describe_segment_mismatch(missing, extra, "p.json", {7: "dog"})
    assert msgs[0].startswith("segment id(s) 3, 7 ('dog') listed in p.json have no pixels")
    assert msgs[1].startswith("segment id(s) [9, 12] are in the PNG but not in p.json's")
    many = describe_segment_mismatch(list(range(1, 15)), [], "p.json", limit=3)
    assert "1, 2, 3 and 11 more" in many[0]
