"""Worker processes never hang the caller (segeig.workers, batch decoding, evaluation).

The fault these guard against: with a small /dev/shm (Docker's default 64 MB)
a DataLoader worker could not put a decoded photo into shared memory, its
feeder thread dropped the item, and ``segeig segment`` waited forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segeig.batch.inputs import decode_images
from segeig.workers import WorkerError, ordered_map

#: A run that has not finished by then is hung (each case takes well under a second).
DEADLINE_S = 30


def _within_deadline(fn):
    """Run ``fn()`` in a thread; its result or exception, or fail if it hangs."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"hung: no result after {DEADLINE_S} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _square(x: int) -> int:
    return x * x


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # what the kernel's OOM killer does to a worker, in effect
    return x


class _Unsendable:
    def __reduce__(self):
        raise RuntimeError("unable to allocate shared memory: No space left on device")


def _unsendable(x: int):
    return _Unsendable() if x == 2 else x


def test_ordered_map_keeps_order_in_and_out_of_process():
    for workers in (0, 2):
        assert list(ordered_map(_square, range(7), workers, window=3)) == [x * x for x in range(7)]


def test_a_dead_worker_is_an_error_not_a_hang():
    with pytest.raises(WorkerError, match="died unexpectedly"):
        _within_deadline(lambda: list(ordered_map(_die_on_three, range(6), 2)))


def test_a_result_that_cannot_be_sent_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="shared memory"):
        _within_deadline(lambda: list(ordered_map(_unsendable, range(4), 2)))


def test_the_cost_budget_bounds_what_is_in_flight():
    """Never more than ``budget`` in flight (the item handed out included)."""
    costs = [3, 3, 3, 10, 1, 1]

    def run(budget: int | None) -> list[int]:
        drawn: list[int] = []
        waiting = []
        for count, value in enumerate(ordered_map(
                _square, range(len(costs)), 2, window=4, budget=budget,
                cost=lambda i: drawn.append(i) or costs[i]), start=1):
            assert value == (count - 1) ** 2
            # Drawn but not yet handed out (one of them may be waiting unsubmitted).
            waiting.append(len(drawn) - count)
        return waiting

    # The window alone lets three wait beside the item handed out; budget 6
    # holds two items of cost 3, so one is submitted and one drawn at most.
    assert max(run(None)) == 3
    assert max(run(6)) <= 2 and run(6)[3] <= 1


def _image(path: Path, value: int) -> Path:
    Image.fromarray(np.full((40, 50, 3), value, np.uint8)).save(path)
    return path


def test_decoding_never_needs_shared_memory(tmp_path, monkeypatch):
    """Regression: a full /dev/shm made the DataLoader wait forever.

    Sharing any tensor storage fails here, in the workers too (they are
    forked after the patch), as it does when /dev/shm is full.
    """

    def no_shm(self, *args, **kwargs):
        raise RuntimeError("unable to allocate shared memory(shm): No space left on device")

    monkeypatch.setattr(torch.UntypedStorage, "_share_fd_cpu_", no_shm)
    monkeypatch.setattr(torch.UntypedStorage, "_share_filename_cpu_", no_shm)
    paths = [_image(tmp_path / f"{i}.png", 60 * i) for i in range(4)]
    out = _within_deadline(lambda: list(decode_images(paths, workers=2)))
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert all(image is not None and image[0, 0, 0] == 60 * i for i, image, _ in out)


def test_a_dead_decoding_worker_is_an_error(tmp_path, monkeypatch):
    import segeig.batch.inputs as inputs

    def crash(path, **kwargs):
        os._exit(1)

    monkeypatch.setattr(inputs, "read_image", crash)
    paths = [_image(tmp_path / f"{i}.png", i) for i in range(3)]
    with pytest.raises(WorkerError, match="decoding worker"):
        _within_deadline(lambda: list(decode_images(paths, workers=2)))


# Not marked slow (about 8 s, mostly the subprocess importing torch): CI runs
# as root, so the real small-/dev/shm run happens there.
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private /dev/shm")
def test_segment_finishes_with_a_tiny_dev_shm(tmp_path, tiny_model):
    """The issue's repro, scaled down: /dev/shm of 1 MB, photos of 1.2 MB decoded."""
    from segeig.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "ck", tiny_model)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((600, 700, 3), 60 * i, np.uint8)).save(folder / f"{i}.jpg")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m refused: {probe.stderr.decode().strip()}")
    command = (f"mount -t tmpfs -o size=1m tmpfs /dev/shm && {sys.executable} -m segeig "
               f"segment {folder} --out {tmp_path / 'out'} --checkpoint {checkpoint} "
               "--workers 2 --max-side 256")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "out" / "labels").glob("*.png"))) == 4
