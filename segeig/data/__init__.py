"""Datasets: the standard benchmarks read in their standard layouts, a simple
custom labelled layout, and plain folders of unlabelled images.

Default ``num_classes`` (the evaluation chooses by protocol, see docs/evaluation.md,
"Protocols"):

============== ======= ===========================================================
name           default other
============== ======= ===========================================================
ade20k         150     --
pascal_context 59      60 (background kept as class 0; "full" protocol)
cityscapes     27      19 (official trainIds; "full" protocol)
cocostuff27    27      -- (IIC's curated lists; STEGO's fine -> coarse map)
cityscapes27   27      -- (cityscapes fixed at its 27-class map)
potsdam3       3       -- (IIC's Potsdam tiles, .mat files)
custom         classes.txt, else explicit argument, else scanned from labels
folder         None    (no labels)
============== ======= ===========================================================
"""

from __future__ import annotations

from segeig.config import IGNORE_INDEX
from segeig.data.ade20k import ADE20K
from segeig.data.base import (
    DatasetLayoutError,
    Item,
    Sample,
    SegDataset,
    Transform,
)
from segeig.data.cityscapes import Cityscapes, Cityscapes27
from segeig.data.cocostuff import CocoStuff27
from segeig.data.custom import CustomDataset
from segeig.data.files import IMAGE_EXTENSIONS, is_image_file, list_images
from segeig.data.folder import ImageFolder
from segeig.data.lists import ListFileError
from segeig.data.pascal_context import PascalContext
from segeig.data.potsdam import Potsdam3
from segeig.data.registry import DATASETS, build_dataset, verify_layout

__all__ = [
    "ADE20K",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "Cityscapes",
    "Cityscapes27",
    "CocoStuff27",
    "CustomDataset",
    "DatasetLayoutError",
    "ImageFolder",
    "Item",
    "ListFileError",
    "PascalContext",
    "Potsdam3",
    "Sample",
    "SegDataset",
    "Transform",
    "build_dataset",
    "is_image_file",
    "list_images",
    "verify_layout",
]
