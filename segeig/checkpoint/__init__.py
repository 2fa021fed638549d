"""Self-describing checkpoints: one ``.safetensors`` file, no pickle.

* :mod:`segeig.checkpoint.store` — the file: :func:`save_checkpoint`,
  :func:`read_config` (the JSON alone, cheap, for ``segeig info``),
  :func:`segment_counts`;
* :mod:`segeig.checkpoint.load` — :func:`load_model` rebuilds the model from the
  file alone; :func:`check_checkpoint`, its checks that need no model (``segeig info``);
* :mod:`segeig.checkpoint.schema` — the JSON description's sections and their
  checks (a checkpoint is untrusted input), and :func:`checkpoint_resolution`,
  the working resolution also of checkpoints written before it was recorded;
* :mod:`segeig.checkpoint.classmap` — the optional ``classes`` section
  (:class:`ClassMap`, written by ``segeig label`` through :func:`save_class_map`):
  per method, the class of every cluster, with the class names and colours;
* :mod:`segeig.checkpoint.errors` — :class:`CheckpointError`.
"""

from segeig.checkpoint.classmap import (
    MAX_CLASSES,
    MAX_NAME_CHARS,
    UNASSIGNED,
    ClassMap,
    class_map_destination,
    class_map_of,
    save_class_map,
)
from segeig.checkpoint.errors import CheckpointError
from segeig.checkpoint.load import check_checkpoint, load_model
from segeig.checkpoint.schema import (
    REQUIRED_SECTIONS,
    SECTIONS,
    WEIGHT_SUFFIXES,
    checkpoint_resolution,
    document_problem,
)
from segeig.checkpoint.store import (
    CHECKPOINT_NAME,
    FORMAT,
    FORMAT_VERSION,
    TENSOR_PREFIXES,
    read_config,
    resolve_checkpoint_path,
    save_checkpoint,
    segment_counts,
)

__all__ = ["CHECKPOINT_NAME", "FORMAT", "FORMAT_VERSION", "MAX_CLASSES", "MAX_NAME_CHARS",
           "REQUIRED_SECTIONS", "SECTIONS", "TENSOR_PREFIXES", "UNASSIGNED", "WEIGHT_SUFFIXES",
           "CheckpointError", "ClassMap", "check_checkpoint", "checkpoint_resolution",
           "class_map_destination", "class_map_of", "document_problem", "load_model", "read_config",
           "resolve_checkpoint_path", "save_checkpoint", "save_class_map", "segment_counts"]
