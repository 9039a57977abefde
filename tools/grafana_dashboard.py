"""Write deploy/grafana/sftp-ipi-dashboard.json, the dashboard an operator opens first.

    python tools/grafana_dashboard.py          # rewrite the JSON
    python tools/grafana_dashboard.py --check  # exit 1 if the committed JSON differs (make lint)

The panels are described here once and laid out on Grafana's 24-column grid, so a
panel added or moved never leaves overlapping or hand-numbered positions behind.
The output is Grafana's dashboard JSON model (schemaVersion 39, Grafana 10/11), the
same shape as an export: import it, pick the Prometheus data source, done.
Most panels read the recording rules of deploy/prometheus/sftp-ipi-rules.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "sftp-ipi-dashboard.json"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every query filters on the feed variable; the variable's "All" is the regex .*
FEED = 'instance=~"$instance"'

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
        "targets": _targets([(expr, "{{instance}}")]),
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
        "description": "One row per feed (Pushgateway instance): when it last succeeded, how its last run ended, "
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
                        "Time since each feed's last successful run; red past SftpIpiNoRecentSuccess's default (3 h).",
                        f"sftp_ipi:seconds_since_last_success{{{FEED}}}",
                        "s",
                        _thresholds((None, "green"), (7200, "orange"), (10800, "red")),
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
                        'count(ALERTS{alertstate="firing", alertname=~"SftpIpi.*", instance=~"$instance"})'
                        " or vector(0)",
                        "none",
                        _thresholds((None, "green"), (1, "red")),
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
                        "Bytes per run",
                        "Bytes received from the server by each run.",
                        [(f"sftp_ipi_last_run_fetched_bytes{{{FEED}}}", "{{instance}}")],
                        "bytes",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Files per run",
                        "Files fetched, and files that failed, by each run.",
                        [
                            (f"sftp_ipi_last_run_files_fetched{{{FEED}}}", "{{instance}} fetched"),
                            (f"sftp_ipi_last_run_failed_files{{{FEED}}}", "{{instance}} failed"),
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
                        [(f"sftp_ipi_last_run_duration_seconds{{{FEED}}}", "{{instance}}")],
                        "s",
                    ),
                    8,
                ),
                (
                    timeseries(
                        "Retries per run",
                        "Connection attempts that failed and were retried, per run.",
                        [(f"sftp_ipi_last_run_retries{{{FEED}}}", "{{instance}}")],
                        "none",
                    ),
                    8,
                ),
                (
                    timeseries(
                        "Throughput",
                        "Bytes received per second of run time, by run.",
                        [(f"sftp_ipi:last_run_throughput_bytes_per_second{{{FEED}}}", "{{instance}}")],
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
                            (f"sftp_ipi:newest_file_age_seconds{{{FEED}}}", "{{instance}}"),
                            ("sftp_ipi:threshold_newest_file_age_seconds", "threshold"),
                        ],
                        "s",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Time since last success",
                        "SftpIpiNoRecentSuccess fires above the threshold.",
                        [
                            (f"sftp_ipi:seconds_since_last_success{{{FEED}}}", "{{instance}}"),
                            ("sftp_ipi:threshold_no_success_seconds", "threshold"),
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
                            (f"sftp_ipi_held_back_files{{{FEED}}}", "{{instance}} held back"),
                            (f"sftp_ipi_late_files{{{FEED}}}", "{{instance}} late"),
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
                            (f"sftp_ipi_oldest_held_back_seconds{{{FEED}}}", "{{instance}}"),
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
                        [(f"sum by (instance, method) (sftp_ipi_files_verified{{{FEED}}})", "{{instance}} {{method}}")],
                        "none",
                    ),
                    12,
                ),
                (
                    timeseries(
                        "Integrity failures, last day",
                        "Verification mismatches, decryption failures and failed REMOTE_AFTER actions in the last day.",
                        [
                            (f"sftp_ipi:verification_mismatches:increase1d{{{FEED}}}", "{{instance}} mismatches"),
                            (f"sftp_ipi:decrypt_failures:increase1d{{{FEED}}}", "{{instance}} decryption"),
                            (f"sftp_ipi:remote_after_failures:increase1d{{{FEED}}}", "{{instance}} remote after"),
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
                    "name": "instance",
                    "label": "Feed",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": "label_values(sftp_ipi_last_run_timestamp_seconds, instance)",
                    "query": {
                        "query": "label_values(sftp_ipi_last_run_timestamp_seconds, instance)",
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
