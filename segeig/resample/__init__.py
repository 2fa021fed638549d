"""From the patch grid to pixels: the one home of resampling model scores.

A model scores an image on its patch grid (``S×h×w``). Every consumer wants
pixels: evaluation and ``segment`` the winning segment at each pixel of the
original image (:mod:`~segeig.resample.argmax`, exact and cheap through
candidate pruning), ``predict_proba`` every score at every pixel and the CRF
the probabilities of a few segments (:mod:`~segeig.resample.grid`), chosen by
:mod:`~segeig.resample.subset`.
"""

from segeig.resample.argmax import pixel_argmax, pixel_labels, resampled_argmax
from segeig.resample.grid import interp_matrix, pixel_probs, pixel_scores, upsample_scores
from segeig.resample.subset import topk_probs

__all__ = ["interp_matrix", "pixel_argmax", "pixel_labels", "pixel_probs", "pixel_scores",
           "resampled_argmax", "topk_probs", "upsample_scores"]
