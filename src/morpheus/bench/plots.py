"""PNG plots of benchmark reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_bench(report: dict[str, Any], series: dict[str, dict[str, list[float]]],
               directory: Path) -> list[str]:
    """ns/packet per round, Mpps per round and the latency CDF; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    labels = {k: Path(report[k]["object"]).name for k in series if k in report}

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, data in series.items():
        ax.plot(range(1, len(data["net_ns"]) + 1), data["net_ns"], marker="o",
                label=f"{key}: {labels[key]}")
    ax.set_xlabel("round")
    ax.set_ylabel("ns per packet (harness subtracted)")
    ax.set_title(f"{report['nf'] or ''} {report['trace'].get('profile') or ''}".strip())
    ax.legend()
    ax.grid(alpha=0.3)
    path = directory / "ns_per_packet.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))

    if any(d["mpps"] for d in series.values()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, data in series.items():
            ax.plot(range(1, len(data["mpps"]) + 1), data["mpps"], marker="o",
                    label=f"{key}: {labels[key]}")
        ax.set_xlabel("round")
        ax.set_ylabel("Mpps (one core, veth)")
        ax.legend()
        ax.grid(alpha=0.3)
        path = directory / "mpps.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))

    if any(d["latencies"] for d in series.values()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
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
        path = directory / "latency_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written
