"""Show a LoadReport: the printed table, the JSON file, the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    if report.relay is not None:
        rows.extend(["", *_relay_rows(report.relay, names)])
    return "\n".join(rows)


def _relay_rows(relay: dict[str, Any], names: list[str]) -> list[str]:
    header = f"{'relay (ms)':<24}" + "".join(f"{n.replace('_', '.'):>10}" for n in names)
    rows = [header]
    for label, key in (
        ("first token", "first_token_ms"),
        ("  CO-corrected", "first_token_corrected_ms"),
        ("end of talk cycle", "cycle_end_ms"),
        ("  CO-corrected", "cycle_end_corrected_ms"),
    ):
        rows.append(f"{label:<24}" + "".join(f"{relay[key][n]:>10.1f}" for n in names))
    rows.append("")
    rows.append(f"{'talk cycles':<24}{relay['cycles']:>10}")
    for trigger, count in sorted(relay["triggers"].items()):
        rows.append(f"  after {trigger:<16}{count:>10}")
    rows.append(f"  {'interrupted':<22}{relay['interrupted']:>10}")
    sessions = ", ".join(f"{n} {c}" for n, c in sorted(relay["sessions"].items()))
    rows.append(f"{'sessions':<24}{sum(relay['sessions'].values()):>10}   {sessions}")
    rows.append(f"{'protocol errors':<24}{relay['protocol_errors']:>10}")
    for reason, count in relay["protocol_error_reasons"].items():
        rows.append(f"  x{count}: {reason}")
    rows.append(
        f"{'tokens after interrupt':<24}{relay['tokens_after_interrupt']:>10}   "
        f"({relay['interrupts']} interrupts, {relay['tokens_in_flight_at_interrupt']} tokens "
        f"already in flight, {relay['barge_ins_missed']} barge-ins too late)"
    )
    for message, count in relay["errors"].items():
        rows.append(f"  error x{count}: {message}")
    return rows


def write_json(report: LoadReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def plot(report: LoadReport, path: str | Path) -> None:
    """Latency over the run (is it steady, or does it drift?) and its percentile spectrum."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    relay = report.relay_stats if report.relay is not None else None
    panels = 3 if relay is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5))
    over_time, spectrum = axes[0], axes[1]
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
    spectra = [
        ("webhooks, from scheduled send", report.histogram),
        ("webhooks, CO-corrected", report.corrected_histogram),
    ]
    if relay is not None:
        spectra += [
            ("relay first token", relay.first_token),
            ("relay end of talk cycle", relay.cycle_end),
        ]
        cycles = axes[2]
        for index, (label, points) in enumerate(
            (
                ("first token", [(t, first) for t, first, _, _ in relay.samples]),
                ("end of talk cycle", [(t, e) for t, _, e, _ in relay.samples if e is not None]),
            )
        ):
            if points:
                cycles.scatter(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    s=6,
                    color=("tab:blue", "tab:orange")[index],
                    label=label,
                    alpha=0.6,
                )
        cycles.set(
            xlabel="scheduled trigger time (s)", ylabel="latency (ms)", title="relay talk cycles"
        )
        cycles.set_yscale("log")
        if relay.samples:
            cycles.legend(loc="upper left", fontsize="small")
    for label, hist in spectra:
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
