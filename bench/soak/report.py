"""The run's verdict as a table, then the details, then the throughput ratio (printed last)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GOAL = 0.8


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return [f"  {a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]


def _cpu(report: Mapping[str, Any]) -> str:
    """CPU seconds by component, and per paid run against the emulator alone's per image."""
    cpu = report.get("cpu") or {}
    runs = report.get("runs") or 0
    if not cpu or not runs:
        return "-"
    total = sum(cpu.values())
    parts = ", ".join(f"{k} {v:g} ({v / runs * 1000:.0f} ms/run)" for k, v in cpu.items())
    cap = report.get("capacity") or {}
    alone = (
        f"; the emulator alone: {cap['emulator_cpu_s'] / cap['completed'] * 1000:.0f} ms/image"
        if cap.get("emulator_cpu_s") and cap.get("completed")
        else ""
    )
    return f"{total:.0f} in all ({total / runs * 1000:.0f} ms/run): {parts}{alone}"


def format_report(report: Mapping[str, Any]) -> str:
    if "checks" not in report:
        return "soak: no report (the run did not get that far)"
    lines = [
        f"soak: {report['images']} images on {report['engine_label']}, {report['workers']} "
        f"workers, {report['server']}, media "
        f"{'on S3 (moto), no shared disk' if report.get('media') == 's3' else 'in MEDIA_ROOT'}, "
        f"seed {report['seed']}",
        "",
    ]
    rows = [("check", "result", "account")]
    for check in report["checks"]:
        result = "FAILED" if not check["ok"] else ("known" if check.get("known") else "ok")
        rows.append((check["check"], result, check["detail"]))
        for known in check.get("known", [])[:3]:
            rows.append(("", "", f"known: {known[:160]}"))
        if len(check.get("known", [])) > 3:
            rows.append(("", "", f"known: ... {len(check['known']) - 3} more"))
    ratio = report.get("capacity_ratio")
    cap = report.get("capacity") or {}
    rows.append(
        (
            "images/s vs the emulator's capacity",
            "-" if ratio is None else ("ok" if ratio >= GOAL else "BELOW"),
            f"{report.get('images_per_s')} vs {cap.get('images_per_s')} images/s"
            + (f" = {ratio:.2f}x (goal >= {GOAL}x)" if ratio is not None else ""),
        )
    )
    lines += _table(rows)
    summary = report.get("summary", {})
    chaos = report.get("chaos", {})
    details = [
        ("products", f"{summary.get('products')} ({summary.get('deleted')} deleted mid-flight)"),
        ("images saved", summary.get("images_saved")),
        ("actions", summary.get("actions")),
        ("races (twin waiting on an original)", summary.get("races")),
        ("jobs by trigger", summary.get("triggers")),
        ("forced / shared", f"{summary.get('forced')} / {summary.get('shared')}"),
        ("failure reasons", summary.get("failure_reasons") or "-"),
        ("cancel reasons", summary.get("cancel_reasons") or "-"),
        ("emulator remove-bg jobs", summary.get("emulator_jobs")),
        (
            "results as a new file / synchronous",
            f"{summary.get('results_as_new_file')} / {summary.get('synchronous')}",
        ),
        ("callbacks", summary.get("callbacks")),
        ("API faults fired", report.get("faults_fired")),
        ("HTTP clients (admin, API)", summary.get("http_clients")),
        ("kills", f"{chaos.get('kills')}, down {chaos.get('downtime')}"),
        ("reconcile", report.get("reconcile")),
        ("tasks", report.get("tasks")),
        ("submit outcomes", report.get("submit_outcomes")),
        ("capacity probe", cap or "not measured"),
        ("CPU seconds (2 cores)", _cpu(report)),
        (
            "elapsed",
            f"{report['elapsed']:.1f} s of work ({report['total_elapsed']:.1f} s in all); every "
            f"job settled after {report.get('settled_after')} s but "
            f"{report.get('deadline_bound_jobs')} that end at PENDING_DEADLINE_SECONDS",
        ),
        (
            "throughput",
            f"{report.get('runs')} paid runs: {report.get('images_per_s')} images/s "
            f"({report.get('images_saved_per_s')} images saved/s; whole run "
            f"{report.get('whole_run_images_per_s')} images/s)",
        ),
    ]
    lines += ["", "details:"]
    width = max(len(label) for label, _ in details)
    lines += [f"  {label:<{width}}  {value}" for label, value in details]
    if chaos.get("log"):
        lines += ["", "chaos (web server and emulator):"]
        lines += [f"  {e}" for e in chaos["log"] if "worker" not in e.split("SIGKILL", 1)[-1]]
    lines.append("")
    if ratio is not None:
        lines.append(
            f"RATIO soak/capacity: {ratio:.2f} ({report.get('images_per_s')} vs "
            f"{cap.get('images_per_s')} images/s; goal >= {GOAL})"
        )
    return "\n".join(lines)
