"""Every command-line failure ends in one clear line and a non-zero exit (-v: the traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from segeig.checkpoint import save_checkpoint
from segeig.cli import error_line, main


def _edited_checkpoint(tmp_path, model, edit):
    path = save_checkpoint(tmp_path / "ck", model)
    with safe_open(str(path), framework="pt") as handle:
        doc = json.loads(handle.metadata()["segeig"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    edit(doc)
    save_file(tensors, str(path), metadata={"segeig": json.dumps(doc)})
    return path


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("segeig ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"segeig {command}: error: ")
    return lines[0]


def test_info_on_a_checkpoint_without_backbone(tmp_path, tiny_model, capsys):
    """Regression: a KeyError traceback."""
    path = _edited_checkpoint(tmp_path, tiny_model, lambda d: d.pop("backbone"))
    assert main(["info", str(path)]) == 2
    assert "lacks 'backbone'" in _one_error_line(capsys, "info")


def test_segment_with_a_mistyped_head(tmp_path, tiny_model, capsys):
    """Regression: ``head.k = "8"`` gave a TypeError traceback."""
    path = _edited_checkpoint(tmp_path, tiny_model, lambda d: d["head"].update(k="8"))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(path), "--workers", "0"])
    assert code == 2
    assert "HeadConfig.k must be an integer" in _one_error_line(capsys, "segment")


def test_an_unwritable_output_folder(tmp_path, tiny_model, capsys):
    """Regression: a PermissionError traceback (here: --out below a file, as root can write
    anywhere; the same handler catches every OSError)."""
    path = save_checkpoint(tmp_path / "ck", tiny_model)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    code = main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "file" / "o"),
                 "--checkpoint", str(path), "--workers", "0"])
    assert code == 2
    assert "Not a directory" in _one_error_line(capsys, "segment")


def test_error_lines():
    assert error_line(PermissionError(13, "Permission denied", "/srv/out")) == \
        "Permission denied: /srv/out"
    assert error_line(ValueError("two\nlines")) == "two lines"
    assert "a bug in segeig" in error_line(KeyError("backbone"))
    worker = RuntimeError(
        "Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  File \"collate.py\", line 273\n    storage = ...\nRuntimeError: "
        "unable to allocate shared memory(shm) for file </torch_1>: No space left on device")
    line = error_line(worker)
    assert "File" not in line and line.startswith("Caught RuntimeError in DataLoader worker")
    assert "No space left on device" in line and "--workers 0" in line


def test_unexpected_errors_exit_1_and_verbose_shows_the_traceback(monkeypatch, capsys):
    import segeig.cli.info as info

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(info, "run", broken)
    assert main(["info", "x"]) == 1
    assert "unexpected KeyError" in _one_error_line(capsys, "info")
    with pytest.raises(KeyError):
        main(["-v", "info", "x"])
