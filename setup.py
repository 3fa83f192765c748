"""Install panoptic_ext: `pip install -e .` (Detectron2 is installed separately, see README)."""

from setuptools import find_packages, setup

setup(
    name="panoptic_ext",
    version="0.1.0",
    description="Panoptic FPN for Detectron2: model, merge logic, data, evaluation and tools",
    python_requires=">=3.10",
    packages=find_packages(include=["panoptic_ext", "panoptic_ext.*"]),
    package_data={"panoptic_ext.serve": ["static/*.html", "static/*.js"]},  # the page at /
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "panopticapi-lite",
        "opencv-python-headless",
        "numpy<2",
        "setuptools<81",
        "Pillow",
        "tqdm",
        "tabulate",
        "tensorboard",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis", "ruff"]},
)
