"""Kept for old imports: the demo lives in :mod:`panoptic_ext.apps.demo`."""

from .apps.demo import *  # noqa: F401,F403
from .apps.demo import __all__  # noqa: F401
