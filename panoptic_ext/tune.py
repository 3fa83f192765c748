"""Kept for old imports: merge tuning lives in :mod:`panoptic_ext.apps.tune`."""
from .apps.tune import *  # noqa: F401,F403
from .apps.tune import __all__  # noqa: F401
