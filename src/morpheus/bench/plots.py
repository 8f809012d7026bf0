"""PNG plots of benchmark reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(width: float, height: float) -> tuple[Any, Any]:
    """A new figure and its axes, drawn with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))  # type: ignore[no-any-return]


def save(fig: Any, path: Path) -> str:
    """Write `fig` to `path` as a PNG (tight layout, 120 dpi) and free it; the path."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_bench(report: dict[str, Any], series: dict[str, dict[str, list[float]]],
               directory: Path) -> list[str]:
    """ns/packet per round, Mpps per round and the latency CDF; returns the files written."""
    written = []
    labels = {k: Path(report[k]["object"]).name for k in series if k in report}

    fig, ax = figure(6, 3.5)
    for key, data in series.items():
        ax.plot(range(1, len(data["net_ns"]) + 1), data["net_ns"], marker="o",
                label=f"{key}: {labels[key]}")
    ax.set_xlabel("round")
    ax.set_ylabel("ns per packet (harness subtracted)")
    ax.set_title(f"{report['nf'] or ''} {report['trace'].get('profile') or ''}".strip())
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(save(fig, directory / "ns_per_packet.png"))

    if any(d["mpps"] for d in series.values()):
        fig, ax = figure(6, 3.5)
        for key, data in series.items():
            ax.plot(range(1, len(data["mpps"]) + 1), data["mpps"], marker="o",
                    label=f"{key}: {labels[key]}")
        ax.set_xlabel("round")
        ax.set_ylabel("Mpps (one core, veth)")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(save(fig, directory / "mpps.png"))

    if any(d["latencies"] for d in series.values()):
        fig, ax = figure(6, 3.5)
        for key, data in series.items():
            values = sorted(data["latencies"])
            if not values:
                continue
            n = len(values)
            ax.plot(values, [(i + 1) / n for i in range(n)], label=f"{key}: {labels[key]}")
        ax.set_xscale("log")
        ax.set_xlabel("ns per packet (timed in the harness)")
        ax.set_ylabel("CDF")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(save(fig, directory / "latency_cdf.png"))
    return written
