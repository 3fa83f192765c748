#!/usr/bin/env python
"""Serve a trained Panoptic FPN model: an HTTP API and a page to try it on.

    python tools/serve.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        MODEL.WEIGHTS output/demo/model_final.pth
    python tools/serve.py --config-file ... --ray --replicas 2 MODEL.WEIGHTS ...

Then open http://127.0.0.1:8000/ or `curl -F file=@image.jpg http://127.0.0.1:8000/v1/panoptic`.
See docs/serving.md.
"""

import sys

from panoptic_ext.serve.server import main

if __name__ == "__main__":
    sys.exit(main())
