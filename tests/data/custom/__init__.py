"""Tests of panoptic_ext.data.custom (your own COCO-panoptic folders)."""
