"""Accuracy-vs-cost plots (the talk's error vs parameters and error vs MACs)."""

from __future__ import annotations


def plot_error_vs_cost(rows, path, cost="macs", title=None):
    """Scatter with error bars: test error (%) vs `cost` ("macs" or "params") per model.

    `rows`: dicts with name, macs, params, error_mean, error_std (percent).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    scale, unit = (1e6, "M") if cost == "macs" else (1e3, "k")
    for r in rows:
        x = r[cost] / scale
        ax.errorbar(x, r["error_mean"], yerr=r["error_std"], fmt="o", capsize=3)
        ax.annotate(r["name"], (x, r["error_mean"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{'MACs' if cost == 'macs' else 'parameters'} ({unit})")
    ax.set_ylabel("test error (%)")
    ax.set_title(title or f"error vs {cost}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
