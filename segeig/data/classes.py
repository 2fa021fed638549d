"""Class names and colour palettes of the benchmark datasets.

Palettes are ``[num_classes, 3]`` uint8 RGB arrays indexed by training id.
"""

from __future__ import annotations

import numpy as np


def voc_colormap(n: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaving colour map: [n, 3] uint8 RGB.

    Entry 0 is black; consecutive entries are well separated. Deterministic, so
    a palette built from it is the same everywhere.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


# ADE20K SceneParsing (ADEChallengeData2016) classes, in raw-id order 1..150.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# PASCAL-Context 59 classes, in raw-id order 1..59 (0 = background).
PASCAL_CONTEXT_59_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)
PASCAL_CONTEXT_60_CLASSES: tuple[str, ...] = ("background", *PASCAL_CONTEXT_59_CLASSES)

# Cityscapes labels with ids 7..33 (official names and colours, cityscapesScripts
# labels.py), plus each one's trainId (255 = not among the 19 evaluated classes).
_CITYSCAPES_27: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 0, (128, 64, 128)),
    ("sidewalk", 1, (244, 35, 232)),
    ("parking", 255, (250, 170, 160)),
    ("rail track", 255, (230, 150, 140)),
    ("building", 2, (70, 70, 70)),
    ("wall", 3, (102, 102, 156)),
    ("fence", 4, (190, 153, 153)),
    ("guard rail", 255, (180, 165, 180)),
    ("bridge", 255, (150, 100, 100)),
    ("tunnel", 255, (150, 120, 90)),
    ("pole", 5, (153, 153, 153)),
    ("polegroup", 255, (153, 153, 153)),
    ("traffic light", 6, (250, 170, 30)),
    ("traffic sign", 7, (220, 220, 0)),
    ("vegetation", 8, (107, 142, 35)),
    ("terrain", 9, (152, 251, 152)),
    ("sky", 10, (70, 130, 180)),
    ("person", 11, (220, 20, 60)),
    ("rider", 12, (255, 0, 0)),
    ("car", 13, (0, 0, 142)),
    ("truck", 14, (0, 0, 70)),
    ("bus", 15, (0, 60, 100)),
    ("caravan", 255, (0, 0, 90)),
    ("trailer", 255, (0, 0, 110)),
    ("train", 16, (0, 80, 100)),
    ("motorcycle", 17, (0, 0, 230)),
    ("bicycle", 18, (119, 11, 32)),
)
#: First Cityscapes labelId that is not void; 27-class ids are labelId - 7.
CITYSCAPES_FIRST_NONVOID = 7

CITYSCAPES_27_CLASSES: tuple[str, ...] = tuple(n for n, _, _ in _CITYSCAPES_27)
CITYSCAPES_19_CLASSES: tuple[str, ...] = tuple(n for n, t, _ in _CITYSCAPES_27 if t != 255)

#: Official Cityscapes labelId -> trainId (ids 0..6 void, -1 license plate -> 255).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    i + CITYSCAPES_FIRST_NONVOID: t for i, (_, t, _) in enumerate(_CITYSCAPES_27)
}

CITYSCAPES_27_PALETTE = np.array([c for _, _, c in _CITYSCAPES_27], dtype=np.uint8)
CITYSCAPES_19_PALETTE = np.array([c for _, t, c in _CITYSCAPES_27 if t != 255], dtype=np.uint8)

# VOC colour map without its black entry 0, so no class is drawn black.
ADE20K_PALETTE = voc_colormap(len(ADE20K_CLASSES) + 1)[1:]
PASCAL_CONTEXT_59_PALETTE = voc_colormap(len(PASCAL_CONTEXT_59_CLASSES) + 1)[1:]
PASCAL_CONTEXT_60_PALETTE = voc_colormap(len(PASCAL_CONTEXT_60_CLASSES))


# COCO-Stuff-27: the 27 coarse classes of the stuffthingmaps_trainval2017 fine ids
# (0..181, 0-based: things 0..90, stuff 91..181; 255 unlabelled). Names in coarse-id
# order: things 0..11, then stuff 12..26 (two names repeat across the two groups,
# as in every STEGO-family repository).
COCOSTUFF_27_CLASSES: tuple[str, ...] = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory",
    "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food", "furniture", "rawmaterial", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
)
#: First coarse COCO-Stuff-27 id that is a stuff class (stuff = 12..26).
COCOSTUFF_FIRST_STUFF = 12

#: Fine stuffthingmaps id (index 0..181) -> coarse COCO-Stuff-27 id. The fixed map of
#: IIC (its ``fine_to_coarse_dict.pickle``, from COCO-Stuff's cocostuff-labelhierarchy)
#: that STEGO, HP, SmooSeg, CAUSE, EAGLE and the others copy verbatim as
#: ``fine_to_coarse`` in their COCO dataset classes; any fine id outside it is ignored.
COCOSTUFF_FINE_TO_27: tuple[int, ...] = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7,  # 0-15
    7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6,  # 16-31
    6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5,  # 32-47
    5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3,  # 48-63
    3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1,  # 64-79
    1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20,  # 80-95
    22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15,  # 96-111
    25, 13, 13, 13, 13, 13, 22, 26, 14, 14, 15, 22, 21, 21, 24, 20,  # 112-127
    22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21,  # 128-143
    21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24,  # 144-159
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18,  # 160-175
    18, 26, 26, 19, 19, 24,  # 176-181
)
COCOSTUFF_27_PALETTE = voc_colormap(len(COCOSTUFF_27_CLASSES) + 1)[1:]

# Potsdam-3 (IIC's release of ISPRS Potsdam): the stored gt ids 0..5 and the three
# classes they merge into (STEGO's ``fine_to_coarse``: roads and cars, buildings and
# clutter, vegetation and trees).
POTSDAM_FINE_CLASSES: tuple[str, ...] = (
    "road", "building", "low vegetation", "tree", "car", "clutter",
)
POTSDAM_3_CLASSES: tuple[str, ...] = (
    "roads and cars", "buildings and clutter", "trees and vegetation",
)
#: Fine Potsdam gt id (index 0..5) -> Potsdam-3 class.
POTSDAM_FINE_TO_3: tuple[int, ...] = (0, 1, 2, 2, 0, 1)
POTSDAM_3_PALETTE = np.array([(170, 170, 170), (0, 0, 255), (0, 200, 0)], dtype=np.uint8)
