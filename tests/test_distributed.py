"""Two gloo processes on CPU: DistributedDataParallel keeps the ranks identical,
and the global graph equals single-process training on the combined batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

import segeig
from segeig.checkpoint import read_config
from segeig.config import HeadConfig
from segeig.head import EigenHead
from segeig.train.launch import train
from segeig.train.runtime import DistContext
from segeig.train.state import read_log
from tests.train_helpers import ddp_worker, read_tensors, tiny_config, write_images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(tmp_path):
    root = tmp_path / "imgs"
    write_images(root, [(56 + 4 * i, 72) for i in range(8)])
    out = tmp_path / "ddp"
    mp.spawn(ddp_worker, args=(2, free_port(), str(root), str(out), (False, True)), nprocs=2,
             join=True)
    for mode in ("local", "global"):
        a = read_tensors(out / mode / "rank0.safetensors")
        b = read_tensors(out / mode / "rank1.safetensors")
        assert a.keys() == b.keys() and a
        for key in a:
            assert torch.equal(a[key], b[key]), (mode, key)
        ckpt = out / mode / "checkpoint.safetensors"
        assert read_config(ckpt)["training"]["world_size"] == 2
        assert segeig.load(ckpt, device="cpu").methods == ["eigen", "eigen+kmeans"]
        # Written by rank 0 only, once: 8 images / (2 ranks × 2) = 2 steps per epoch.
        steps = [r["step"] for r in read_log(out / mode / "train_log.jsonl")
                 if r["event"] == "step"]
        assert steps == [1, 2, 3, 4]
    # The global graph over 2 ranks × 2 images is the graph of a batch of 4:
    # single-process training with batch 4 follows the same trajectory.
    torch.set_num_threads(1)
    single = train(tiny_config(root, batch_size=4, epochs=2), tmp_path / "single")
    log_ddp = read_log(out / "global" / "train_log.jsonl")
    log_one = read_log(tmp_path / "single" / "train_log.jsonl")
    loss = lambda log: [r["loss"] for r in log if r["event"] == "step"]  # noqa: E731
    assert loss(log_ddp) == pytest.approx(loss(log_one), rel=1e-6)
    # The same head, up to the order of its outputs: each run sorts them by its
    # measured eigenvalues, near-ties here, which the runs' batches may break
    # differently; undo each run's logged permutation before comparing.
    features = torch.randn(1, 3 * 48, 4, 5, generator=torch.Generator().manual_seed(0))
    outputs = []
    for state, log in ((read_tensors(single, "head."), log_one),
                       (read_tensors(out / "global" / "rank0.safetensors"), log_ddp)):
        head = EigenHead(3 * 48, HeadConfig(k=8), embed_dim=48)
        head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
        order = next(r["order"] for r in log if r["event"] == "eigenvalues")
        with torch.no_grad():
            outputs.append(head(features)[0][:, torch.argsort(torch.tensor(order))])
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)
    # The local-graph run differs: each rank's kernel covers only its 2 images.
    assert loss(read_log(out / "local" / "train_log.jsonl")) != pytest.approx(loss(log_one))


def test_world_size_without_process_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torchrun"):
        DistContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank 3"):
        DistContext(rank=3, world_size=2)


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc_per_node=2 -m segeig train` end to end (gloo on CPU)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import TINY_ARCH

    root = tmp_path / "imgs"
    write_images(root, [(64, 80)] * 8)
    arch = [f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", "-m", "segeig", "train", "--dataset", "folder",
               "--root", str(root), "--out", str(tmp_path / "run"), "--backbone-weights",
               "random", *arch, "--crop", "64", "--k", "8", "--batch-size", "2", "--epochs", "2",
               "--workers", "0", "--kmeans-k", "4", "--device", "cpu", "--global-graph"]
    repo = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = read_config(tmp_path / "run")
    assert config["training"]["world_size"] == 2 and config["training"]["global_graph"]
    assert done.stdout.count("checkpoint:") == 1  # printed by rank 0 only
