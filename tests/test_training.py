"""Training loop: outputs, learning, resume equivalence, NaN stop, k-means variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import segeig
import segeig.train.step as step_module
from segeig.checkpoint import read_config
from segeig.config import HeadConfig
from segeig.train.launch import train
from segeig.train.state import STATE_NAME, load_train_state, read_log
from segeig.train.trainer import TrainingDivergedError, lr_at
from tests.conftest import random_image
from tests.train_helpers import read_tensors, tiny_config, write_images


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    write_images(root, [(48, 72), (64, 64), (80, 56), (40, 96)])
    return root


def steps(log):
    return [r for r in log if r["event"] == "step"]


def test_run_writes_loadable_checkpoint_log_and_spectrum(folder, tmp_path):
    out = tmp_path / "run"
    ckpt = train(tiny_config(folder), out)
    assert ckpt == out / "checkpoint.safetensors"
    assert (out / STATE_NAME).is_file()
    log = read_log(out / "train_log.jsonl")
    events = [r["event"] for r in log]
    assert events[0] == "start" and events[-1] == "end" and "centroids" in events
    start = log[0]
    assert start["num_images"] == 4 and start["steps_per_epoch"] == 2
    assert start["total_steps"] == 4 and start["amp"] == "off"
    assert [r["step"] for r in steps(log)] == [1, 2, 3, 4]
    epochs = [r for r in log if r["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(len(e["eigenvalues"]) == 8 for e in epochs)
    config = read_config(ckpt)
    assert config["methods"] == ["eigen", "eigen+kmeans"]
    assert config["training"]["dataset"] == "folder" and config["training"]["kmeans_k"] == 4
    assert config["objective"]["beta_effective"] == pytest.approx(0.08 * 256 / 8)
    assert config["kernel"]["k_feat"] == 256
    # The checkpoint's spectrum is measured after training (Rayleigh quotients of
    # the unit-normalised softmax outputs on the centroid pass's views) and the
    # outputs are stored in its decreasing order.
    measured = [r for r in log if r["event"] == "eigenvalues"]
    assert len(measured) == 1 and sorted(measured[0]["order"]) == list(range(8))
    values = config["eigenvalues"]
    assert len(values) == 8 and values == sorted(values, reverse=True)
    np.testing.assert_allclose(values, measured[0]["eigenvalues"], atol=1e-5)
    # A Rayleigh quotient of the normalised kernel lies in [0, 1 + α].
    assert min(values) >= 0 and max(values) <= 1.3 + 1e-4
    assert config["resolution"] == {"short": 0, "max_long": 0}  # tiny_config: own size
    seg = segeig.load(ckpt, device="cpu")
    assert seg.eigenvalues == config["eigenvalues"]
    labels = seg.predict(random_image(np.random.default_rng(1), 50, 70), method="eigen+kmeans")
    assert labels.shape == (50, 70) and labels.max() < 4


def test_training_lowers_the_loss(folder, tmp_path):
    # Fixed τ, fixed crops (no augmentation): the loss values are comparable
    # across steps, and Adam must raise tr(R) well above its start.
    config = tiny_config(folder, head=HeadConfig(k=8, tau_max=0.5, tau_min=0.5), steps=24,
                         batch_size=2, scale=(1.0, 1.0), hflip=False, photometric=False,
                         lr=1e-2, lr_min=1e-2, resize_short=64)
    train(config, tmp_path / "run")
    losses = [r["loss"] for r in steps(read_log(tmp_path / "run" / "train_log.jsonl"))]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.2 * abs(first), (first, last)


def test_lr_schedule_is_cosine_per_iteration():
    assert lr_at(0, 100, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert lr_at(100, 100, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert lr_at(50, 100, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    values = [lr_at(s, 100, 1e-3, 1e-5) for s in range(101)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


class InterruptError(Exception):
    pass


def interrupt_at(step_to_stop):
    def progress(step, total, info):
        if info["phase"] == "train" and step == step_to_stop:
            raise InterruptError(step)
    return progress


@pytest.mark.parametrize("save_every", [0, 1])
def test_resume_is_bit_for_bit(folder, tmp_path, save_every):
    """2 epochs straight == interrupted mid-epoch-2, then --resume."""
    config = tiny_config(folder, save_every=save_every)
    straight = train(config, tmp_path / "straight")
    with pytest.raises(InterruptError):
        # Stops after step 3 (epoch 2 of 2 steps each); the last state is step 2
        # (epoch end) or step 3 (save_every=1).
        train(config, tmp_path / "resumed", progress=interrupt_at(3))
    state = load_train_state(tmp_path / "resumed" / STATE_NAME)
    assert state.progress.step == (3 if save_every else 2)
    resumed = train(config, tmp_path / "resumed", resume=True)
    a, b = read_tensors(straight), read_tensors(resumed)
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # head weights and centroids, exactly
    assert read_config(straight)["eigenvalues"] == read_config(resumed)["eigenvalues"]
    # The log of the resumed run tells the same story (times aside).
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("time", "it_s")}  # noqa: E731
                         for r in log if r["event"] in ("step", "epoch")]
    log_a = read_log(tmp_path / "straight" / "train_log.jsonl")
    log_b = read_log(tmp_path / "resumed" / "train_log.jsonl")
    assert strip(log_a) == strip(log_b)
    assert [r["event"] for r in log_b].count("resume") == 1


def test_resume_of_finished_run_and_refusals(folder, tmp_path):
    config = tiny_config(folder, epochs=1)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="nothing to resume"):
        train(config, out, resume=True)
    ckpt = train(config, out)
    before = ckpt.read_bytes()
    assert train(config, out, resume=True) == ckpt and ckpt.read_bytes() == before
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config, out)
    with pytest.raises(ValueError, match=r"epochs: 1 → 3"):
        train(tiny_config(folder, epochs=3), out, resume=True)
    # A run from N processes resumes only with N processes (the data plan depends on it).
    state_file = out / STATE_NAME
    with safe_open(str(state_file), framework="pt") as handle:
        meta = json.loads(handle.metadata()["segeig_train_state"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    meta["progress"]["extra"]["world_size"] = 2
    save_file(tensors, str(state_file), metadata={"segeig_train_state": json.dumps(meta)})
    with pytest.raises(ValueError, match="trained with 2 process"):
        train(config, out, resume=True)
    meta["progress"]["extra"]["world_size"] = 1
    save_file(tensors, str(state_file), metadata={"segeig_train_state": json.dumps(meta)})
    # Workers and logging cadence may change on resume.
    train(tiny_config(folder, epochs=1, log_every=5), out, resume=True)
    # --overwrite removes the replaced run's state at once: a crash before the
    # new run's first save must not leave the old state to be resumed.
    with pytest.raises(InterruptError):
        train(tiny_config(folder, epochs=2), out, overwrite=True, progress=interrupt_at(1))
    assert not (out / STATE_NAME).exists()
    with pytest.raises(ValueError, match="nothing to resume"):
        train(tiny_config(folder, epochs=2), out, resume=True)


def test_nan_stops_clearly_and_keeps_last_good_checkpoint(folder, tmp_path, monkeypatch):
    config = tiny_config(folder, epochs=3)
    out = tmp_path / "run"
    real_loss = step_module.neuralef_loss
    calls = {"n": 0}

    def poisoned(psi, kernel, beta, t):
        calls["n"] += 1
        result = real_loss(psi, kernel, beta, t)
        if calls["n"] == 4:  # step 4 = second step of epoch 2
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(step_module, "neuralef_loss", poisoned)
    with pytest.raises(TrainingDivergedError) as err:
        train(config, out)
    message = str(err.value)
    assert "step 4/6" in message and "nan" in message and "--lr" in message
    assert "checkpoint.safetensors (step 2)" in message
    document = read_config(out)
    assert document["training"]["steps_done"] == 2  # the epoch-1 checkpoint is intact
    head = read_tensors(out / "checkpoint.safetensors", "head.")
    assert all(torch.isfinite(v).all() for v in head.values())
    assert load_train_state(out / STATE_NAME).progress.step == 2
    assert read_log(out / "train_log.jsonl")[-1]["event"] == "diverged"
    # After fixing the cause, the run continues from the good checkpoint.
    monkeypatch.setattr(step_module, "neuralef_loss", real_loss)
    train(config, out, resume=True)
    assert read_config(out)["training"]["steps_done"] == 6


def test_a_huge_learning_rate_stops_clearly_and_keeps_the_good_checkpoint(folder, tmp_path):
    """Regression: ``--lr 1e6`` ended in a cryptic k-means error (its features overflowed)
    and the refit replaced a good checkpoint by a collapsed one."""
    out = tmp_path / "run"
    good = train(tiny_config(folder, steps=2), out)
    before = good.read_bytes()
    with pytest.raises(TrainingDivergedError, match="outputs exploded.*left untouched.*--lr"):
        train(tiny_config(folder, steps=6, lr=1e6), out, overwrite=True)
    assert good.read_bytes() == before
    assert read_log(out / "train_log.jsonl")[-1]["event"] == "diverged"


def test_kmeans_baseline_checkpoint(folder, tmp_path):
    ckpt = train(tiny_config(folder, method="kmeans", kmeans_k=5), tmp_path / "km")
    config = read_config(ckpt)
    assert config["head"] is None and config["methods"] == ["kmeans"]
    assert "eigenvalues" not in config
    log = read_log(tmp_path / "km" / "train_log.jsonl")
    assert not steps(log)
    seg = segeig.load(ckpt, device="cpu")
    assert seg.num_segments() == 5
    assert seg.predict(random_image(np.random.default_rng(2), 40, 40)).max() < 5


def test_baseline_centroids_in_the_same_checkpoint(folder, tmp_path):
    ckpt = train(tiny_config(folder, epochs=1, baseline_centroids=True), tmp_path / "all")
    seg = segeig.load(ckpt, device="cpu")
    assert seg.methods == ["eigen", "eigen+kmeans", "kmeans"]
    tensors = read_tensors(ckpt, "centroids.")
    assert tensors["centroids.eigen+kmeans"].shape[0] == tensors["centroids.kmeans"].shape[0] == 4


def test_too_few_tokens_for_kmeans_is_clear(folder, tmp_path):
    with pytest.raises(ValueError, match="lower --kmeans-k"):
        train(tiny_config(folder, epochs=1, kmeans_k=500), tmp_path / "run")


def test_bf16_autocast_path_runs(folder, tmp_path):
    # The CUDA AMP code path (autocast around backbone and head, float32 kernel
    # and loss) exercised on CPU with bfloat16.
    ckpt = train(tiny_config(folder, epochs=1, amp="bf16"), tmp_path / "amp")
    log = read_log(tmp_path / "amp" / "train_log.jsonl")
    assert log[0]["amp"] == "bfloat16"
    assert all(np.isfinite(r["loss"]) for r in steps(log))
    assert segeig.load(ckpt, device="cpu").methods == ["eigen", "eigen+kmeans"]


def test_padding_is_kept_out_of_the_graph(tmp_path):
    # Images smaller than the crop are padded: those patches must not be nodes.
    root = tmp_path / "small"
    write_images(root, [(24, 24), (30, 20)])
    config = tiny_config(root, epochs=1, scale=(1.0, 1.0), kmeans_k=2)
    train(config, tmp_path / "run")
    record = steps(read_log(tmp_path / "run" / "train_log.jsonl"))[0]
    # 64 px crops = 4×4 patches of 16 px. A patch is a node when ≥ 50 % of its
    # pixels are real: 24×24 → 3 patches (the corner one is 8×8/256 = 25 %
    # real), 30×20 → 2 (the second column is 4/16 real). Not 2·16 = 32.
    assert record["tokens"] == 3 + 2


def test_progress_reports_both_phases(folder, tmp_path):
    seen = []
    train(tiny_config(folder, epochs=1), tmp_path / "run",
          progress=lambda s, t, info: seen.append((info["phase"], s, t)))
    train_calls = [x for x in seen if x[0] == "train"]
    assert train_calls == [("train", 1, 2), ("train", 2, 2)]
    assert seen[-1][0] == "kmeans" and seen[-1][1] == seen[-1][2]


def test_checkpoint_json_is_plain(folder, tmp_path):
    ckpt = train(tiny_config(folder, epochs=1), tmp_path / "run")
    training = read_config(ckpt)["training"]
    json.dumps(training)  # serialisable as is
    assert training["backbone"]["arch_overrides"]["depth"] == 4
