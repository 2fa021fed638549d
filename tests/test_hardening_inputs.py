"""Issue 22, user-named inputs: names files (findings 3, 9 and the nesting message),
`info` checking like the loaders (finding 7), `--out` naming a file, and names reaching
the demo's Markdown as text that cannot link (finding 6)."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from markdown_it import MarkdownIt
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import segeig
from app.logic import md_escape
from segeig.backbone import Backbone
from segeig.checkpoint import save_checkpoint
from segeig.cli import main
from segeig.config import HeadConfig
from segeig.evaluation import parse_names
from segeig.model import build_model
from tests.conftest import tiny_backbone_config

ROOT = Path(__file__).resolve().parent.parent
K = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=K)).eval()
    model.set_centroids("eigen+kmeans", torch.randn(5, model.head.hidden_dim))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# -- names files (findings 3 and 9, the nesting message) ----------------------------

#: Run in a child process: `segeig ARGV...` (argv as JSON), timed, its memory growth
#: measured and capped (address space limited to what it has plus 1 GiB, so a regression
#: fails with MemoryError instead of exhausting the machine). Prints [exit, stderr, s, bytes].
_CLI_CHILD = textwrap.dedent("""
    import contextlib, io, json, resource, sys, time
    import segeig.checkpoint, segeig.evaluation
    from segeig.cli import main
    argv = json.loads(sys.argv[1])
    pages = int(open("/proc/self/statm").read().split()[0])
    limit = pages * resource.getpagesize() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["-q", *argv])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps([code, err.getvalue(), time.perf_counter() - start, grown]))
""")


def _cli_in_child(argv: list[str]) -> tuple[int, str, float, int]:
    """``segeig ARGV`` in a child process with a 90 s timeout, so a command that hangs
    (a FIFO opened for reading) fails the test instead of blocking the suite."""
    done = subprocess.run([sys.executable, "-c", _CLI_CHILD, json.dumps(argv)],
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def _label_in_child(checkpoint: Path, names: Path, out: Path) -> tuple[int, str, float, int]:
    return _cli_in_child(["label", "--checkpoint", str(checkpoint), "--names", str(names),
                          "--out", str(out)])


def test_a_2gb_names_file_is_refused_fast_and_small(checkpoint, tmp_path):
    """Finding 3: a 2 GB names file took 25 s and 2.9 GB before its 1 MiB check."""
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB of zeros that take no disk
    code, err, seconds, grown = _label_in_child(checkpoint, huge, tmp_path / "o")
    assert code == 2 and f"names file {huge} is 2048.0 MiB, more than the 1.0 MiB" in err, err
    assert seconds < 10 and grown < 500 << 20, (seconds, grown)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_names_file_is_refused_without_hanging(checkpoint, tmp_path, kind):
    """Finding 3: a FIFO hung forever, /dev/zero ran out of memory (a hang now fails the
    child's 90 s timeout instead of blocking the suite)."""
    names = Path("/dev/zero")
    if kind == "fifo":
        names = tmp_path / "names.fifo"
        os.mkfifo(names)
    code, err, seconds, grown = _label_in_child(checkpoint, names, tmp_path / "o")
    assert code == 2 and ("FIFO" if kind == "fifo" else "character device") in err, err
    assert seconds < 10 and grown < 100 << 20


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_backbone_weights_that_are_no_regular_file_are_refused_at_once(checkpoint, tmp_path,
                                                                      kind):
    """--backbone-weights PATH: torch/safetensors opened a FIFO by name and waited for a
    writer; a directory or device was reported as "not found". Now each is refused
    before a byte is read, naming the file."""
    weights = {"device": Path("/dev/zero"), "directory": tmp_path}.get(kind)
    if kind == "fifo":
        weights = tmp_path / "weights.safetensors"
        os.mkfifo(weights)
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    code, err, seconds, _ = _cli_in_child(
        ["segment", str(images), "--out", str(tmp_path / "o"), "--checkpoint",
         str(checkpoint), "--backbone-weights", str(weights), "--device", "cpu"])
    what = {"fifo": "a FIFO (named pipe)", "device": "a character device",
            "directory": "a directory"}[kind]
    assert code == 2 and f"backbone weights file {weights} is {what}" in err, err
    assert "Traceback" not in err and seconds < 10


def test_a_repeated_cluster_id_is_refused(checkpoint, tmp_path, capsys):
    """Finding 9: the last of two equal ids won silently."""
    names = tmp_path / "names.json"
    names.write_text('{"3": "sky", "5": "grass", "3": "road"}')
    code = main(["-q", "label", "--checkpoint", str(checkpoint), "--names", str(names),
                 "--out", str(tmp_path / "o")])
    err = _error(capsys)
    assert code == 2 and f"names file {names}: the key '3' appears more than once" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="appears more than once"):
        parse_names('{"1": "a", "1": "a"}', K)


def test_a_deeply_nested_names_file_is_named_in_the_message(checkpoint, tmp_path, capsys):
    """Was: "maximum recursion depth exceeded while decoding a JSON array" (no file)."""
    names = tmp_path / "deep.json"
    names.write_text("[" * 100_000 + "]" * 100_000)
    code = main(["-q", "label", "--checkpoint", str(checkpoint), "--names", str(names),
                 "--out", str(tmp_path / "o")])
    err = _error(capsys)
    assert code == 2 and f"names file {names} is nested too deeply" in err


# -- `segeig info` runs the loaders' checks (finding 7) -----------------------------

def _edited(checkpoint: Path, folder: Path, edit) -> Path:
    with safe_open(str(checkpoint), framework="pt") as handle:
        doc = json.loads(handle.metadata()["segeig"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    edit(doc)
    folder.mkdir()
    path = folder / "checkpoint.safetensors"
    save_file(tensors, str(path), metadata={"segeig": json.dumps(doc)})
    return path


def _classes(table: list[int]) -> dict:
    return {"names": ["sky"], "palette": [[1, 2, 3]], "maps": {"eigen": table}, "source": {}}


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["backbone"].update(name="hf-hub:someone/evil"), "hf-hub"),
    (lambda d: d.update(classes=_classes([0] * 10**6)), "1000000 entries"),
    (lambda d: d.update(classes=_classes([0] * (K + 1))), f"13 entries but the method "
                                                          f"predicts {K} clusters"),
], ids=["hub-name", "million-entries", "wrong-length"])
def test_info_refuses_what_the_loaders_refuse(checkpoint, tmp_path, capsys, edit, needle):
    path = _edited(checkpoint, tmp_path / "ck", edit)
    code = main(["info", str(path)])
    err = _error(capsys)
    assert code == 2 and needle in err and str(path) in err
    with pytest.raises(ValueError, match=needle):
        segeig.load(path, device="cpu")


def test_info_still_describes_a_good_checkpoint(checkpoint, capsys):
    assert main(["info", str(checkpoint)]) == 0
    assert "methods  : eigen, eigen+kmeans" in capsys.readouterr().out


# -- `--out` naming a file ------------------------------------------------------------

@pytest.mark.parametrize("command", ["segment", "train", "fit", "label"])
def test_out_naming_a_file_says_so(checkpoint, tmp_path, capsys, command):
    """Was: "File exists: outfile"."""
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    outfile = tmp_path / "outfile"
    outfile.write_text("not a folder")
    argv = {"segment": ["segment", str(tmp_path / "a.png"), "--checkpoint", str(checkpoint)],
            "train": ["train", "--dataset", "folder", "--root", str(tmp_path)],
            "fit": ["fit", str(tmp_path / "a.png")],
            "label": ["label", "--checkpoint", str(checkpoint), "--names", "x.json"]}[command]
    code = main(["-q", *argv, "--out", str(outfile)])
    err = _error(capsys)
    assert code == 2 and f"--out {outfile} is a file; give a directory" in err
    assert outfile.read_text() == "not a folder"


# -- names in the demo's Markdown (finding 6) -----------------------------------------

HOSTILE_NAMES = ["http://2130706433/login", "www.example.com", "evil.example.com/x",
                 "a@example.com", "[x](http://a.b)", "<http://a.b>", "<b>bold</b>",
                 "**x** _y_ `z`", "# heading", "line\n\n    code", "a\\b &amp; c", "😀 ünï"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_names_reach_markdown_as_plain_text_that_cannot_link(name):
    """Finding 6: ``http://2130706433/login`` became a link to 127.0.0.1 (GFM autolink)."""
    escaped = md_escape(name)
    # Nothing an autolinker looks for is left: no scheme separator, no www., no dot,
    # no @ (every ASCII punctuation character is a numeric character reference).
    for needle in ("://", "www.", ".", "@", "<", "[", "\n"):
        assert needle not in escaped, (needle, escaped)
    assert all(c.isalnum() or c in "&#; " or not c.isascii() for c in escaped), escaped
    rendered = MarkdownIt("commonmark").render(escaped)
    assert rendered.startswith("<p>") and rendered.count("<") == 2, rendered
    assert html.unescape(rendered[3:-5]) == " ".join(name.split())
