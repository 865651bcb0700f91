"""The results JSON -> a markdown table (against the issue's targets) and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {
    "atmx": "atmx (verify + PostgreSQL)",
    "atmx-baseline": "atmx, an earlier version (ATMX_BENCH_BASELINE_PYTHON)",
    "ceiling": "transport ceiling, atmx's reader (receive, discard)",
    "ceiling-websockets": "transport ceiling, websockets library (receive, discard)",
    "sdk": "atproto Python SDK (parse + CAR + models)",
    "atproto-sync": "@atproto/sync Firehose (verifies)",
}


def _f(value: Any, digits: int = 0) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    tp = results.get("throughput")
    if tp:
        med = tp["median"]
        atmx = med.get("atmx", {}).get("events_per_s")
        lines += [
            "| consumer | events/s (median) | vs atmx | CPU s / 10^6 events | cores used | peak RSS MiB "
            "| RSS early -> late MiB | runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, m in med.items():
            ratio = (m["events_per_s"] / atmx) if atmx else float("nan")
            lines.append(
                f"| {LABELS.get(kind, kind)} | {_f(m['events_per_s'])} | {_f(ratio, 2)}x | {_f(m['cpu_s_per_1e6'])} "
                f"| {_f(m['cpu_share'], 2)} | {_f(m['peak_rss_mib'])} | {_f(m['rss_early_mib'])} -> "
                f"{_f(m['rss_late_mib'])} | {m['runs']} |"
            )
        lines.append("")
        lines += _targets(med)
    if "matched" in results:
        lines.append(
            f"Matched commits verified and written: **{_f(results['matched']['median_matched_per_s'])}/s** (median)"
        )
    if "paced" in results:
        p = results["paced"]
        lines.append(
            f"Paced {_f(results['args']['rate'])} events/s over {_f(p['events'])} events: lag p50 {p['lag_p50_s']} s, "
            f"p99 {p['lag_p99_s']} s ({p['lag_samples']} writes); peak RSS {_f(p['peak_rss_mib'])} MiB"
        )
    if "api" in results:
        lines += [
            "",
            "| target | method | bindings | concurrency | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["api"]["rows"]:
            lines.append(
                f"| {row['target']} | {row['method']} | {_f(row['bindings'])} | {row['concurrency']} | "
                f"{_f(row['rps'])} | {_f(row['p50_ms'], 2)} | {_f(row['p99_ms'], 2)} | {row['errors']} |"
            )
    return "\n".join(lines)


def _targets(med: dict[str, Any]) -> list[str]:
    """The issue's throughput targets, judged on these medians."""

    def rate(kind: str) -> float | None:
        value = med.get(kind, {}).get("events_per_s")
        return float(value) if value else None

    atmx = rate("atmx")
    if atmx is None:
        return []
    out = [f"- atmx >= 50,000 events/s: {_f(atmx)} ({'met' if atmx >= 50_000 else 'not met'})"]
    for kind, factor in (("sdk", 3.0), ("atproto-sync", 2.0)):
        peer = rate(kind)
        if peer:
            ok = atmx >= factor * peer
            out.append(f"- atmx >= {factor:g}x {LABELS[kind]}: {atmx / peer:.2f}x ({'met' if ok else 'not met'})")
    for kind in ("ceiling-websockets", "ceiling"):
        ceiling = rate(kind)
        if ceiling:
            ok = ceiling <= 2 * atmx
            out.append(f"- within 2x of the {LABELS[kind]}: {ceiling / atmx:.2f}x below ({'met' if ok else 'not met'})")
    return [*out, ""]


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    tp = results.get("throughput", {}).get("runs", {})
    kinds = list(tp)
    meds = [sorted(r["events_per_s"] for r in tp[k])[len(tp[k]) // 2] for k in kinds]
    bars = ax1.barh(
        [LABELS.get(k, k) for k in kinds], meds, color=["#d62728" if k == "atmx" else "#7f7f7f" for k in kinds]
    )
    for k, runs in enumerate(tp.values()):
        ax1.scatter([r["events_per_s"] for r in runs], [k] * len(runs), color="black", s=10, zorder=3)
    ax1.bar_label(bars, labels=[f"{m:,.0f}" for m in meds], padding=14, fontsize=8)
    ax1.axvline(50_000, color="#1f77b4", linestyle="--", linewidth=1, label="target 50,000/s")
    ax1.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _pos: f"{x / 1000:,.0f}k"))
    ax1.set_xlabel("events/s, fast replay (bar: median, dots: runs)")
    ax1.set_title(f"Throughput, {results['throughput']['corpus']['events']:,} events" if tp else "Throughput")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.invert_yaxis()
    paced = results.get("paced")
    if paced and paced.get("lags_s"):
        lags = paced["lags_s"]
        ys = [(i + 1) / len(lags) * 100 for i in range(len(lags))]
        ax2.plot(lags, ys, color="#d62728", label="atmx: send -> visible in API")
        ax2.axvline(1.0, color="#1f77b4", linestyle="--", linewidth=1, label="target p99 < 1 s")
        ax2.axhline(99, color="gray", linestyle=":", linewidth=1)
        ax2.set_xscale("log")
        ax2.set_xlabel("lag, seconds (log scale)")
        ax2.set_ylabel("percentile of XMTP inbox writes")
        ax2.set_title(
            f"Lag paced at {results['args']['rate']:,.0f} events/s\n"
            f"p50 {paced['lag_p50_s']} s, p99 {paced['lag_p99_s']} s"
        )
        ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"atmx benchmarks on {results['machine']['nproc']} x {results['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
