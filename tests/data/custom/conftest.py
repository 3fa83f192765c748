"""Users' COCO-panoptic folders, written once for all tests of panoptic_ext.data.custom."""

import pytest

from tests.helpers.data import panoptic_folders


@pytest.fixture(scope="package")
def folders(tmp_path_factory):
    """{"full" | "stuffonly" | "thingsonly": {"train" | "val": (images, JSON, PNGs)}}; never
    modified by a test (copy it, or write edited JSONs elsewhere)."""
    return panoptic_folders(tmp_path_factory.mktemp("mine"))
