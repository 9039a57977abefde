"""Write deploy/grafana/sftp-ipi-dashboard.json, the dashboard an operator opens first.

    python tools/grafana_dashboard.py          # rewrite the JSON
    python tools/grafana_dashboard.py --check  # exit 1 if the committed JSON differs (make lint)

The panels are described here once and laid out on Grafana's 24-column grid, so a
panel added or moved never leaves overlapping or hand-numbered positions behind.
The output is Grafana's dashboard JSON model (schemaVersion 39, Grafana 10/11), the
same shape as an export: import it, pick the Prometheus data source, done.
Most panels read the recording rules of deploy/prometheus/sftp-ipi-rules.yaml, and
the stat panels' colours are that file's default thresholds, read from it here
(THRESHOLDS), so that a threshold tuned there reaches the dashboard at the next run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "sftp-ipi-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "sftp-ipi-rules.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every query filters on the feed variable (the feed label every series carries,
# textfile and Pushgateway alike); the variable's "All" is the regex .*
FEED = 'feed=~"$feed"'

# Exit codes as the job documents them (README "Exit codes"); a test keeps them in step with app/errors.py.
EXIT_TEXT = {
    0: ("ok", "green"),
    1: ("1 transfer failed", "orange"),
    2: ("2 configuration error", "red"),
    3: ("3 auth / host key", "red"),
    4: ("4 another run active (not a failure)", "blue"),
    5: ("5 local storage", "red"),
    130: ("130 SIGINT", "orange"),
    143: ("143 SIGTERM", "orange"),
}

Target = tuple[str, str]  # (PromQL, legend)


def rule_thresholds(text: str) -> dict[str, float]:
    """The rules file's thresholds (``sftp_ipi:threshold_<name>`` -> value): each is
    ``vector(N)`` or ``K * sftp_ipi:threshold_<other>``, the only two shapes a test allows."""
    import yaml  # only here: the dashboard itself needs nothing but the standard library

    values: dict[str, float] = {}
    for group in yaml.safe_load(text)["groups"]:
        for rule in group["rules"]:
            name = rule.get("record", "")
            if not name.startswith("sftp_ipi:threshold_"):
                continue
            expr = str(rule["expr"]).strip()
            if m := re.fullmatch(r"vector\((\d+)\)", expr):
                values[name.removeprefix("sftp_ipi:threshold_")] = float(m[1])
            elif m := re.fullmatch(r"(\d+) \* sftp_ipi:threshold_(\w+)", expr):
                values[name.removeprefix("sftp_ipi:threshold_")] = int(m[1]) * values[m[2]]
            else:
                raise ValueError(f"{name}: {expr!r} is not vector(N) or K * another threshold")
    return values


# The defaults of the alert rules, for the stat panels' colours: red where the alert fires.
THRESHOLDS = rule_thresholds(RULES.read_text(encoding="utf-8"))


def _targets(queries: list[Target], instant: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, (expr, legend) in enumerate(queries):
        target: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "refId": chr(ord("A") + i)}
        if instant:
            target.update(instant=True, range=False, format="table")
        else:
            target["legendFormat"] = legend
        out.append(target)
    return out


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def _exit_mappings() -> list[dict[str, Any]]:
    options = {
        str(code): {"text": text, "color": color, "index": i}
        for i, (code, (text, color)) in enumerate(EXIT_TEXT.items())
    }
    return [{"type": "value", "options": options}]


def timeseries(title: str, description: str, queries: list[Target], unit: str) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(queries),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                # The job pushes once per run: a gauge is a step that holds until the next run.
                "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter", "fillOpacity": 10, "spanNulls": True},
                "color": {"mode": "palette-classic"},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def stat(
    title: str, description: str, expr: str, unit: str, thresholds: dict[str, Any], mappings: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets([(expr, "{{feed}}")]),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": thresholds,
                "mappings": mappings or [],
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
            "orientation": "auto",
        },
    }


def feeds_table() -> dict[str, Any]:
    columns: list[tuple[str, str, str]] = [
        (f"sftp_ipi:seconds_since_last_success{{{FEED}}}", "since last success", "s"),
        (f"sftp_ipi_last_run_exit_code{{{FEED}}}", "last run", "none"),
        (f"sftp_ipi:seconds_since_last_run{{{FEED}}}", "since last run", "s"),
        (f"sftp_ipi_last_run_files_fetched{{{FEED}}}", "files", "none"),
        (f"sftp_ipi_last_run_fetched_bytes{{{FEED}}}", "bytes", "bytes"),
        (f"sftp_ipi:newest_file_age_seconds{{{FEED}}}", "newest file age", "s"),
    ]
    targets = _targets([(expr, "") for expr, _, _ in columns], instant=True)
    rename = {f"Value #{t['refId']}": name for t, (_, name, _) in zip(targets, columns, strict=True)}
    overrides: list[dict[str, Any]] = [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for _, name, unit in columns
    ]
    overrides.append(
        {
            "matcher": {"id": "byName", "options": "last run"},
            "properties": [
                {"id": "mappings", "value": _exit_mappings()},
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
            ],
        }
    )
    return {
        "type": "table",
        "title": "Feeds",
        "description": "One row per feed: when it last succeeded, how its last run ended, "
        "what it fetched and how old the newest delivered file is.",
        "datasource": DATASOURCE,
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "job": True, "__name__": True}, "renameByName": rename},
            },
        ],
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": "since last success", "desc": True}]},
    }


# Rows of (panel, width); each row is as tall as its height.
def layout() -> list[tuple[int, list[tuple[dict[str, Any], int]]]]:
    return [
        (7, [(feeds_table(), 24)]),
        (
            4,
            [
                (
                    stat(
                        "Since last success",
                        "Time since each feed's last successful run: orange past two schedule periods, red past "
                        "three (SftpIpiNoRecentSuccess), at the rules' default schedule; each feed's alert uses "
                        "its own.",
                        f"sftp_ipi:seconds_since_last_success{{{FEED}}}",
                        "s",
                        _thresholds(
                            (None, "green"),
                            (THRESHOLDS["stale_seconds"], "orange"),
                            (THRESHOLDS["no_success_seconds"], "red"),
                        ),
                    ),
                    8,
                ),
                (
                    stat(
                        "Last run",
                        "Exit code of each feed's last run (README: Exit codes).",
                        f"sftp_ipi_last_run_exit_code{{{FEED}}}",
                        "none",
                        _thresholds((None, "green"), (1, "red")),
                        _exit_mappings(),
                    ),
                    8,
                ),
                (
                    stat(
                        "Firing alerts",
                        "sftp-ipi alerts firing now for the selected feeds.",
                        'count(ALERTS{alertstate="firing", alertname=~"SftpIpi.*", feed=~"$feed"}) or vector(0)',
                        "none",
                        _thresholds((None, "green"), (1, "red")),
                    ),
                    8,
                ),
            ],
        ),
        (
            4,
            [
                (
                    stat(
                        "Newest delivered file age",
                        "Age of each feed's newest delivered file; red past SftpIpiNoNewFiles's threshold.",
                        f"sftp_ipi:newest_file_age_seconds{{{FEED}}}",
                        "s",
                        _thresholds((None, "green"), (THRESHOLDS["newest_file_age_seconds"], "red")),
                    ),
                    6,
                ),
                (
                    stat(
                        "Oldest held-back file",
                        "How long the oldest due file held back has waited; red past SftpIpiFilesHeldBack's threshold.",
                        f"sftp_ipi_oldest_held_back_seconds{{{FEED}}}",
                        "s",
                        _thresholds((None, "green"), (THRESHOLDS["held_back_seconds"], "red")),
                    ),
                    6,
                ),
                (
                    stat(
                        "Backlog not shrinking",
                        "Runs in a row that left as many files due as the run before, or more (SELECT_MODE=next); "
                        "red at SftpIpiBacklogNotShrinking's threshold.",
                        f"sftp_ipi_due_stalled_runs{{{FEED}}}",
                        "none",
                        _thresholds((None, "green"), (THRESHOLDS["due_stalled_runs"], "red")),
                    ),
                    6,
                ),
                (
                    stat(
                        "Stuck files",
                        "Files the job cannot get past (sftp_ipi_stuck_files); red at SftpIpiStuckFiles's "
                        "threshold, 1. `sftp-ipi status` names them with the skip command for each; the alert's "
                        "runbook in docs/operations.md says what to do.",
                        f"sftp_ipi_stuck_files{{{FEED}}}",
                        "none",
                        _thresholds((None, "green"), (1, "red")),
                    ),
                    6,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Files delivered per day",
                        "Files delivered (published and recorded) in the last 24 hours, from the counter kept across "
                        "runs (sftp_ipi_files_delivered_total).",
                        [(f"increase(sftp_ipi_files_delivered_total{{{FEED}}}[1d])", "{{feed}}")],
                        "none",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Bytes received per day",
                        "Bytes received from the server in the last 24 hours, every attempt included "
                        "(sftp_ipi_received_bytes_total).",
                        [(f"increase(sftp_ipi_received_bytes_total{{{FEED}}}[1d])", "{{feed}}")],
                        "bytes",
                    ),
                    12,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Backlog",
                        "Files due but left for a later run (SELECT_MODE=next), and the runs in a row it has not "
                        "shrunk; SftpIpiBacklogNotShrinking fires at the threshold.",
                        [
                            (f"sftp_ipi_due_files{{{FEED}}}", "{{feed}} due"),
                            (f"sftp_ipi_due_stalled_runs{{{FEED}}}", "{{feed}} runs not shrinking"),
                            ("sftp_ipi:threshold_due_stalled_runs", "threshold (runs)"),
                        ],
                        "none",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Stuck files",
                        "Files the job cannot get past, by run (sftp_ipi_stuck_files).",
                        [(f"sftp_ipi_stuck_files{{{FEED}}}", "{{feed}}")],
                        "none",
                    ),
                    12,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Bytes per run",
                        "Bytes received from the server by each run.",
                        [(f"sftp_ipi_last_run_fetched_bytes{{{FEED}}}", "{{feed}}")],
                        "bytes",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Files per run",
                        "Files fetched, and files that failed, by each run.",
                        [
                            (f"sftp_ipi_last_run_files_fetched{{{FEED}}}", "{{feed}} fetched"),
                            (f"sftp_ipi_last_run_failed_files{{{FEED}}}", "{{feed}} failed"),
                        ],
                        "none",
                    ),
                    12,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Run duration",
                        "How long each run took.",
                        [(f"sftp_ipi_last_run_duration_seconds{{{FEED}}}", "{{feed}}")],
                        "s",
                    ),
                    8,
                ),
                (
                    timeseries(
                        "Retries per run",
                        "Connection attempts that failed and were retried, per run.",
                        [(f"sftp_ipi_last_run_retries{{{FEED}}}", "{{feed}}")],
                        "none",
                    ),
                    8,
                ),
                (
                    timeseries(
                        "Throughput",
                        "Bytes received per second of run time, by run.",
                        [(f"sftp_ipi:last_run_throughput_bytes_per_second{{{FEED}}}", "{{feed}}")],
                        "Bps",
                    ),
                    8,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Newest delivered file age",
                        "Age (by the server's mtime) of the newest delivered file, growing between runs; "
                        "SftpIpiNoNewFiles fires above the threshold.",
                        [
                            (f"sftp_ipi:newest_file_age_seconds{{{FEED}}}", "{{feed}}"),
                            ("sftp_ipi:threshold_newest_file_age_seconds", "threshold"),
                        ],
                        "s",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Time since last success",
                        "SftpIpiNoRecentSuccess fires above each feed's threshold, three of its schedule periods.",
                        [
                            (f"sftp_ipi:seconds_since_last_success{{{FEED}}}", "{{feed}}"),
                            (f"3 * sftp_ipi:schedule_interval_seconds{{{FEED}}}", "{{feed}} threshold"),
                        ],
                        "s",
                    ),
                    12,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Held-back and late files",
                        "Files due but held back by the last run, and late arrivals it saw (README: Alerts and "
                        "dashboard).",
                        [
                            (f"sftp_ipi_held_back_files{{{FEED}}}", "{{feed}} held back"),
                            (f"sftp_ipi_late_files{{{FEED}}}", "{{feed}} late"),
                        ],
                        "none",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Oldest held-back file",
                        "How long the oldest held-back file had waited at each run; SftpIpiFilesHeldBack fires "
                        "above the threshold.",
                        [
                            (f"sftp_ipi_oldest_held_back_seconds{{{FEED}}}", "{{feed}}"),
                            ("sftp_ipi:threshold_held_back_seconds", "threshold"),
                        ],
                        "s",
                    ),
                    12,
                ),
            ],
        ),
        (
            8,
            [
                (
                    timeseries(
                        "Files by verification method",
                        "How delivered files were proven against the server (verified_by).",
                        [(f"sum by (feed, method) (sftp_ipi_files_verified{{{FEED}}})", "{{feed}} {{method}}")],
                        "none",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Integrity failures, last day",
                        "Verification mismatches, decryption failures and failed REMOTE_AFTER actions in the last day.",
                        [
                            (f"sftp_ipi:verification_mismatches:increase1d{{{FEED}}}", "{{feed}} mismatches"),
                            (f"sftp_ipi:decrypt_failures:increase1d{{{FEED}}}", "{{feed}} decryption"),
                            (f"sftp_ipi:remote_after_failures:increase1d{{{FEED}}}", "{{feed}} remote after"),
                        ],
                        "none",
                    ),
                    12,
                ),
            ],
        ),
    ]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for height, row in layout():
        x = 0
        for panel, width in row:
            panels.append({"id": len(panels) + 1, "gridPos": {"h": height, "w": width, "x": x, "y": y}, **panel})
            x += width
        y += height
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "annotations": {"list": []},
        "description": "sftp-ipi: last success and outcome per feed, what each run fetched, and the signals behind "
        "its alerts (deploy/prometheus/sftp-ipi-rules.yaml).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": 39,
        "tags": ["sftp-ipi"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                {
                    "name": "feed",
                    "label": "Feed",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": "label_values(sftp_ipi_feed_info, feed)",
                    "query": {
                        "query": "label_values(sftp_ipi_feed_info, feed)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "current": {},
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "regex": "",
                    "sort": 1,
                    "options": [],
                },
            ]
        },
        "time": {"from": "now-7d", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": "sftp-ipi",
        "uid": "sftp-ipi",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        if DASHBOARD.read_text(encoding="utf-8") != render():
            print(f"{DASHBOARD.relative_to(REPO)}: differs from tools/grafana_dashboard.py; run it", file=sys.stderr)
            return 1
        print(f"{DASHBOARD.relative_to(REPO)}: up to date")
        return 0
    if argv:
        print("usage: grafana_dashboard.py [--check]", file=sys.stderr)
        return 2
    DASHBOARD.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
