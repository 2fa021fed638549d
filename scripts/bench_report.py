"""Table and plots of ``scripts/benchmark.py``."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_crf import CRFBench, CRFSettings  # noqa: E402
from bench_quality import (  # noqa: E402
    HEADS,
    QualityResult,
    QualitySettings,
    kernel_neighbours,
    training_text,
)

from segeig.atomic import atomic_write  # noqa: E402
from segeig.config import BackboneConfig  # noqa: E402
from segeig.crf import CRF_SIDE, CRFParams  # noqa: E402
from segeig.spectral import exact_spectral_bytes  # noqa: E402

#: Full training sets for the clearly labelled extrapolations: (name, images, tokens/image).
DATASETS = (("Pascal Context train, 480 px crops", 4998, 900),
            ("ADE20K train, 512 px crops", 20210, 1024))
MLP_TARGET = 10.0  # % of the backbone's time


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def size_text(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e3:.0f} kB"


def duration_text(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.1f} s"


class Table:
    """Rows of ``section | configuration | measured | relative | notes``."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, *row: str) -> None:
        self.rows.append(tuple(str(c) for c in row))  # type: ignore[arg-type]

    def markdown(self) -> str:
        lines = ["| section | configuration | measured | relative | notes |",
                 "|---|---|---:|---:|---|"]
        last = None
        for section, *rest in self.rows:
            shown = section if section != last else ""
            last = section
            lines.append("| " + " | ".join([shown, *rest]).replace("\n", " ") + " |")
        return "\n".join(lines)

    def inference(self, times: dict[str, float], size: int, names: list[str]) -> None:
        base = times["backbone"]
        section = f"inference per image, {size}×{size} px"
        self.add(section, "backbone forward alone", ms(base), "1.00×", "reference")
        for name in names:
            self.add(section, name, ms(times[name]), f"{times[name] / base:.2f}×",
                     "predict(): forward, scores, full-size argmax")
        for name in names:
            self.add(section, f"{name} + CRF", ms(times[f"{name}+crf"]),
                     f"{times[f'{name}+crf'] / base:.2f}×",
                     f"dense CRF inline (default backend), {CRFParams().iterations} iterations "
                     f"at ≤ {CRF_SIDE} px")
        section = f"after the backbone, {size}×{size} px"
        for head in HEADS:
            if f"head:{head}" in times:
                share = 100 * times[f"head:{head}"] / base
                self.add(section, f"{head} head forward alone", ms(times[f"head:{head}"]),
                         f"{share:.1f} % of backbone", "on the backbone's features")
        for name in names:
            after = times[f"{name}/after"]
            share = 100 * after / base
            note = "head/clustering + upsampling + argmax"
            if name.endswith("· mlp"):
                verdict = "met" if share < MLP_TARGET else "MISSED"
                note += f"; target < {MLP_TARGET:.0f} %: {verdict}"
            self.add(section, name, ms(after), f"{share:.1f} % of backbone", note)

    def quality(self, q: QualityResult, s: QualitySettings, backbone: str = "random ViT"
                ) -> None:
        seeds = f", mean ± sd of {q.seeds} seeds" if q.seeds > 1 else ""
        section = (f"quality, synthetic proxy ({s.n_val} val images, {s.classes} classes, "
                   f"{backbone}{seeds})")

        def value(key: tuple[str, str, str]) -> str | None:
            if key not in q.miou:
                return None
            sd = f" ± {q.spread[key]:.1f}" if key in q.spread else ""
            return f"{q.miou[key]:.1f}{sd}"

        def cell(key: str, method: str) -> tuple[str, str]:
            hung, crf = value((key, method, "hungarian")), value((key, method, "hungarian+crf"))
            major = value((key, method, "majority"))
            first = f"Hungarian S={s.classes}: {hung} (CRF {crf})" if hung else "–"
            return first, f"majority S={s.k}: {major}" if major else "–"

        for head in HEADS:
            if head not in q.train_seconds:
                continue
            nmi, ari = q.agreement[head]
            first, second = cell(head, "eigen")
            self.add(section, f"eigen · {head}", first, second,
                     f"argmax of K={s.k}; vs exact spectral (same kernel, val patches): "
                     f"NMI {nmi:.2f}, ARI {ari:.2f}")
            self.add(section, f"eigen+kmeans · {head}", *cell(head, "eigen+kmeans"),
                     f"trained {training_text(s)} in {q.train_seconds[head]:.0f} s")
        if not any(k[0] == "-" for k in q.miou):
            return
        for method, note in (("kmeans", "k-means of raw backbone features"),
                             ("spectral", "exact per-image segments + centroids"),
                             ("spectral-dataset", "exact, one graph over all val patches "
                                                  f"(k_feat {kernel_neighbours(s)}); "
                                                  "transductive")):
            self.add(section, method, *cell("-", method), note)

    def crf(self, c: CRFBench, s: CRFSettings) -> None:
        """Dense CRF rows: time per backend and size, predict ratio, iterations, agreement."""
        default = f"at ≤ {CRF_SIDE} px short side, {CRFParams().iterations} iterations"
        for side in s.sides:
            section = f"dense CRF per image, photos {side} px short side, M={c.labels}"
            base = c.times.get((side, "densecrf, cpu"))
            for (size, name), seconds in c.times.items():
                if size != side:
                    continue
                rel = f"{seconds / base:.2f}× densecrf" if base else "–"
                note = ("as before this change" if "before" in name else
                        f"{default}; inputs, mean field, labels at full size")
                self.add(section, name, ms(seconds), rel, note)
        if c.predict:
            section = (f"predict() per image, photos {c.predict_side} px, backbone + mlp head "
                       f"K={s.head_k}")
            base = c.predict["no CRF"]
            for name, seconds in c.predict.items():
                note = "forward, scores, argmax" if name == "no CRF" else f"CRF {default}"
                self.add(section, name, ms(seconds), f"{seconds / base:.2f}×", note)
        section = f"CRF iterations, photos {c.predict_side} px (torch)"
        for steps, (agree, seconds) in c.sweep.items():
            self.add(section, f"{steps} iterations", ms(seconds), f"{100 * agree:.2f} %",
                     "pixel agreement with 10 iterations")
        section = f"CRF agreement, bundled photos {c.predict_side} px"
        for name, values in c.agreement.items():
            self.add(section, name, f"{100 * np.mean(values):.2f} %",
                     f"min {100 * min(values):.2f} %", f"pixel agreement, {len(values)} photos")
        section = "CRF mIoU, labelled set"
        for (method, name), miou in c.miou.items():
            note = ("pydensecrf at full size, 10 iterations (before)" if name == "before"
                    else c.miou_note)
            base = c.miou.get((method, "densecrf"))
            rel = f"{miou - base:+.2f} vs densecrf" if base is not None else "–"
            self.add(section, f"{name} · {method}", f"{miou:.2f}", rel, note)

    def memory(self, probes: dict[str, list[dict]], k_feat: int, steps: dict[str, dict],
               tokens_per_step: int) -> None:
        section = f"graph kernel per batch (k_feat {k_feat})"
        for p in probes["kernel"]:
            per_edge = p["cpu_bytes"] / max(1, p["tokens"] * min(k_feat, p["tokens"] - 1))
            gpu = f", GPU +{size_text(p['gpu_bytes'])}" if p.get("gpu_bytes") else ""
            self.add(section, f"{p['tokens']} tokens ({p['batch']} × {p['grid']}²)",
                     ms(p["seconds"]), f"peak +{size_text(p['cpu_bytes'])}{gpu}",
                     f"{per_edge:.0f} B per token·neighbour")
        section = "exact spectral clustering, one graph"
        for p in probes["exact"]:
            n = p["tokens"]
            gpu = f", GPU +{size_text(p['gpu_bytes'])}" if p.get("gpu_bytes") else ""
            self.add(section, f"{n} tokens", ms(p["seconds"]),
                     f"peak +{size_text(p['cpu_bytes'])}{gpu}",
                     f"dense eigh: {size_text(8 * n * n)} for the matrix alone")
        for head, phases in steps.items():
            self.add(section, f"vs one training step of the {head} head",
                     ms(sum(phases.values())), f"{tokens_per_step} tokens per step",
                     "constant in the dataset size; memory: one batch's kernel")
        if not probes["exact"]:
            return
        largest = max(probes["exact"], key=lambda p: p["tokens"])
        section = "EXTRAPOLATED, not measured"
        for name, images, per_image in DATASETS:
            n = images * per_image
            seconds = largest["seconds"] * (n / largest["tokens"]) ** 2
            self.add(section, f"exact spectral over {name} ({n / 1e6:.1f} M tokens)",
                     f"~{duration_text(seconds)}",
                     f"~{size_text(exact_spectral_bytes(n, k_feat))} sparse",
                     f"dense eigh: {size_text(8 * n * n)}; time scaled as N² from "
                     f"{largest['tokens']} tokens on this machine, memory from the "
                     "calibrated estimate (segeig.spectral.exact_spectral_bytes)")

    def training(self, steps: dict[str, dict], batch: int, crop: int, k: int) -> None:
        section = f"training step, {batch} crops of {crop} px, K={k}"
        for head, phases in steps.items():
            total = sum(phases.values())
            split = " · ".join(f"{name} {100 * v / total:.0f} %" for name, v in phases.items())
            detail = ", ".join(f"{name} {ms(v)}" for name, v in phases.items())
            self.add(section, f"{head} head", ms(total), split, detail)


    def feature_cache(self, uncached: dict[str, dict], cached: dict, batch: int, crop: int,
                      k: int) -> None:
        views = cached["views"]
        section = f"feature cache, {batch} crops of {crop} px, K={k}, {views} views per image"
        for head, phases in cached["steps"].items():
            before, after = sum(uncached[head].values()), sum(phases.values())
            split = " · ".join(f"{name} {100 * v / after:.0f} %" for name, v in phases.items())
            self.add(section, f"{head} head · step without cache", ms(before),
                     f"{1 / before:.2f} steps/s", "backbone on every crop")
            self.add(section, f"{head} head · step from the cache", ms(after),
                     f"{1 / after:.2f} steps/s ({before / after:.1f}×)", split)
        self.add(section, "fill, per image", ms(cached["fill_s"]),
                 f"{cached['fill_s'] / sum(uncached[next(iter(uncached))].values()) * batch:.1f}"
                 " crops' steps", f"backbone over {views} views, written float16")
        self.add(section, "size on disk, per image", size_text(cached["bytes"]), "",
                 "3 token maps + grid colours per patch, float16")


def machine_line(device: torch.device, threads: int, backbone: BackboneConfig,
                 load_start: tuple, load_end: tuple, elapsed: float) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu} "
            f"({threads} torch threads{gpu}), device {device}, torch {torch.__version__}; "
            f"backbone {backbone.name} with random weights (same cost as DINO); load average "
            f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end; whole run {elapsed:.0f} s.")


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _labelled_ticks(ax, ticks: list[tuple[float, str]]) -> None:
    """Log-axis ticks at readable values only (``(value, label)`` pairs)."""
    low, high = ax.get_ylim()
    kept = [(v, t) for v, t in ticks if low <= v <= high]
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([v for v, _ in kept]))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([t for _, t in kept]))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


PERCENT_TICKS = [(v, f"{v:g} %") for v in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)]
TIME_TICKS = [(1e-3, "1 ms"), (1e-2, "10 ms"), (0.1, "100 ms"), (1, "1 s"), (60, "1 min"),
              (3600, "1 h"), (86400, "1 day"), (30 * 86400, "1 month"), (365 * 86400, "1 year"),
              (3650 * 86400, "10 years")]
BYTE_TICKS = [(10.0 ** e, f"1 {u}") for e, u in ((3, "kB"), (6, "MB"), (9, "GB"), (12, "TB"),
                                                  (15, "PB"), (18, "EB"))]


def plot_times(by_size: dict[int, dict[str, float]], names: list[str], path: Path) -> Path:
    """Left: ms per image of the backbone and of the work after it, per method.
    Right: that work as a percentage of the backbone's time."""
    sizes = sorted(by_size)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2)
    left.plot(sizes, [1000 * by_size[s]["backbone"] for s in sizes], "k-o", lw=2.5,
              label="backbone forward (reference)")
    series = [(f"head:{h}", f"{h} head forward alone", "--^") for h in HEADS]
    series += [(f"{n}/after", n, "-o") for n in names]
    for key, label, style in series:
        if not all(key in by_size[s] for s in sizes):
            continue
        colour = next(colours)
        left.plot(sizes, [1000 * by_size[s][key] for s in sizes], style, color=colour,
                  label=label)
        right.plot(sizes, [100 * by_size[s][key] / by_size[s]["backbone"] for s in sizes],
                   style, color=colour)
    right.axhline(MLP_TARGET, color="grey", ls=":", lw=1.5)
    right.text(sizes[0], MLP_TARGET * 1.08, f"mlp target {MLP_TARGET:g} %", color="grey",
               fontsize=8)
    left.set(xlabel="image side (px)", ylabel="ms per image", yscale="log",
             title="backbone vs. the work after it (no CRF)")
    right.set(xlabel="image side (px)", ylabel="share of the backbone's time", yscale="log",
              title="work after the backbone, relative")
    _labelled_ticks(right, PERCENT_TICKS)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.set_xticks(sizes)
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8,
               frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_memory(probes: dict[str, list[dict]], steps: dict[str, dict], tokens_per_step: int,
                k_feat: int, path: Path) -> Path:
    """Peak memory and time vs tokens in one graph: measured points, the dense
    reference, and extrapolations (dotted, labelled) out to full training sets."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    top = max(n * t for _, n, t in DATASETS) * 1.5
    every = [p["tokens"] for kind in probes for p in probes[kind]] or [tokens_per_step]
    grid = torch.logspace(torch.log10(torch.tensor(min(every) / 2.0)),
                          torch.log10(torch.tensor(top)), 60).tolist()
    for kind, colour, marker, label in (("kernel", "tab:blue", "o", "kernel build"),
                                        ("exact", "tab:red", "s", "exact spectral clustering")):
        points = sorted(probes[kind], key=lambda p: p["tokens"])
        if not points:
            continue
        x = [p["tokens"] for p in points]
        left.plot(x, [p["cpu_bytes"] for p in points], "-", marker=marker, color=colour,
                  label=f"{label} (measured)")
        right.plot(x, [p["seconds"] for p in points], "-", marker=marker, color=colour,
                   label=f"{label} (measured)")
        last = points[-1]
        tail = [n for n in grid if n >= last["tokens"]]
        right.plot(tail, [last["seconds"] * (n / last["tokens"]) ** 2 for n in tail], ":",
                   color=colour, label=f"{label}, ∝ N² (extrapolated)")
    left.plot(grid, [8 * n * n for n in grid], "k--", lw=1,
              label="dense eigh matrix, 8·N² bytes (computed)")
    left.plot(grid, [exact_spectral_bytes(int(n), k_feat) for n in grid], ":", color="tab:red",
              label="exact spectral, calibrated estimate (extrapolated)")
    ram = _ram_bytes()
    if ram:
        left.axhline(ram, color="grey", lw=1)
        left.text(grid[0], ram * 1.3, f"this machine's RAM ({size_text(ram)})", fontsize=8,
                  color="grey")
    for (head, phases), colour in zip(steps.items(), ("tab:green", "tab:purple"), strict=False):
        right.axhline(sum(phases.values()), ls="--", lw=1.2, color=colour,
                      label=f"one {head}-head training step ({tokens_per_step} tokens)")
    for ax in (left, right):
        for name, images, per_image in DATASETS:
            ax.axvline(images * per_image, color="grey", ls="-.", lw=0.8)
            ax.text(images * per_image, 0.02, " " + name.split(",")[0], rotation=90,
                    fontsize=7, color="grey", transform=ax.get_xaxis_transform())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    left.set(xlabel="tokens in the graph", ylabel="peak extra memory",
             title=f"memory (k_feat {k_feat})")
    right.set(xlabel="tokens in the graph", ylabel="time", title="time on this machine")
    _labelled_ticks(left, BYTE_TICKS)
    _labelled_ticks(right, TIME_TICKS)
    fig.tight_layout()
    return _save(fig, path)


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
