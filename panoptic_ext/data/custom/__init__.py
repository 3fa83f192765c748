"""Your own COCO-panoptic folder as a Detectron2 dataset, in one call or one command-line flag.

Command line (``tools/train_net.py --dataset NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT``) and
config (``DATASETS.PANOPTIC_FOLDERS``) go through :func:`configure_panoptic_folders`, which also
fits the heads (and the mask format) to the categories; in Python call
:func:`register_panoptic_dataset`. The parts:

* :mod:`.folder`: the record of a registered folder and the registry by name;
* :mod:`.categories`: checking and normalising the JSON's categories;
* :mod:`.derive`: the instance JSON and stuff PNGs derived into a cache folder;
* :mod:`.register`: the loaders, registration and ``NAME:...`` spec parsing;
* :mod:`.config`: the config edits.
"""

from .config import configure_panoptic_folders, prepare_cfg_folders
from .derive import default_dataset_cache_dir, prepare_panoptic_dataset
from .folder import FOLDER_SPEC, NO_THING_CLASS, PanopticFolder, get_panoptic_folder
from .register import parse_folder_spec, register_panoptic_dataset, register_panoptic_folders

__all__ = [
    "FOLDER_SPEC",
    "NO_THING_CLASS",
    "PanopticFolder",
    "configure_panoptic_folders",
    "default_dataset_cache_dir",
    "get_panoptic_folder",
    "parse_folder_spec",
    "prepare_cfg_folders",
    "prepare_panoptic_dataset",
    "register_panoptic_dataset",
    "register_panoptic_folders",
]
