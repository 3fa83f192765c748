"""Tests of panoptic_ext.utils."""
