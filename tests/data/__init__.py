"""Tests of panoptic_ext.data, one module per module."""
