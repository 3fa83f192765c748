"""The applications behind the tools: demo (pictures, PNGs, video), merge tuning, export,
dataset pictures (visualize), worst-case analysis (analyze) and training curves (curves).

Each takes a config from :func:`panoptic_ext.engine.setup_cfg`; the tools only parse
arguments and call these."""
