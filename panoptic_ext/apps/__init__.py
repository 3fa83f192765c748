"""The applications behind the tools: demo (pictures, PNGs, video), merge tuning, export.

Each takes a config from :func:`panoptic_ext.engine.setup_cfg`; the tools only parse
arguments and call these."""
