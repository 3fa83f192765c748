"""Kept for old imports: the sampler lives in :mod:`panoptic_ext.data.loader`."""

from .loader import ResumableTrainingSampler  # noqa: F401
