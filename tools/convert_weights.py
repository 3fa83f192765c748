#!/usr/bin/env python
"""Convert weights (.pth, Detectron2 model-zoo .pkl) to .safetensors, which holds only
tensors: loading it as MODEL.WEIGHTS never runs code from the file.

    python tools/convert_weights.py output/model_final.pth model_final.safetensors
    python tools/convert_weights.py R-50.pkl R-50.safetensors      # name matching kept
    python tools/convert_weights.py --trust-input old.pth old.safetensors   # a file you trust

Pickles are read as MODEL.WEIGHTS reads them (no code from them runs); --trust-input reads a
file you trust in full once, so that afterwards only the .safetensors copy is used.
The logic lives in ``panoptic_ext.engine.convert``.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.engine.convert import save_safetensors
from panoptic_ext.engine.weights import WeightsError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint file (.pth, .pkl, .safetensors)")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--trust-input", action="store_true",
                        help="unpickle the input in full (runs any code it holds; only for "
                        "files you trust)")
    args = parser.parse_args(argv)
    setup_logger(name="panoptic_ext")
    try:
        report = save_safetensors(args.input, args.output, force=args.force,
                                  trust_file=args.trust_input)
    except (WeightsError, OSError) as e:  # named: the input, or the output that cannot be
        # written (exists, a folder, would replace the input)
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {report.tensors} tensors ({report.bytes / 2**20:.1f} MiB) to {report.output}"
          + (f"; left out {len(report.skipped)} non-tensor entries" if report.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
