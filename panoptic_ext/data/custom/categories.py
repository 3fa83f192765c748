"""The ``categories`` of a user's panoptic JSON: checked, completed and cached.

User JSONs come with any ids, missing colours, duplicate names; everything downstream
(metadata, head sizes, per-class metrics keyed by name, uint8 stuff PNGs) relies on the
normalized list made here, so each problem is reported once, naming the JSON and the entry.
"""

from __future__ import annotations

import colorsys
import logging
import os
import zlib
from typing import Any

from ...formats import PanopticFormatError
from ...utils.io import atomic_write_json, read_json_or_none
from .folder import FOLDER_SPEC, load_folder_json

__all__ = ["MAX_STUFF", "normalize_categories", "read_categories"]

logger = logging.getLogger(__name__)

MAX_STUFF = 254  # stuff PNG labels 1..K in uint8, 0 = things, 255 = void


def _color_for(cat_id: int) -> list[int]:
    """Stable, well-spread colour for a category without one (golden-ratio hue steps)."""
    h = (cat_id * 0.618033988749895) % 1.0
    s = 0.55 + 0.4 * ((zlib.crc32(str(cat_id).encode()) % 100) / 100)
    return [int(round(255 * v)) for v in colorsys.hsv_to_rgb(h, s, 0.9)]


def normalize_categories(raw: Any, json_path: str) -> tuple[dict[str, Any], ...]:
    """Checked copy of the JSON's categories, sorted by id, each with id/name/isthing/color."""
    if not isinstance(raw, list) or not raw:
        raise PanopticFormatError(
            f"{json_path}: 'categories' must be a non-empty list of "
            "{'id', 'name', 'isthing'[, 'color']} objects"
        )
    cats: list[dict[str, Any]] = []
    ids: dict[int, str] = {}
    names: dict[str, int] = {}
    for i, c in enumerate(raw):
        where = f"{json_path}: categories[{i}] ({c!r:.80})"
        if not isinstance(c, dict) or not {"id", "name", "isthing"} <= set(c):
            raise PanopticFormatError(f"{where} needs 'id', 'name' and 'isthing'")
        if isinstance(c["id"], bool) or not isinstance(c["id"], int) or c["id"] <= 0:
            raise PanopticFormatError(
                f"{where}: id must be a positive integer (0 means void / the merged 'things' "
                "class); renumber it"
            )
        if not isinstance(c["name"], str) or not c["name"].strip():
            raise PanopticFormatError(f"{where}: name must be a non-empty string")
        if c["isthing"] not in (0, 1, True, False):
            raise PanopticFormatError(f"{where}: isthing must be 0 or 1, got {c['isthing']!r}")
        cid, name = int(c["id"]), c["name"]
        if cid in ids:
            raise PanopticFormatError(
                f"{json_path}: category id {cid} is used by both '{ids[cid]}' and '{name}'; "
                "give each category its own id"
            )
        if name in names:
            raise PanopticFormatError(
                f"{json_path}: category name '{name}' is used by ids {names[name]} and {cid}; "
                "names must be unique (per-class metrics are keyed by name)"
            )
        ids[cid], names[name] = name, cid
        color = c.get("color")
        if not (isinstance(color, list | tuple) and len(color) == 3):
            color = _color_for(cid)
        cat = {"id": cid, "name": name, "isthing": int(bool(c["isthing"])),
               "color": [int(v) for v in color]}
        if "supercategory" in c:
            cat["supercategory"] = c["supercategory"]
        cats.append(cat)
    n_stuff = sum(1 for c in cats if not c["isthing"])
    if n_stuff > MAX_STUFF:
        raise PanopticFormatError(
            f"{json_path}: {n_stuff} stuff categories; at most {MAX_STUFF} fit the uint8 stuff "
            "PNGs Panoptic FPN trains on"
        )
    return tuple(sorted(cats, key=lambda c: c["id"]))


def read_categories(panoptic_json: str, cache: str, name: str) -> tuple[dict[str, Any], ...]:
    """The JSON's normalized categories; cached in ``cache`` by the JSON's size and mtime, so a
    big JSON is parsed once and registration stays fast."""
    try:
        st = os.stat(panoptic_json)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dataset '{name}': panoptic JSON {panoptic_json} does not exist; check the "
            f"PANOPTIC_JSON part of {FOLDER_SPEC}"
        ) from None
    source = [st.st_size, st.st_mtime_ns]
    cache_file = os.path.join(cache, "categories.json")
    cached = read_json_or_none(cache_file)
    fresh = isinstance(cached, dict) and cached.get("source") == source
    raw = cached.get("categories") if fresh else load_folder_json(panoptic_json, name)["categories"]
    cats = normalize_categories(raw, panoptic_json)
    if not fresh:
        try:
            atomic_write_json(cache_file, {"source": source, "categories": list(cats)})
        except OSError as exc:  # only a speed-up
            logger.warning("Could not cache categories in %s (%s)", cache_file, exc)
    return cats
