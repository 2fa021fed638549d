"""Dense CRF refinement of per-pixel class probabilities (docs/method.md, "CRF").

A fully connected CRF (Krähenbühl & Koltun) with a Gaussian smoothness kernel
and a bilateral appearance kernel snaps segment boundaries to image edges.
Two backends compute the same mean-field inference:

* ``torch`` (:mod:`segeig.crf.meanfield`): a permutohedral lattice in torch
  tensor operations (:mod:`segeig.crf.lattice`), on CPU or CUDA;
* ``densecrf`` (:mod:`segeig.crf.densecrf`): pydensecrf, the reference
  implementation, CPU only and optional.

:mod:`segeig.crf.refine` chooses the backend, restricts the labels and runs at
the working size; :mod:`segeig.crf.pool` spreads images over processes.
"""

from segeig.crf.densecrf import dense_crf, pydensecrf_available, require_pydensecrf
from segeig.crf.params import BACKENDS, REFERENCE_SIDE, CRFParams
from segeig.crf.pool import CRFPool
from segeig.crf.refine import (
    CRF_SIDE,
    crf_from_scores,
    crf_labels,
    crf_marginals,
    crf_working_size,
    prepare_crf,
    resolve_backend,
    shrink_image,
)

__all__ = ["BACKENDS", "CRFParams", "CRFPool", "CRF_SIDE", "REFERENCE_SIDE", "crf_from_scores",
           "crf_labels", "crf_marginals", "crf_working_size", "dense_crf", "prepare_crf",
           "pydensecrf_available", "require_pydensecrf", "resolve_backend", "shrink_image"]
