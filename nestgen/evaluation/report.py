"""Reading an evaluation: Pareto front, text table, quality-vs-GFLOPs plot with the
metric's bootstrap 95% interval as error bars."""
from __future__ import annotations

import io

import numpy as np

from nestgen.evaluation.real import RealDataResult
from nestgen.evaluation.variants import VariantResult
from nestgen.metrics.intervals import Interval, percentile_interval


def pareto_front(gflops: list[float], quality: list[float], lower_is_better: bool = True) -> list[bool]:
    """True where no other point has both fewer (or equal) GFLOPs and better (or equal)
    quality with one of the two strictly better."""
    q = np.asarray(quality, dtype=float) * (1 if lower_is_better else -1)
    g = np.asarray(gflops, dtype=float)
    front = []
    for i in range(len(g)):
        dominated = np.any((g <= g[i]) & (q <= q[i]) & ((g < g[i]) | (q < q[i])))
        front.append(not bool(dominated))
    return front


def format_value(x: float, signed: bool = False) -> str:
    """A metric value for a table: one decimal from 10 up (FD, FVD, PSNR), three below
    (accuracies, MSE), so a column reads evenly."""
    return f"{x:{'+' if signed else ''}.{1 if abs(x) >= 10 else 3}f}"


def results_table(results: list[VariantResult], quality_key: str, lower_is_better: bool = True,
                  savings: list[float] | None = None, changes: dict[str, Interval | None] | None = None,
                  excess: dict[str, Interval | None] | None = None, real: RealDataResult | None = None,
                  floor_text: str = "") -> str:
    """One row per variant; `savings`: each variant's GFLOPs saving against its baseline
    (default: against the first row); `changes`: variant name -> relative change of
    `quality_key` against its baseline with its interval, `excess`: the change of the excess
    over the real-data floor (two last columns); `real`: the real-data row, last, with each
    metric (at the row's own count) and the interval of `quality_key`, then `floor_text` (how
    the floor compares with the baseline when the row has fewer rows than the samples)."""
    savings = savings or [results[0].gflops_per_sample / r.gflops_per_sample for r in results]
    front = pareto_front([r.gflops_per_sample for r in results], [r.metrics[quality_key] for r in results],
                         lower_is_better)
    keys = sorted({k for r in results for k in r.metrics})
    width = max(34, *(len(r.variant.name) for r in results))
    head = f"{'variant':{width}s} {'GFLOPs':>8s} {'saving':>7s} {'ms/sample':>10s} " + " ".join(f"{k:>15s}" for k in keys)
    tail = (f"  {quality_key} change [95%]" if changes else "") + ("    excess over floor [95%]" if excess else "")
    rows = [head + "  pareto" + tail]

    def pct(c: Interval | None) -> str:
        return f"{f'{100 * c.value:+6.1f}% [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}]' if c else '':>27s}"
    for r, f, saving in zip(results, front, savings):
        c, x = (changes or {}).get(r.variant.name), (excess or {}).get(r.variant.name)
        rows.append(f"{r.variant.name:{width}s} {r.gflops_per_sample:8.3f} {saving:6.2f}x "
                    f"{r.seconds_per_sample * 1e3:10.2f} "
                    + " ".join(f"{r.metrics.get(k, float('nan')):15.4f}" for k in keys) + ("  *" if f else "   ")
                    + (pct(c) if changes else "") + (pct(x) if excess else ""))
    if real is not None:
        reps = real.replicates.get(quality_key)
        iv = percentile_interval(real.metrics[quality_key], reps) if reps is not None and quality_key in real.metrics \
            else None
        rows.append(f"{real.name + f' ({real.num_samples} held-out)':{width}s} {'-':>8s} {'-':>7s} {'-':>10s} "
                    + " ".join(f"{real.metrics.get(k, float('nan')):15.4f}" for k in keys) + "   "
                    + (f"  {quality_key} [{format_value(iv.lo)}, {format_value(iv.hi)}]: the floor" if iv else "")
                    + floor_text)
    return "\n".join(rows)


def quality_plot_png(results: list[VariantResult], metric: str, lower_is_better: bool,
                     candidates: list[VariantResult] | None = None, title: str = "") -> bytes:
    """PNG: every variant's quality against its GFLOPs per sample (log x) with its bootstrap
    95% interval as an error bar (when the results have replicates), the Pareto front
    joined and starred, and the search's scored candidates in grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [r.gflops_per_sample for r in results]
    q = [r.metrics[metric] for r in results]
    front = pareto_front(g, q, lower_is_better)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    if candidates:
        ax.scatter([r.gflops_per_sample for r in candidates], [r.metrics[metric] for r in candidates],
                   s=18, c="0.7", label="search candidates (held-out seeds)", zorder=1)
    for r, gi, qi, f in zip(results, g, q, front):
        color = variant_color(r.variant.searched, r.variant.cache)
        ax.scatter([gi], [qi], s=60 if f else 30, marker="*" if f else "o", c=color, zorder=3)
        if metric in r.replicates:
            iv = percentile_interval(qi, r.replicates[metric])
            ax.errorbar([gi], [qi], yerr=[[max(0.0, qi - iv.lo)], [max(0.0, iv.hi - qi)]], fmt="none", ecolor=color,
                        elinewidth=1, capsize=3, zorder=3)
        ax.annotate(r.variant.name, (gi, qi), fontsize=7, xytext=(4, 3), textcoords="offset points")
    pts = sorted((gi, qi) for gi, qi, f in zip(g, q, front) if f)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", c="0.3", lw=1, label="Pareto front", zorder=2)
    bars = any(metric in r.replicates for r in results)
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)"
                  + (", bootstrap 95% interval" if bars else ""))
    return finish_plot(fig, ax, title or f"{metric} against decode compute")


def variant_color(searched: bool, cache: str) -> str:
    """One colour per kind of variant, the same in every quality-vs-GFLOPs plot."""
    return "tab:red" if searched else ("tab:blue" if cache == "none" else "tab:green")


def finish_plot(fig, ax, title: str) -> bytes:
    """The shared frame of a quality-vs-GFLOPs plot (colour legend, log GFLOPs axis, title,
    grid), as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt
    for color, label in (("tab:blue", "no cache"), ("tab:green", "KV cache"), ("tab:red", "searched schedule")):
        ax.scatter([], [], c=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per sample (analytic)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
