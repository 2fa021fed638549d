"""Class maps of the label workflow: which class each cluster of a checkpoint is.

``segeig label`` fits or names a :class:`ClassMap` and stores it, with
:func:`save_class_map`, as the ``classes`` section of a copy of the checkpoint;
:func:`class_map_of` reads it back, validated against the model. Class label
maps (PNGs, arrays) hold class indices, :data:`UNASSIGNED` for pixels of
clusters that map to no class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segeig.atomic import write_safetensors
from segeig.checkpoint.errors import CheckpointError
from segeig.checkpoint.store import (
    CHECKPOINT_NAME,
    FORMAT,
    read_config,
    read_tensors,
    resolve_checkpoint_path,
    segment_counts_from_shapes,
)
from segeig.labelmaps import MAX_SEGMENTS

#: Class index of clusters that map to no class (pixel value in class label maps).
UNASSIGNED = 255
#: Most classes a class map may name: class indices stay below :data:`UNASSIGNED`.
MAX_CLASSES = 255
#: Longest class name accepted.
MAX_NAME_CHARS = 100


def _int(value: Any) -> bool:
    # JSON booleans are ints to Python; a class index is never true/false.
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Small JSON of printable strings: what a class map's ``source`` may hold (it is
    printed by ``segeig info`` and reports, so no control characters)."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= 1000 and value.isprintable()
    if depth >= 3:
        return False
    if isinstance(value, list):
        return len(value) <= 100 and all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return len(value) <= 100 and all(isinstance(k, str) and _plain_json(k, depth + 1)
                                         and _plain_json(v, depth + 1)
                                         for k, v in value.items())
    return False


@dataclass(eq=False)
class ClassMap:
    """Cluster → class maps of a labelled checkpoint (its JSON ``"classes"`` section).

    JSON form (:meth:`to_dict`, read back with :meth:`from_dict`)::

        {"names": ["sky", "road", ...],            C class names, in class-index order
         "palette": [[70, 130, 180], ...],          C colours, RGB 0..255
         "maps": {"eigen": [1, 255, 0, ...]},       per method, S entries: class or 255
         "source": {"kind": "dataset", ...}}        how the maps were made

    Attributes:
        names: the C class names, ``1 <= C <= 255``; class index i is ``names[i]``.
        palette: uint8 ``C×3`` RGB colour of each class.
        maps: method → uint8 ``(S,)`` class index of every cluster id, or
            :data:`UNASSIGNED` for clusters that map to no class. Several
            clusters may share a class.
        source: JSON-ready description of how the maps were fitted (dataset,
            split, matching, scores) or named (a names file).

    Raises:
        CheckpointError: on construction, when any part is malformed (types,
            lengths, ranges); the message says which.
    """

    names: list[str]
    palette: np.ndarray
    maps: dict[str, np.ndarray]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.names
        if not isinstance(names, Sequence) or isinstance(names, str) or not names:
            raise CheckpointError("class map: 'names' must be a non-empty list of strings")
        if len(names) > MAX_CLASSES:
            raise CheckpointError(f"class map: {len(names)} classes, at most {MAX_CLASSES}")
        for name in names:
            if (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS
                    or not name.isprintable()):
                raise CheckpointError(f"class map: class name {name!r} must be a printable, "
                                      f"non-blank string of at most {MAX_NAME_CHARS} characters")
        self.names = list(names)
        n = len(names)
        palette = np.asarray(self.palette)
        if (palette.shape != (n, 3) or not np.issubdtype(palette.dtype, np.integer)
                or palette.min() < 0 or palette.max() > 255):
            raise CheckpointError(f"class map: 'palette' must be {n} [r, g, b] integer triples "
                                  "in 0..255, one per class")
        self.palette = palette.astype(np.uint8)
        if not isinstance(self.maps, Mapping) or not self.maps:
            raise CheckpointError("class map: 'maps' must map at least one method to a list")
        maps = {}
        for method, table in self.maps.items():
            table = np.asarray(table)
            if (not isinstance(method, str) or table.ndim != 1 or not table.size
                    or not np.issubdtype(table.dtype, np.integer)):
                raise CheckpointError(f"class map of {method!r}: must be a non-empty list of "
                                      "integer class indices, one per cluster")
            if table.size > MAX_SEGMENTS:
                raise CheckpointError(f"class map of {method!r}: {table.size} entries, but no "
                                      f"method has more than {MAX_SEGMENTS} clusters")
            bad = table[((table < 0) | (table >= n)) & (table != UNASSIGNED)]
            if bad.size:
                raise CheckpointError(f"class map of {method!r}: class index {int(bad[0])} is "
                                      f"outside 0..{n - 1} and is not {UNASSIGNED} (unassigned)")
            maps[method] = table.astype(np.uint8)
        self.maps = maps
        if not isinstance(self.source, Mapping) or not _plain_json(self.source):
            raise CheckpointError("class map: 'source' must be a JSON object of numbers and "
                                  "short printable strings")

    @classmethod
    def from_dict(cls, section: Any) -> ClassMap:
        """Parse and validate a ``"classes"`` section (untrusted JSON)."""
        if not isinstance(section, Mapping):
            raise CheckpointError("class map: the 'classes' section must be a JSON object")
        unknown = set(section) - {"names", "palette", "maps", "source"}
        if unknown:
            raise CheckpointError(f"class map: unknown keys {sorted(unknown)}")
        palette = section.get("palette")
        maps = section.get("maps")
        # Check element types here: numpy would turn floats or strings into arrays silently.
        if not (isinstance(palette, list)
                and all(isinstance(c, list) and all(_int(v) for v in c) for c in palette)):
            raise CheckpointError("class map: 'palette' must be a list of [r, g, b] integers")
        if not isinstance(maps, Mapping) or not all(
                isinstance(t, list) and all(_int(v) for v in t) for t in maps.values()):
            raise CheckpointError("class map: 'maps' must map methods to lists of integers")
        return cls(section.get("names"), np.array(palette, dtype=np.int64).reshape(-1, 3)
                   if palette else np.zeros((0, 3), np.int64),
                   {m: np.array(t, dtype=np.int64) for m, t in maps.items()},
                   section.get("source", {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON section (plain lists and ints)."""
        return {"names": list(self.names), "palette": self.palette.tolist(),
                "maps": {m: t.tolist() for m, t in self.maps.items()},
                "source": dict(self.source)}

    @property
    def methods(self) -> list[str]:
        """Methods that have a map, in stored order."""
        return list(self.maps)

    def check_segments(self, segments: Mapping[str, int]) -> None:
        """Every map belongs to a method of the model and covers its ``S`` clusters.

        Args:
            segments: method → number of clusters S, for the methods the model has.
        """
        for method, table in self.maps.items():
            if method not in segments:
                raise CheckpointError(f"class map for method {method!r}, which the checkpoint "
                                      f"does not have (it has {', '.join(segments)})")
            if len(table) != segments[method]:
                raise CheckpointError(f"class map of {method!r} has {len(table)} entries but "
                                      f"the method predicts {segments[method]} clusters")

    def lookup(self, method: str) -> np.ndarray:
        """uint8 ``(S,)`` class index per cluster of ``method`` (:data:`UNASSIGNED` = none).

        Raises:
            ValueError: ``method`` has no map; the message names those that have one.
        """
        if method not in self.maps:
            raise ValueError(f"method {method!r} has no class map in this checkpoint; "
                             f"methods with one: {', '.join(self.maps)} (label {method!r} "
                             "with `segeig label`, or ask for raw cluster ids)")
        return self.maps[method]

    def apply(self, clusters: np.ndarray, method: str) -> np.ndarray:
        """Cluster ids of ``method`` (any shape, values in ``[0, S)``) → uint8 class indices."""
        return self.lookup(method)[np.asarray(clusters)]

    def label_palette(self) -> np.ndarray:
        """uint8 ``256×3`` colours of a class label PNG: the class colours, black for the rest."""
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[: len(self.names)] = self.palette
        return colours


def class_map_of(document: Mapping[str, Any], segments: Mapping[str, int]) -> ClassMap | None:
    """The checkpoint's :class:`ClassMap` (validated against the model), or None without one.

    Args:
        document: the checkpoint's JSON description.
        segments: method → number of clusters S, for every method the model has.

    Raises:
        CheckpointError: a malformed section or one that does not fit the model.
    """
    section = document.get("classes")
    if section is None:
        return None
    class_map = ClassMap.from_dict(section)
    class_map.check_segments(segments)
    return class_map


def class_map_destination(source: str | os.PathLike, out: str | os.PathLike,
                          overwrite: bool = False) -> Path:
    """Where :func:`save_class_map` writes, checked before any work is done.

    Raises:
        CheckpointError: the destination exists (it may be ``source`` itself)
            and ``overwrite`` is false.
    """
    src = resolve_checkpoint_path(source)
    dst = Path(out)
    if dst.suffix != ".safetensors":
        dst = dst / CHECKPOINT_NAME
    if dst.exists() and not overwrite:
        same = dst.resolve() == src.resolve()
        raise CheckpointError(
            f"{dst} {'is the input checkpoint' if same else 'already exists'}; choose another "
            "output directory or allow replacing it (segeig label --overwrite)")
    return dst


def save_class_map(
    source: str | os.PathLike,
    out: str | os.PathLike,
    class_map: ClassMap,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a copy of a checkpoint carrying ``class_map`` as its ``classes`` section.

    Tensors and every other section are copied unchanged (the model is not
    rebuilt, so no backbone weights are fetched); an existing ``classes``
    section is replaced. The file is written atomically.

    Args:
        source: checkpoint file or its directory.
        out: destination file (``.safetensors``) or directory (then
            ``DIR/checkpoint.safetensors``).
        class_map: the map; validated against the checkpoint's methods and
            cluster counts.
        overwrite: replace an existing destination — also the source itself
            (in place: everything is read before the new file replaces it).

    Returns:
        The path written.

    Raises:
        CheckpointError: unreadable source, destination exists without
            ``overwrite``, or a map that does not fit the checkpoint.
    """
    src = resolve_checkpoint_path(source)
    dst = class_map_destination(src, out, overwrite)
    document = read_config(src)
    tensors = read_tensors(src, "")
    shapes = {key: tensor.shape for key, tensor in tensors.items()}
    class_map.check_segments(segment_counts_from_shapes(document, shapes))
    write_safetensors(dst, tensors, FORMAT, {**document, "classes": class_map.to_dict()})
    return dst
