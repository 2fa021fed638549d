"""Batch segmentation: formats, failures, resume, shards, summary, CLI, fit-on-inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import segeig
from segeig.backbone import Backbone
from segeig.batch.inputs import expand_inputs, select_shard
from segeig.batch.options import SegmentOptions
from segeig.batch.outputs import read_scores
from segeig.batch.pipeline import segment_files
from segeig.batch.run import segment_inputs, summary_path
from segeig.checkpoint import CHECKPOINT_NAME, save_checkpoint
from segeig.cli import main
from segeig.config import HeadConfig
from segeig.imageio import read_image
from segeig.labelmaps import read_segments
from segeig.model import build_model
from segeig.train import launch
from segeig.train.launch import fit_or_reuse_checkpoint
from tests.conftest import TINY_ARCH, random_image, tiny_backbone_config

K, CENTROIDS = 12, 5


def _tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=K))
    model.set_centroids("eigen+kmeans", torch.randn(CENTROIDS, model.head.hidden_dim))
    return save_checkpoint(path, model)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return segeig.load(checkpoint, device="cpu")


def _write_mixed(root: Path) -> dict[str, str]:
    """A folder as people have it; returns ``{key: expected outcome}``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)

    def img(h, w):
        return random_image(rng, h, w)

    Image.fromarray(img(40, 56)).save(root / "a.jpg", quality=90)
    Image.fromarray(img(40, 56)).save(root / "a.png")  # same stem as a.jpg
    Image.fromarray(img(33, 47)).convert("RGBA").save(root / "rgba.png")
    Image.fromarray(img(30, 40)).save(root / "photo.webp")
    Image.fromarray(img(30, 20)).save(root / "old.bmp")
    Image.fromarray(img(48, 48)).convert("L").save(root / "grey.png")
    Image.fromarray(img(48, 48)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "pal.png")
    grey16 = (rng.integers(0, 65536, (36, 44))).astype(np.uint16)
    Image.fromarray(grey16).save(root / "grey16.png")
    colour16 = (rng.integers(0, 65536, (20, 28, 3))).astype(np.uint16)
    cv2.imwrite(str(root / "colour16.tif"), colour16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the label map must follow the displayed orientation
    Image.fromarray(img(24, 64)).save(root / "rot.jpg", exif=exif)
    (root / "sub").mkdir(exist_ok=True)
    Image.fromarray(img(5, 3)).save(root / "sub" / "tiny.png")  # smaller than one patch
    Image.fromarray(img(90, 150)).save(root / "sub" / "big.jpg")  # windows at max_side=64
    good = (root / "a.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "garbage.png").write_bytes(b"\x89PNG but not really")
    (root / "empty.jpg").write_bytes(b"")
    (root / "readme.txt").write_text("not an image, not listed")
    ok = ["a.jpg", "a.png", "rgba", "photo", "old", "grey", "pal", "grey16", "colour16", "rot",
          "sub/tiny", "sub/big"]
    return {**{k: "segmented" for k in ok},
            **{k: "failed" for k in ["sub/truncated", "garbage", "empty"]}}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mixed") / "in"
    return root, _write_mixed(root)


def _files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix not in (".json", ".jsonl")}


def test_mixed_folder(segmenter, mixed, tmp_path):
    root, expected = mixed
    files, conflicts = expand_inputs([root])
    assert conflicts == []
    options = SegmentOptions(overlay=True, save_probs=True, max_side=64, batch_size=2)
    results = segment_files(segmenter, files, tmp_path, options)
    assert {r.key: r.status for r in results} == expected
    failed = {r.key: r.reason for r in results if r.status == "failed"}
    assert "empty" in failed["empty"]
    # Cut at a third, the file ends inside Pillow's JPEG parsing ("Truncated File
    # Read"; cut later it would be "image file is truncated" from load()), and
    # segeig.imageio reports either OSError as "decoding failed (<Pillow's text>)".
    reason = failed["sub/truncated"]
    assert reason.startswith("decoding failed (") and "truncated" in reason.lower()
    assert "not a recognised image format" in failed["garbage"]
    for item in files:
        if expected[item.key] != "segmented":
            assert not (tmp_path / "labels" / f"{item.key}.png").exists()
            continue
        size = read_image(item.path).shape[:2]  # after EXIF orientation
        labels = read_segments(tmp_path / "labels" / f"{item.key}.png")
        assert labels.shape == size, item.key
        assert labels.min() >= 0 and labels.max() < K  # eigen (the head argmax) by default
        with Image.open(tmp_path / "overlays" / f"{item.key}.jpg") as overlay:
            assert overlay.size == size[::-1]
        scores = read_scores(tmp_path / "probs" / f"{item.key}.npz")
        assert scores["scores"].shape == (K, -(-size[0] // 16), -(-size[1] // 16))
        assert scores["image_size"] == size
    assert read_segments(tmp_path / "labels" / "rot.png").shape == (64, 24)
    assert not list(tmp_path.rglob("*.tmp"))


def test_labels_match_predictor_and_batching(segmenter, mixed, tmp_path):
    root, _ = mixed
    files, _ = expand_inputs([root / "a.jpg", root / "a.png", root / "sub" / "big.jpg"])
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        segment_files(segmenter, files, out,
                      SegmentOptions(method="eigen", batch_size=batch, max_side=64))
        for item in files:
            got = read_segments(out / "labels" / f"{item.key}.png")
            want = segmenter.predict(read_image(item.path), "eigen", max_side=64)
            # Batched matmuls may differ in the last bits from single ones.
            assert (got == want).mean() > 0.999, (batch, item.key)


def _interrupt_after(n: int):
    seen = []

    def progress(result):
        seen.append(result)
        if len(seen) == n:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("workers,crf", [(0, False), (1, True)])
def test_resume_after_interrupt_gives_identical_outputs(segmenter, checkpoint, mixed, tmp_path,
                                                        workers, crf):
    root, expected = mixed
    files, _ = expand_inputs([root])
    if crf:  # the CRF variant spawns processes: keep it to a few files
        files = [f for f in files if f.key in ("a.jpg", "rgba", "grey", "sub/big", "garbage")]
    options = SegmentOptions(overlay=True, save_probs=True, max_side=64, crf=crf,
                             workers=workers)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    segment_inputs(segmenter, files, clean, options, checkpoint=checkpoint)

    with pytest.raises(KeyboardInterrupt):
        segment_inputs(segmenter, files, resumed, options, checkpoint=checkpoint,
                       progress=_interrupt_after(3))
    assert not list(resumed.rglob("*.tmp"))
    partial = json.loads(summary_path(resumed).read_text())
    assert partial["complete"] is False
    done_before = set(_files_under(resumed))
    assert 0 < len(done_before) <= len(_files_under(clean))
    if workers == 0:
        # In one process the interrupt lands before the last images are written.
        # With workers, the CRF pool and the writer threads may already have
        # finished them all when the third result is reported: then the resume
        # below must simply skip everything.
        assert len(done_before) < len(_files_under(clean))

    summary = segment_inputs(segmenter, files, resumed, options, checkpoint=checkpoint)
    assert summary.complete and summary.skipped >= 1
    assert summary.succeeded == sum(expected[f.key] == "segmented" for f in files)
    a, b = _files_under(clean), _files_under(resumed)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".npz"):  # zip headers carry timestamps: compare contents
            np.testing.assert_array_equal(read_scores(clean / name)["scores"],
                                          read_scores(resumed / name)["scores"])
        else:
            assert a[name] == b[name], name
    assert not list(resumed.rglob("*.tmp"))


def test_summary_and_settings_guard(segmenter, checkpoint, mixed, tmp_path):
    root, expected = mixed
    files, _ = expand_inputs([root / "a.jpg", root / "empty.jpg"])
    summary = segment_inputs(segmenter, files, tmp_path, checkpoint=checkpoint)
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["counts"] == {"total": 2, "segmented": 1, "skipped": 0, "failed": 1}
    assert doc["failures"][0]["input"].endswith("empty.jpg")
    assert "empty" in doc["failures"][0]["reason"]
    assert doc["checkpoint"]["sha256"] == summary.checkpoint["sha256"]
    assert doc["settings"]["method"] == "eigen" and doc["complete"] is True
    # Resuming with settings that change the outputs would mix two kinds of results.
    with pytest.raises(ValueError, match="crf: False -> True"):
        segment_inputs(segmenter, files, tmp_path, SegmentOptions(crf=True),
                       checkpoint=checkpoint)
    again = segment_inputs(segmenter, files, tmp_path, SegmentOptions(method="eigen",
                           overwrite=True), checkpoint=checkpoint)
    assert again.segmented == 1 and again.skipped == 0
    assert read_segments(tmp_path / "labels" / "a.png").max() < K


def test_partial_overwrite_with_another_checkpoint_is_never_mixed_silently(
        segmenter, checkpoint, mixed, tmp_path):
    """Regression: A on all, B --overwrite on some, then B on all "skipped" A's outputs."""
    root, _ = mixed
    torch.manual_seed(1)
    other = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=K))
    other.set_centroids("eigen+kmeans", torch.randn(CENTROIDS, other.head.hidden_dim))
    checkpoint_b = save_checkpoint(tmp_path / "b", other)
    seg_b = segeig.load(checkpoint_b, device="cpu")
    files, _ = expand_inputs([root / "a.jpg", root / "grey.png", root / "pal.png"])
    out = tmp_path / "out"
    segment_inputs(segmenter, files, out, checkpoint=checkpoint)
    some = [f for f in files if f.key == "a"]
    partial = segment_inputs(seg_b, some, out, SegmentOptions(overwrite=True),
                             checkpoint=checkpoint_b)
    assert partial.segmented == 1
    # The summary says the folder still holds the first checkpoint's outputs.
    others = json.loads((out / "summary.json").read_text())["other_checkpoints"]
    assert [o["inputs"] for o in others] == [2]
    assert others[0]["checkpoint"]["path"] == str(Path(checkpoint).resolve())
    with pytest.raises(ValueError) as refused:
        segment_inputs(seg_b, files, out, checkpoint=checkpoint_b)
    message = str(refused.value)
    assert str(Path(checkpoint).resolve()) in message and str(checkpoint_b.resolve()) in message
    assert "2 input(s)" in message and "--overwrite" in message
    redone = segment_inputs(seg_b, files, out, SegmentOptions(overwrite=True),
                            checkpoint=checkpoint_b)
    assert redone.segmented == 3 and redone.others == []
    again = segment_inputs(seg_b, files, out, checkpoint=checkpoint_b)
    assert again.skipped == 3
    # Other output settings count too: the same checkpoint with CRF would differ.
    (out / "summary.json").unlink()  # only the manifest is left to tell
    with pytest.raises(ValueError, match="same checkpoint with other settings.*method"):
        segment_inputs(seg_b, files, out, SegmentOptions(method="eigen+kmeans"),
                       checkpoint=checkpoint_b)


def test_failed_final_summary_write_leaves_no_stale_summary(segmenter, checkpoint, mixed,
                                                            tmp_path, monkeypatch):
    import segeig.batch.run as batch_run

    root, _ = mixed
    files, _ = expand_inputs([root / "a.jpg"])
    writes = []
    real = batch_run._write_summary

    def fail_second(path, summary):
        writes.append(summary.complete)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        real(path, summary)

    monkeypatch.setattr(batch_run, "_write_summary", fail_second)
    with pytest.raises(OSError, match="could not write .*summary.json"):
        segment_inputs(segmenter, files, tmp_path, checkpoint=checkpoint)
    # The summary written at the start (complete: false, no counts) is gone.
    assert not (tmp_path / "summary.json").exists()
    assert (tmp_path / "labels" / "a.png").exists()


def test_unsafe_output_is_a_per_file_failure(segmenter, mixed, tmp_path):
    root, _ = mixed
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out" / "labels").mkdir(parents=True)
    (tmp_path / "out" / "labels" / "sub").symlink_to(outside)
    files, _ = expand_inputs([root / "a.jpg", root / "sub"])
    results = segment_files(segmenter, files, tmp_path / "out")
    status = {r.key: r.status for r in results}
    assert status["a"] == "segmented"
    assert status["big"] == "segmented"  # root/sub passed as its own folder: keys "big", "tiny"
    (tmp_path / "out2" / "labels").mkdir(parents=True)
    (tmp_path / "out2" / "labels" / "sub").symlink_to(outside)
    files, _ = expand_inputs([root])
    results = segment_files(segmenter, files, tmp_path / "out2")
    refused = [r for r in results if r.key.startswith("sub/")]
    assert refused and all(r.status == "failed" and "outside" in r.reason for r in refused)
    assert list(outside.iterdir()) == []


def test_shards_cover_everything_once(checkpoint, mixed, tmp_path):
    root, expected = mixed
    whole = tmp_path / "whole"
    assert main(["-q", "segment", str(root), "--out", str(whole), "--checkpoint",
                 str(checkpoint), "--workers", "0", "--max-side", "64"]) == 0
    sharded = tmp_path / "sharded"
    for i in range(3):
        assert main(["-q", "segment", str(root), "--out", str(sharded), "--checkpoint",
                     str(checkpoint), "--workers", "0", "--max-side", "64",
                     "--shard", f"{i}/3"]) == 0
    assert _files_under(whole) == _files_under(sharded)
    counts = [json.loads((sharded / f"summary.shard-{i}-of-3.json").read_text())["counts"]
              for i in range(3)]
    assert sum(c["total"] for c in counts) == len(expected)
    assert not (sharded / "summary.json").exists()


def test_torchrun_env_selects_the_shard(checkpoint, mixed, tmp_path, monkeypatch):
    root, _ = mixed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["-q", "segment", str(root), "--out", str(tmp_path), "--checkpoint",
                 str(checkpoint), "--workers", "0"]) == 0
    files, _ = expand_inputs([root])
    doc = json.loads((tmp_path / "summary.shard-1-of-2.json").read_text())
    assert doc["counts"]["total"] == len(select_shard(files, 1, 2))


def test_cli_exit_status(checkpoint, mixed, tmp_path, capsys):
    root, _ = mixed
    args = ["-q", "segment", "--checkpoint", str(checkpoint), "--workers", "0"]
    assert main([*args, str(root / "a.jpg"), str(root / "empty.jpg"), "--out",
                 str(tmp_path / "o1")]) == 0
    assert main([*args, str(root / "a.jpg"), str(root / "empty.jpg"), "--out",
                 str(tmp_path / "o1"), "--strict"]) == 1
    assert main([*args, str(root / "empty.jpg"), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "empty.jpg" in err and "empty" in err
    assert main([*args, str(tmp_path / "missing"), "--out", str(tmp_path / "o3")]) == 2
    assert main([*args, str(root), "--out", str(tmp_path / "o4"), "--shard", "3/3"]) == 2
    assert "0-based" in capsys.readouterr().err


def test_out_dot_above_the_inputs_and_long_names(checkpoint, tmp_path, monkeypatch, capsys):
    """Regressions: ``--out .`` excluded every input; names of >= 238 bytes failed
    ("File name too long": the temp file added 18 bytes)."""
    monkeypatch.chdir(tmp_path)
    long = "x" * 236 + ".jpg"  # label file: 240 bytes, temp file would be 258
    Image.fromarray(random_image(np.random.default_rng(0), 20, 30)).save(tmp_path / long)
    Image.fromarray(random_image(np.random.default_rng(1), 20, 30)).save(tmp_path / "b.jpg")
    args = ["-q", "segment", "--checkpoint", str(checkpoint), "--workers", "0"]
    assert main([*args, long, "b.jpg", "--out", "."]) == 0
    assert (tmp_path / "labels" / ("x" * 236 + ".png")).exists()
    assert (tmp_path / "labels" / "b.png").exists()
    # The outputs are not taken for inputs on the next run over the folder.
    assert main([*args, ".", "--out", "."]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["counts"]["total"] == 2
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.fixture
def fake_fit(monkeypatch):
    """Stand-in for segeig.train.launch.fit_images, which fit_or_reuse_checkpoint calls."""
    calls = []

    def fit_images(images, out_dir, *, backbone=None, k=None, steps=None, device="auto",
                   seed=0, progress=None, feature_cache=None, feature_cache_dir=None):
        calls.append({"images": list(images), "backbone": backbone, "k": k, "steps": steps,
                      "cache": (feature_cache, feature_cache_dir)})
        for step in (1, 2):
            if progress is not None:
                progress(step, 2, {"loss": -0.1 * step})
        return _tiny_checkpoint(Path(out_dir))

    monkeypatch.setattr(launch, "fit_images", fit_images)
    return calls


def test_without_checkpoint_fits_on_inputs_then_reuses(fake_fit, mixed, tmp_path):
    root, expected = mixed
    out = tmp_path / "out"
    args = ["-q", "segment", str(root), "--out", str(out), "--workers", "0",
            "--backbone-weights", "random", "--k", "5", "--fit-steps", "2"]
    assert main(args) == 0
    assert len(fake_fit) == 1
    call = fake_fit[0]
    assert (call["k"], call["steps"], call["backbone"].weights) == (5, 2, "random")
    assert len(call["images"]) == len(expected)
    assert (out / CHECKPOINT_NAME).is_file()
    doc = json.loads((out / "summary.json").read_text())
    assert doc["checkpoint"]["fitted_here"] is True
    assert doc["counts"]["segmented"] == list(expected.values()).count("segmented")

    assert main(args) == 0  # resumed: same checkpoint, nothing to do
    assert len(fake_fit) == 1
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"]["skipped"] == list(expected.values()).count("segmented")
    assert doc["checkpoint"]["fitted_here"] is False

    assert main([*args, "--overwrite"]) == 0
    assert len(fake_fit) == 2
    assert fake_fit[0]["cache"] == (None, None)  # fit's defaults: cached, removed after
    assert main([*args, "--overwrite", "--no-feature-cache"]) == 0
    assert main([*args, "--overwrite", "--feature-cache", str(tmp_path / "c")]) == 0
    assert [c["cache"] for c in fake_fit[2:]] == [(False, None), (None, str(tmp_path / "c"))]


def test_other_shards_wait_for_the_fit(fake_fit, tmp_path):
    with pytest.raises(TimeoutError):
        fit_or_reuse_checkpoint(tmp_path, [], wait=True, poll_seconds=0.01, timeout=0.05)
    _tiny_checkpoint(tmp_path)
    path, fitted = fit_or_reuse_checkpoint(tmp_path, [], wait=True, poll_seconds=0.01)
    assert path == tmp_path / CHECKPOINT_NAME and not fitted
    assert fake_fit == []
    with pytest.raises(ValueError, match="race"):
        fit_or_reuse_checkpoint(tmp_path, [], wait=True, overwrite=True)


def test_backbone_weights_override_with_checkpoint(checkpoint, mixed, tmp_path):
    root, _ = mixed
    args = ["-q", "segment", str(root / "a.jpg"), "--checkpoint", str(checkpoint),
            "--workers", "0", "--method", "eigen"]
    assert main([*args, "--out", str(tmp_path / "embedded")]) == 0
    assert main([*args, "--out", str(tmp_path / "random"), "--backbone-weights", "random"]) == 0
    embedded = read_segments(tmp_path / "embedded" / "labels" / "a.png")
    rebuilt = read_segments(tmp_path / "random" / "labels" / "a.png")
    assert embedded.shape == rebuilt.shape
    assert not np.array_equal(embedded, rebuilt)  # a fresh random backbone, not the stored one


@pytest.mark.slow
def test_real_ctrl_c_then_resume(checkpoint, tmp_path):
    """SIGINT to the whole process group (as a terminal sends it), workers included."""
    import os
    import signal
    import subprocess
    import time

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(24):
        Image.fromarray(random_image(rng, 256, 256)).save(tmp_path / "in" / f"{i:02d}.jpg")
    cmd = [sys.executable, "-m", "segeig", "-q", "segment", str(tmp_path / "in"),
           "--checkpoint", str(checkpoint), "--crf", "--crf-backend", "torch", "--overlay",
           "--workers", "2",
           "--batch-size", "1"]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "out")], cwd=repo, start_new_session=True,
        # A shell starts background jobs with SIGINT ignored; restore the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    labels = tmp_path / "out" / "labels"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(labels.glob("*.png"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    written = len(list(labels.glob("*.png")))
    assert 3 <= written < 24
    assert not list((tmp_path / "out").rglob("*.tmp"))
    for out in ("out", "clean"):
        subprocess.run([*cmd, "--out", str(tmp_path / out)], cwd=repo, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _files_under(tmp_path / "out") == _files_under(tmp_path / "clean")


def test_crf_downscaled_for_large_images(segmenter, mixed, tmp_path):
    root, _ = mixed
    files, _ = expand_inputs([root / "sub" / "big.jpg"])  # 90×150
    full, small = tmp_path / "full", tmp_path / "small"
    segment_files(segmenter, files, full, SegmentOptions(crf=True, crf_side=None))
    segment_files(segmenter, files, small, SegmentOptions(crf=True, crf_side=45))
    a = read_segments(full / "labels" / "big.png")
    b = read_segments(small / "labels" / "big.png")
    assert a.shape == b.shape == (90, 150)
    assert (a == b).mean() > 0.7  # same segments, coarser boundaries


def test_crf_inputs_scale_and_pool_submit(segmenter, rng):
    from segeig.crf import CRFPool, crf_labels
    from segeig.resample import pixel_probs

    image = random_image(rng, 45, 70)
    scores = segmenter.patch_scores(image, "eigen")
    probs, ids = pixel_probs(scores, 16, (45, 70), max_labels=4)
    assert probs.shape == (4, 45, 70) and ids.shape == (4,)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    half, ids_half = pixel_probs(scores, 16, (45, 70), (22, 35), max_labels=4)
    assert half.shape == (4, 22, 35) and np.array_equal(ids, ids_half)
    want = ids[crf_labels(image, probs, max_labels=None)]
    with CRFPool(0) as pool:
        np.testing.assert_array_equal(pool.submit(image, probs, ids).result(), want)
        # Reduced inside the pool when given more planes than max_labels.
        pool.max_labels = 2
        got = pool.submit(image, probs, ids).result()
        assert set(np.unique(got)) <= set(ids.tolist())


def test_more_than_256_segments_give_16_bit_maps(rng, tmp_path):
    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=300))
    seg = segeig.Segmenter(model, device="cpu")
    Image.fromarray(random_image(rng, 40, 50)).save(tmp_path / "x.png")
    files, _ = expand_inputs([tmp_path / "x.png"])
    segment_files(seg, files, tmp_path / "out", SegmentOptions(method="eigen", overlay=True))
    path = tmp_path / "out" / "labels" / "x.png"
    with Image.open(path) as img:
        assert img.mode == "I;16"
    labels = read_segments(path)
    np.testing.assert_array_equal(labels, seg.predict(read_image(tmp_path / "x.png"), "eigen"))


def test_cli_without_checkpoint_fits_for_real_then_reuses(tmp_path, rng):
    """The README's main job, end to end with the real fit on a tiny random ViT."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(48, 64), (64, 40), (56, 56)]):
        Image.fromarray(random_image(rng, *size)).save(photos / f"p{i}.jpg")
    out = tmp_path / "out"
    arch = [f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()]
    argv = ["segment", str(photos), "--out", str(out), "--backbone-weights", "random", *arch,
            "--fit-steps", "3", "--k", "4", "--overlay", "--device", "cpu"]
    assert main(argv) == 0
    assert (out / "checkpoint.safetensors").is_file()
    labels = read_segments(out / "labels" / "p1.png")
    assert labels.shape == (64, 40) and labels.max() < 4
    assert (out / "overlays" / "p1.jpg").is_file()
    stamp = (out / "checkpoint.safetensors").stat().st_mtime_ns
    assert main(argv) == 0  # second run: reuses the fit, skips done images
    assert (out / "checkpoint.safetensors").stat().st_mtime_ns == stamp
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped"] == 3
