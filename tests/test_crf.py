"""Tests for segeig.crf: both backends, the lattice, label restriction, working size, pool."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from segeig.cli.common import CRF_BACKENDS
from segeig.crf import (
    BACKENDS,
    CRFParams,
    CRFPool,
    crf_from_scores,
    crf_labels,
    crf_marginals,
    crf_working_size,
    dense_crf,
    resolve_backend,
    shrink_image,
)
from segeig.crf.lattice import PermutohedralLattice
from segeig.resample import topk_probs
from tests.conftest import require_pydensecrf

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

COLOURS = np.array([[200, 40, 40], [40, 180, 60], [50, 60, 200]])


def _scene(seed: int = 0, size: int | tuple[int, int] = 64, flip_frac: float = 0.25):
    """Three flat colour regions with mild noise, clean labels and a noisy softmax.

    Each pixel's softmax puts 0.7 on one label and 0.15 on the two others; for
    ``flip_frac`` of the pixels that peak sits on a random wrong label.
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int64)
    labels[:, w // 2 :] = 1
    labels[h // 2 :, w // 2 :] = 2
    image = COLOURS[labels] + rng.normal(0, 4, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    n = len(COLOURS)
    wrong = (labels + rng.integers(1, n, labels.shape)) % n
    peak = np.where(rng.random(labels.shape) < flip_frac, wrong, labels)
    probs = np.full((n, h, w), 0.15, np.float32)
    np.put_along_axis(probs, peak[None], 0.7, axis=0)
    return image, labels, probs


def _photo_like(seed: int, h: int, w: int, m: int = 6):
    """Smooth colour blobs with texture noise and soft, blocky (patch-like) probabilities:
    the CRF has real work to do (moves boundaries to edges, flips uncertain pixels)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (m, 2)) * [h, w]
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    truth = dist.argmin(0)
    image = rng.uniform(30, 225, (m, 3))[truth] + rng.normal(0, 6, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    # Patch-grid (8 px) evidence, upsampled bilinearly like a ViT's scores.
    ph, pw = -(-h // 8), -(-w // 8)
    grid = -dist[:, ::8, ::8][:, :ph, :pw] / 6.0 + rng.normal(0, 0.8, (m, ph, pw))
    scores = torch.nn.functional.interpolate(torch.from_numpy(grid).float()[None],
                                             size=(ph * 8, pw * 8), mode="bilinear")
    probs = torch.softmax(scores[0, :, :h, :w], 0).numpy()
    return image, truth, np.ascontiguousarray(probs)


# -- the torch backend ---------------------------------------------------------

def test_crf_cleans_noisy_softmax():
    image, clean, probs = _scene()
    noisy_acc = np.mean(probs.argmax(0) == clean)
    assert 0.7 < noisy_acc < 0.8
    refined = crf_labels(image, probs, backend="torch")
    crf_acc = np.mean(refined == clean)
    assert crf_acc > 0.97
    assert crf_acc - noisy_acc > 0.15


@pytest.mark.parametrize("shape", [(48, 64), (37, 53), (1, 29), (23, 1)])
def test_torch_agrees_with_pydensecrf(shape, pydensecrf):
    """Same model, same numbers: labels agree, marginals match closely. Sizes that
    are multiples of nothing, and single rows/columns, included."""
    image, _, probs = _photo_like(3, *shape)
    params = CRFParams(iterations=5)
    want = crf_marginals(image, probs, params, backend="densecrf")
    got = crf_marginals(image, probs, params, backend="torch")
    assert got.shape == want.shape and got.dtype == np.float32
    changed = np.mean(want.argmax(0) != probs.argmax(0))
    agree = np.mean(got.argmax(0) == want.argmax(0))
    assert agree >= 0.99, (agree, changed)
    assert np.abs(got - want).mean() < 0.01


def test_torch_agreement_at_the_working_size(pydensecrf):
    image, _, probs = _photo_like(5, 90, 130, m=8)
    params = CRFParams()
    want = crf_labels(image, probs, params, backend="densecrf")
    got = crf_labels(image, probs, params, backend="torch")
    assert np.mean(got == want) >= 0.99
    assert np.mean(want != probs.argmax(0)) > 0.02  # the CRF did change things


def test_marginals_are_distributions():
    image, _, probs = _scene(size=(29, 41))
    q = crf_marginals(image, probs, CRFParams(iterations=3), backend="torch")
    assert q.shape == probs.shape and q.dtype == np.float32
    assert np.all((q >= 0) & (q <= 1))
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    # Zero iterations: the input softmax itself (clipped at 1e-5, renormalised).
    q0 = crf_marginals(image, probs, CRFParams(iterations=0), backend="torch")
    np.testing.assert_allclose(q0, probs, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "densecrf"])
def test_one_label_images(backend):
    if backend == "densecrf":
        require_pydensecrf()
    image, _, _ = _scene(size=16)
    q = crf_marginals(image, np.ones((1, 16, 16), np.float32), backend=backend)
    assert q.shape == (1, 16, 16) and np.all(q == 1)
    # One label that wins everywhere stays the only answer.
    probs = np.full((3, 16, 16), 0.1, np.float32)
    probs[1] = 0.8
    assert np.all(crf_labels(image, probs, backend=backend) == 1)
    # A 1×1 image.
    one = crf_labels(image[:1, :1], probs[:, :1, :1], backend=backend)
    assert one.shape == (1, 1) and one[0, 0] == 1


@needs_cuda
def test_cuda_matches_cpu():
    image, _, probs = _photo_like(2, 40, 56)
    cpu = crf_marginals(image, probs, backend="torch", device="cpu")
    gpu = crf_marginals(image, probs, backend="torch", device="cuda")
    assert np.mean(cpu.argmax(0) == gpu.argmax(0)) >= 0.999
    np.testing.assert_allclose(cpu, gpu, atol=1e-3)


def test_rejects_bad_inputs():
    image, _, probs = _scene(size=16)
    for backend in ("torch", "densecrf"):
        with pytest.raises(ValueError, match="uint8"):
            crf_marginals(image.astype(np.float32), probs, backend=backend)
        with pytest.raises(ValueError, match="spatial size"):
            crf_marginals(image, probs[:, :8], backend=backend)
    with pytest.raises(ValueError, match="iterations"):
        CRFParams(iterations=-1)


# -- the lattice ---------------------------------------------------------------

def test_lattice_is_a_symmetric_local_gaussian_filter():
    rng = np.random.default_rng(0)
    # Two clusters 100 standard deviations apart: no cross-talk at all.
    points = np.concatenate([rng.normal(0, 1, (60, 3)), rng.normal(100, 1, (40, 3))])
    lattice = PermutohedralLattice(torch.from_numpy(points).float())
    x = torch.from_numpy(rng.random((100, 2))).float()
    y = torch.from_numpy(rng.random((100, 2))).float()
    fx, fy = lattice.filter(x), lattice.filter(y)
    # Linear, and nearly symmetric (<x, F y> = <F x, y> up to the order of
    # the blur passes, which do not commute exactly on a sparse lattice).
    assert torch.allclose(lattice.filter(x + 2 * y), fx + 2 * fy, atol=1e-4)
    assert torch.allclose((x * fy).sum(), (fx * y).sum(), rtol=1e-2)
    only_first = x.clone()
    only_first[60:] = 0
    assert torch.all(lattice.filter(only_first)[60:] == 0)
    # Close points weigh more than far ones (a decreasing kernel): a point's
    # response to a unit impulse at itself beats its response to a far one.
    impulse = torch.zeros(100, 1)
    impulse[0] = 1
    response = lattice.filter(impulse)[:60, 0]
    dist = np.linalg.norm(points[:60] - points[0], axis=1)
    near, far = response[dist < 0.5], response[dist > 2.5]
    assert response[0] == response.max() and near.mean() > 5 * far.mean()


def test_lattice_refuses_overflowing_keys():
    features = torch.tensor([[0.0] * 5, [1e12] * 5])
    with pytest.raises(ValueError, match="span too large"):
        PermutohedralLattice(features)


# -- labels, label restriction, working size -------------------------------------

def test_topk_probs_keeps_winners_and_maps_back():
    image, clean, probs3 = _scene(size=32)
    # Embed the 3 real labels at ids 5, 17, 40 among 50 labels; the rest get
    # small noise so they lose everywhere but are not all equal.
    rng = np.random.default_rng(1)
    ids = np.array([5, 17, 40])
    probs = rng.random((50, 32, 32)).astype(np.float32) * 0.01
    probs[ids] = probs3
    probs /= probs.sum(0, keepdims=True)

    kept, class_ids = topk_probs(probs, 4)
    assert kept.shape == (4, 32, 32) and kept.dtype == np.float32
    assert class_ids.dtype == np.int64
    assert set(ids) <= set(class_ids.tolist())
    assert np.all(np.diff(class_ids) > 0)
    np.testing.assert_allclose(kept.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(class_ids[kept.argmax(0)], probs.argmax(0))

    labels = crf_labels(image, probs, max_labels=4)
    assert set(np.unique(labels).tolist()) <= set(ids.tolist())
    assert np.mean(labels == ids[clean]) > 0.97
    # m >= K keeps everything in order.
    kept_all, all_ids = topk_probs(probs3, 8)
    assert all_ids.tolist() == [0, 1, 2] and np.array_equal(kept_all, probs3)


def test_topk_prefers_pixel_winners_over_peaky_losers():
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0] = 0.55  # wins every pixel, modest peak
    probs[1] = 0.45
    probs[1, 0, 0] = 0.0
    probs[2, 0, 0] = 0.45  # never wins, lower peak than label 1
    _, ids = topk_probs(probs, 1)
    assert ids.tolist() == [0]
    _, ids = topk_probs(probs, 2)
    assert ids.tolist() == [0, 1]


def test_working_size_and_shrink():
    assert crf_working_size((300, 500), 448) == (300, 500)
    assert crf_working_size((1000, 1501), 448) == (448, 672)
    assert crf_working_size((1501, 1000), 448) == (672, 448)
    assert crf_working_size((3, 4000), 2) == (2, 2667)
    assert crf_working_size((5000, 7), None) == (5000, 7)
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert shrink_image(image, (37, 53)) is image
    small = shrink_image(image, (19, 27))
    assert small.shape == (19, 27, 3) and small.dtype == np.uint8
    assert CRFParams().bilateral_sxy_at(CRFParams().reference_side) == CRFParams().bilateral_sxy
    assert CRFParams(reference_side=320).bilateral_sxy_at(160) == pytest.approx(33.5)


def test_out_size_resamples_the_marginals():
    image, clean, probs = _scene(size=(31, 45))
    small = crf_labels(image, probs, backend="torch")
    big = crf_labels(image, probs, backend="torch", out_size=(62, 90))
    assert big.shape == (62, 90)
    # Nearest-upsampled small labels and bilinearly upsampled marginals agree
    # away from boundaries.
    assert np.mean(big == np.kron(small, np.ones((2, 2), np.int64))) > 0.95


def test_results_do_not_depend_on_the_input_size():
    """The same scene at 2× the working size: shrunk to it, refined with the same
    kernel, labels back at full size — they match the 1× labels upsampled."""
    image, truth, _ = _photo_like(7, 64, 96)
    grid = torch.from_numpy(np.eye(6)[truth][::8, ::8].transpose(2, 0, 1) * 3).float()
    one = crf_from_scores(image, grid, 8, backend="torch", side=64)
    big = np.ascontiguousarray(np.repeat(np.repeat(image, 2, 0), 2, 1))
    two = crf_from_scores(big, grid, 16, backend="torch", side=64)
    assert two.shape == (128, 192)
    assert np.mean(two == np.kron(one, np.ones((2, 2), np.int64))) > 0.97
    # Run at full size instead, the kernel scales with the image.
    full = crf_from_scores(big, grid, 16, backend="torch", side=None)
    assert np.mean(full == two) > 0.95


# -- backends ------------------------------------------------------------------

def test_backend_choice(monkeypatch):
    assert BACKENDS == CRF_BACKENDS  # the CLI spells them out to stay light
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("auto", "cuda:1") == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match="unknown CRF backend"):
        resolve_backend("fast")
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    assert resolve_backend("auto", "cpu") == "torch"  # falls back without pydensecrf
    image, _, probs = _scene(size=16)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(image, probs)
    with pytest.raises(ImportError, match="crf-backend torch"):
        crf_labels(image, probs, backend="densecrf")
    assert crf_labels(image, probs).shape == (16, 16)  # auto still works


def test_auto_is_torch_even_with_pydensecrf_installed(pydensecrf):
    """``auto`` never picks pydensecrf, on any device; asked for by name it runs
    on the CPU whatever the model's device."""
    for device in (None, "cpu", torch.device("cpu"), "cuda", "cuda:1"):
        assert resolve_backend("auto", device) == "torch"
    assert resolve_backend("densecrf", "cuda") == "densecrf"
    assert resolve_backend("densecrf") == "densecrf"


# -- the pool --------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "densecrf"])
def test_pool_matches_inline(backend):
    if backend == "densecrf":
        require_pydensecrf()
    scenes = [_scene(seed=s, size=(40, 52)) for s in range(3)]
    images = [s[0] for s in scenes]
    probs = [s[2] for s in scenes]
    expected = [crf_labels(i, p, backend=backend) for i, p in zip(images, probs, strict=True)]
    with CRFPool(workers=0, backend=backend) as pool:
        inline = pool.map(images, probs)
    with CRFPool(workers=2, backend=backend) as pool:
        parallel = pool.map(images, probs)
        sized = pool.submit(images[0], probs[0], out_size=(80, 104)).result()
    for e, a, b in zip(expected, inline, parallel, strict=True):
        np.testing.assert_array_equal(e, a)
        np.testing.assert_array_equal(e, b)
    assert sized.shape == (80, 104)


def test_pool_topk_maps_back_inline():
    image, clean, probs3 = _scene(size=24)
    probs = np.zeros((40, 24, 24), np.float32)
    probs[[3, 10, 33]] = probs3
    with CRFPool(workers=0, max_labels=3) as pool:
        (labels,) = pool.map([image], [probs])
    assert np.mean(labels == np.array([3, 10, 33])[clean]) > 0.97
    with pytest.raises(ValueError):
        CRFPool(workers=-1)
    with pytest.raises(ValueError, match="images"):
        CRFPool(workers=0).map([image], [])


def test_torch_pool_on_an_accelerator_runs_inline():
    pool = CRFPool(workers=4, backend="torch", device="cuda:0")
    assert pool.resolved_backend() == "torch" and pool.workers == 0
