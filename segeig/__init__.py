"""segeig: unsupervised semantic segmentation by learned neural eigenfunctions.

Public entry points::

    import segeig
    seg = segeig.load("checkpoint.safetensors")   # → Segmenter
    labels = seg.predict(image)                    # H×W int32 segment ids
"""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__", "load", "Segmenter"]


def __getattr__(name: str):
    # Lazy so that `import segeig` (e.g. for __version__) does not import torch.
    if name in ("load", "Segmenter"):
        from segeig import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'segeig' has no attribute {name!r}")
