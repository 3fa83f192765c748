"""Kept for old imports: the TorchScript export lives in :mod:`panoptic_ext.apps.export`."""
from .apps.export import *  # noqa: F401,F403
from .apps.export import __all__  # noqa: F401
