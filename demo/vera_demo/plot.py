"""results.png: test accuracy against adapter bytes, validation accuracy over steps, training losses."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vera_ref.atomic import atomic_write_bytes


def plot(rows: list[dict], curves: dict[str, dict], path: Path, curve_label: str) -> None:
    """Three panels: test accuracy against adapter bytes for every method, validation accuracy over
    training steps for the chosen VeRA and LoRA runs, and the training losses."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4.2))
    # one colour per method in every panel (rows and curves name a method by its first words)
    palette = {"majority": "tab:gray", "linear": "tab:orange", "head": "tab:green", "VeRA": "tab:red",
               "LoRA": "tab:purple"}

    def colour(name: str) -> str:
        return next((c for k, c in palette.items() if name.startswith(k)), "tab:blue")

    by_acc = sorted(rows, key=lambda r: r["test_accuracy"])
    widest = max(max(r["adapter_bytes"], 1) for r in rows)
    for i, r in enumerate(by_acc):
        x = max(r["adapter_bytes"], 1)
        ax0.scatter([x], [r["test_accuracy"]], s=60, color=colour(r["method"]))
        # close accuracies: the upper label goes above its point, the lower one below; points in the
        # right part of the (log) axis get their label on the left, so it stays inside the axes
        above = i > 0 and r["test_accuracy"] - by_acc[i - 1]["test_accuracy"] < 0.02
        below = i + 1 < len(by_acc) and by_acc[i + 1]["test_accuracy"] - r["test_accuracy"] < 0.02
        dy = 6 if above else -12 if below else -4
        left = x > 1 and np.log(x) > 0.75 * np.log(widest)
        ax0.annotate(r["method"].replace(" (logistic regression)", ""), (x, r["test_accuracy"]),
                     textcoords="offset points", xytext=(-6 if left else 6, dy), fontsize=8,
                     ha="right" if left else "left", color=colour(r["method"]))
    ax0.set_xscale("log")
    ax0.margins(x=0.08, y=0.12)
    ax0.set_xlabel("adapter file bytes (log; 1 = nothing stored)")
    ax0.set_ylabel("test accuracy")
    ax0.set_title("accuracy against what you ship")
    for name, c in curves.items():
        if c.get("validation"):
            steps, acc = zip(*c["validation"])
            ax1.plot(steps, acc, marker="o", label=name, color=colour(name))
        losses = c["loss"]
        k = max(1, len(losses) // 15)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax2.plot(np.arange(len(smooth)) + k, smooth, label=name, color=colour(name))
    ax1.set_xlabel("step")
    ax1.set_ylabel(curve_label)
    ax1.set_title("accuracy over training (chosen learning rates)")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss (moving average)")
    ax2.set_title("training loss")
    ax2.legend()
    fig.suptitle("Rotten Tomatoes fresh vs rotten, all-MiniLM-L6-v2")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())  # the mode of a normal open(), like every file the demo writes
