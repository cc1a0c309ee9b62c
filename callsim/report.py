"""Show a LoadReport: the printed table, the JSON file, the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from callsim.load import LoadReport
from callsim.stats import PERCENTILES, TURN_OUTCOMES


def table(report: LoadReport) -> str:
    names = [*PERCENTILES, "max"]
    header = f"{'latency (ms)':<24}" + "".join(f"{n.replace('_', '.'):>10}" for n in names)
    rows = [header]
    for label, figures in (
        ("from scheduled send", report.latency_ms),
        ("CO-corrected", report.latency_corrected_ms),
    ):
        rows.append(f"{label:<24}" + "".join(f"{figures[n]:>10.1f}" for n in names))
    rows.append("")
    rows.append(
        f"{'turns':<24}{report.turns:>10}   {report.turns_per_s:.1f}/s over "
        f"{report.elapsed_s:.1f} s"
    )
    for name in TURN_OUTCOMES:
        rows.append(f"  {name:<22}{report.turn_outcomes.get(name, 0):>10}")
    rows.append(f"{'calls':<24}{report.calls_started:>10}")
    for name, count in sorted(report.call_outcomes.items()):
        rows.append(f"  {name:<22}{count:>10}")
    if report.status_callbacks["ok"] or report.status_callbacks["failed"]:
        rows.append(
            f"{'status callbacks':<24}{report.status_callbacks['ok']:>10} ok, "
            f"{report.status_callbacks['failed']} failed"
        )
    for message, count in report.errors.items():
        rows.append(f"  error x{count}: {message}")
    return "\n".join(rows)


def write_json(report: LoadReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def plot(report: LoadReport, path: str | Path) -> None:
    """Latency over the run (is it steady, or does it drift?) and its percentile spectrum."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, (over_time, spectrum) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {
        "answered": "tab:blue",
        "reprompt_late": "tab:orange",
        "reprompt_silent": "tab:green",
        "hangup": "tab:gray",
        "error": "tab:red",
    }
    for outcome, color in colors.items():
        points = [(t, ms) for t, ms, o in report.samples if o == outcome]
        if points:
            over_time.scatter(
                [p[0] for p in points],
                [p[1] for p in points],
                s=6,
                color=color,
                label=outcome,
                alpha=0.6,
            )
    over_time.set(xlabel="scheduled send time (s)", ylabel="latency (ms)", title="latency per turn")
    over_time.set_yscale("log")
    if report.samples:
        over_time.legend(loc="upper left", fontsize="small")

    # The classic HDR view: x = 1/(1-q) on a log axis spreads out the tail.
    quantiles = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999)
    for label, hist in (
        ("from scheduled send", report.histogram),
        ("CO-corrected", report.corrected_histogram),
    ):
        if hist.get_total_count():
            spectrum.plot(
                [1 / (1 - q) for q in quantiles],
                [hist.get_value_at_percentile(q * 100) / 1000.0 for q in quantiles],
                marker=".",
                label=label,
            )
    spectrum.set_xscale("log")
    spectrum.set_xticks(
        [1, 2, 10, 100, 1000, 10000], ["0%", "50%", "90%", "99%", "99.9%", "99.99%"]
    )
    spectrum.set(xlabel="percentile", ylabel="latency (ms)", title="latency distribution")
    spectrum.legend(loc="upper left", fontsize="small")
    fig.suptitle(
        f"{report.calls_started} calls, {report.turns} turns, {report.turns_per_s:.1f} turns/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
