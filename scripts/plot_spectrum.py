#!/usr/bin/env python
"""Plot the learned spectrum from a training log.

Left: the eigenvalue estimates (epoch mean of diag(R)/t) of the last epoch in
eigenfunction order, with the same values sorted (dashed) — NeuralEF orders
the functions, so the two curves should nearly coincide. Right: how the
estimates of the first eigenfunctions evolved over the epochs.

    python scripts/plot_spectrum.py runs/pc/train_log.jsonl --out spectrum.png
    python scripts/plot_spectrum.py runs/pc            # writes runs/pc/spectrum.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segeig.atomic import atomic_write  # noqa: E402
from segeig.train import LOG_NAME, read_log  # noqa: E402


def load_spectra(log_path: Path) -> tuple[list[int], np.ndarray]:
    """``(epoch numbers, epochs × K eigenvalue array)`` from a JSONL log."""
    records = [r for r in read_log(log_path) if r.get("event") == "epoch" and r.get("eigenvalues")]
    if not records:
        raise ValueError(f"{log_path} has no epoch records with eigenvalues "
                         "(k-means-only runs and runs stopped before one epoch have none)")
    return [r["epoch"] for r in records], np.array([r["eigenvalues"] for r in records])


def plot(epochs: list[int], spectra: np.ndarray, out: Path, top: int = 16) -> Path:
    """Draw the figure and write it atomically to ``out`` (PNG)."""
    last = spectra[-1]
    k = len(last)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    index = np.arange(1, k + 1)
    left.plot(index, last, marker="o" if k <= 64 else None, ms=3, lw=1.2,
              label="eigenfunction order")
    left.plot(index, np.sort(last)[::-1], ls="--", lw=1, color="gray", label="sorted")
    left.set(xlabel="eigenfunction j", ylabel="eigenvalue estimate diag(R)/t",
             title=f"learned spectrum (epoch {epochs[-1]}, K={k})")
    left.legend()
    left.grid(alpha=0.3)
    shown = min(top, k)
    colours = plt.cm.viridis(np.linspace(0, 1, shown))
    for j in range(shown):
        right.plot(epochs, spectra[:, j], color=colours[j], lw=1.2,
                   marker="o" if len(epochs) < 30 else None, ms=3,
                   label=f"j={j + 1}" if j in (0, shown - 1) else None)
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.set(xlabel="epoch", ylabel="eigenvalue estimate",
              title=f"first {shown} eigenfunctions over training")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot eigenvalues from train_log.jsonl.")
    parser.add_argument("log", help="train_log.jsonl or the training output directory")
    parser.add_argument("--out", help="PNG path (default: spectrum.png beside the log)")
    parser.add_argument("--top", type=int, default=16, help="eigenfunctions in the right panel")
    args = parser.parse_args(argv)
    log = Path(args.log)
    if log.is_dir():
        log = log / LOG_NAME
    if not log.is_file():
        print(f"plot_spectrum: no training log at {log}", file=sys.stderr)
        return 2
    try:
        epochs, spectra = load_spectra(log)
    except ValueError as err:
        print(f"plot_spectrum: {err}", file=sys.stderr)
        return 2
    out = plot(epochs, spectra, Path(args.out) if args.out else log.with_name("spectrum.png"),
               args.top)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
