"""PanopticService without HTTP: uploads decode exactly as tools/demo.py reads files, and a
batch (mixed sizes and merge settings) answers exactly as one image at a time does."""

import io

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.apps.demo import read_image
from panoptic_ext.serve.service import BadInput, ServeSettings, decode_image


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "RGBA", "P", "CMYK"])
def test_decode_equals_the_demo_reader(mode, tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 250)
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    assert Image.open(path).mode == mode
    decoded = decode_image(path.read_bytes(), max_pixels=1000)
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, read_image(str(path), "BGR"))


def test_pixel_limit_is_checked_before_decoding():
    data = io.BytesIO()
    Image.new("RGB", (40, 30)).save(data, "PNG")
    with pytest.raises(BadInput, match="40x30 = 1200 pixels, over the limit of 1000") as e:
        decode_image(data.getvalue(), max_pixels=1000)
    assert e.value.status == 413


def test_settings_name_the_bad_flag():
    with pytest.raises(ValueError, match="--max-batch-size must be at least 1"):
        ServeSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="--max-wait-ms must be >= 0"):
        ServeSettings(max_wait_ms=-1)


def test_batch_equals_one_at_a_time(tiny_root, tiny_trained):
    from panoptic_ext.engine.defaults import setup_cfg
    from panoptic_ext.serve.service import PanopticService
    from tests.helpers.serve import SERVE_OPTS, assert_same_segments
    from tests.helpers.tools import SYNTHETIC_CONFIG, val_images

    opts = [*SERVE_OPTS, "MODEL.WEIGHTS", tiny_trained[1]]
    service = PanopticService(setup_cfg(SYNTHETIC_CONFIG, opts, eval_only=True))
    default_merge = service.model.combine
    a, b = (read_image(p, "BGR") for p in val_images(tiny_root))
    wide = np.ascontiguousarray(np.concatenate([a, b], axis=1))  # another network input size
    jobs = [service.job(a, {}), service.job(wide, {}), service.job(b, {}),
            service.job(a, {"stuff_area_limit": "100000"}), service.job(b, {"png": "1"})]
    batched = service.run_batch(jobs)
    for job, (ids, segments) in zip(jobs, batched, strict=True):
        [(ids1, segments1)] = service.run_batch([job])
        np.testing.assert_array_equal(ids, ids1)
        assert_same_segments(segments, segments1)
    assert batched[0][1] != batched[3][1]  # the merge setting applied to its job only
    assert service.model.combine is default_merge  # restored after the job that changed it
