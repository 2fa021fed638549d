"""Which checkpoint the demo serves, the start-up fit, the weights error page, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from segeig.app import startup

from segeig.backbone import BackboneWeightsError
from segeig.checkpoint import CheckpointError
from segeig.cli import build_parser, main
from segeig.config import BackboneConfig
from segeig.train import launch
from tests.app_helpers import write_image, write_tiny_checkpoint
from tests.conftest import random_image


class FakeFit:
    """Stands in for segeig.train.launch.fit_images: records the call, writes a checkpoint."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def __call__(self, images, out_dir, *, backbone=None, device="auto", progress=None, **kw):
        self.calls.append({"images": list(images), "out_dir": Path(out_dir),
                           "backbone": backbone, "device": device})
        for step in range(1, 4):
            if progress is not None:
                progress(step, 3, {"loss": -0.1 * step})
        return write_tiny_checkpoint(self.model, Path(out_dir))


@pytest.fixture
def fake_fit(monkeypatch, tiny_model):
    fit = FakeFit(tiny_model)
    monkeypatch.setattr(launch, "fit_images", fit)
    return fit


@pytest.fixture
def examples(tmp_path, rng):
    folder = tmp_path / "examples"
    for name in ("b.png", "a.jpg"):
        write_image(folder / name, random_image(rng, 32, 32))
    return folder


def test_slug_depends_on_backbone_and_weights(tmp_path):
    hub = startup.backbone_slug(BackboneConfig("vit_small_patch16_224.dino", "hub"))
    rnd = startup.backbone_slug(BackboneConfig("vit_small_patch16_224.dino", "random"))
    f1 = startup.backbone_slug(BackboneConfig("vit_x", str(tmp_path / "w1.pth")))
    f2 = startup.backbone_slug(BackboneConfig("vit_x", str(tmp_path / "w2.pth")))
    assert hub == "vit_small_patch16_224.dino-hub"
    assert len({hub, rnd, f1, f2}) == 4
    assert "/" not in f1 and f1.startswith("vit_x-file-")


def test_fits_once_then_uses_cache(tmp_path, examples, fake_fit):
    fit = fake_fit
    backbone = BackboneConfig("vit_small_patch16_224.dino", "random")
    seen = []
    path, how = startup.find_or_fit_checkpoint(
        None, tmp_path / "weights", backbone, examples, device="cpu",
        progress=lambda s, t, i: seen.append((s, t)))
    assert how == "fitted"
    assert path == startup.fitted_checkpoint_path(tmp_path / "weights", backbone)
    assert path.is_file()
    assert fit.calls[0]["images"] == [examples / "a.jpg", examples / "b.png"]
    assert fit.calls[0]["backbone"] is backbone and fit.calls[0]["device"] == "cpu"
    assert seen == [(1, 3), (2, 3), (3, 3)]
    again, how = startup.find_or_fit_checkpoint(None, tmp_path / "weights", backbone, examples)
    assert (again, how) == (path, "cached fit") and len(fit.calls) == 1
    # another backbone does not reuse that cache
    other = BackboneConfig("vit_small_patch16_224.dino", "hub")
    _, how = startup.find_or_fit_checkpoint(None, tmp_path / "weights", other, examples)
    assert how == "fitted" and len(fit.calls) == 2


def test_prefers_given_then_weights_dir(tmp_path, examples, tiny_model, fake_fit):
    fit = fake_fit
    backbone = BackboneConfig()
    given = write_tiny_checkpoint(tiny_model, tmp_path / "given")
    placed = write_tiny_checkpoint(tiny_model, tmp_path / "weights")
    assert startup.find_or_fit_checkpoint(given.parent, tmp_path / "weights", backbone,
                                          examples) == (given, "given")
    assert startup.find_or_fit_checkpoint(None, tmp_path / "weights", backbone,
                                          examples) == (placed, "weights")
    assert fit.calls == []
    with pytest.raises(CheckpointError):
        startup.find_or_fit_checkpoint(tmp_path / "nope", tmp_path / "weights", backbone,
                                       examples)


def test_nothing_to_serve_is_a_clear_error(tmp_path, fake_fit):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        startup.find_or_fit_checkpoint(None, tmp_path / "weights", BackboneConfig(),
                                       tmp_path / "no-examples")


def test_weights_error_page_names_offline_options():
    text = startup.weights_error_text("vit_small_patch16_224.dino")
    for option in ("--backbone-weights PATH", "HF_HUB_OFFLINE=1", "--checkpoint CKPT",
                   "--backbone-weights random"):
        assert option in text
    assert "Hugging Face hub on first use" in text
    local = startup.weights_error_text("vit_x", "/secret/dir/w.pth")
    assert "file given with `--backbone-weights` could not be used" in local
    assert "/secret" not in local and "w.pth" not in local
    try:
        try:
            raise BackboneWeightsError("no network")
        except BackboneWeightsError as inner:
            raise RuntimeError("fit failed") from inner
    except RuntimeError as outer:
        assert startup.is_weights_error(outer)
    assert not startup.is_weights_error(ValueError("other"))


def test_bundled_examples_exist():
    assert len(startup.example_images(startup.DEFAULT_EXAMPLES)) >= 2
    assert startup.find_examples_dir() == startup.DEFAULT_EXAMPLES


def test_examples_found_in_working_directory(tmp_path, monkeypatch, examples):
    # an installed package has no examples beside it; ./examples is used then
    monkeypatch.setattr(startup, "DEFAULT_EXAMPLES", tmp_path / "site-packages" / "examples")
    monkeypatch.chdir(tmp_path)
    assert startup.find_examples_dir() == Path("examples").resolve()


# -- CLI ------------------------------------------------------------------------
@pytest.fixture
def served(monkeypatch):
    """Replace segeig.app.ui.serve: record what the CLI would serve instead of serving it."""
    calls = []

    def fake_serve(demo, host, port, **kwargs):
        calls.append({"demo": demo, "host": host, "port": port, **kwargs})
        return demo

    monkeypatch.setattr("segeig.app.ui.serve", fake_serve)
    yield calls
    for call in calls:
        downloads = getattr(call["demo"], "segeig_downloads", None)
        if downloads is not None:
            downloads.cleanup()


def test_cli_parser_defaults():
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.checkpoint, args.share) == ("127.0.0.1", 7860, None, False)
    assert args.backbone_weights is None and args.concurrency >= 1


def test_cli_serves_checkpoint(tmp_path, tiny_model, served, examples):
    ckpt = write_tiny_checkpoint(tiny_model, tmp_path / "ckpt")
    code = main(["demo", "--checkpoint", str(ckpt), "--port", "8123", "--device", "cpu",
                 "--max-upload-mb", "3", "--concurrency", "3", "--examples", str(examples)])
    assert code == 0
    (call,) = served
    assert (call["host"], call["port"]) == ("127.0.0.1", 8123)
    assert call["max_upload_mb"] == 3 and call["concurrency"] == 3 and call["share"] is False
    assert call["allowed_paths"] == [examples]
    assert hasattr(call["demo"], "segeig_downloads")  # the real demo, not the error page


def test_cli_serves_error_page_when_weights_missing(tmp_path, served, monkeypatch, caplog):
    def no_weights(*args, **kwargs):
        raise BackboneWeightsError("could not obtain pretrained weights (offline)")

    monkeypatch.setattr("segeig.app.startup.find_or_fit_checkpoint", no_weights)
    assert main(["demo", "--weights-dir", str(tmp_path)]) == 0
    (call,) = served
    assert not hasattr(call["demo"], "segeig_downloads")
    config = call["demo"].config
    texts = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert "Offline options" in texts and "could not obtain" in caplog.text


def test_cli_rejects_bad_limits(capsys):
    assert main(["demo", "--max-side", "0"]) == 2
    assert "--max-side must be >= 1" in capsys.readouterr().err


def test_real_start_up_fit_on_examples(tmp_path, examples):
    """The real fit (segeig.train.launch.fit_images), not a stand-in, then the cached reuse."""
    from tests.conftest import tiny_backbone_config

    seen = []
    path, how = startup.find_or_fit_checkpoint(
        None, tmp_path / "weights", tiny_backbone_config(), examples, device="cpu",
        progress=lambda step, total, info: seen.append((step, total)))
    assert how == "fitted" and path.is_file()
    assert seen and seen[-1][0] == seen[-1][1]  # progress reached the end
    assert path.is_relative_to(tmp_path / "weights")
    again, how_again = startup.find_or_fit_checkpoint(
        None, tmp_path / "weights", tiny_backbone_config(), examples, device="cpu")
    assert (again, how_again) == (path, "cached fit")
