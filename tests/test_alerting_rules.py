"""deploy/prometheus, deploy/grafana and the PrometheusRule: checked by promtool, complete,
documented, generated from one source, and reading only metrics the job exports."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from observability import (
    ANNOUNCED,
    FOREIGN,
    RULE_TESTS,
    RULES,
    alerts,
    base_metrics,
    dashboard,
    dashboard_queries,
    exported_metrics,
    names_in,
    panels,
    recording_rules,
    rules,
)
from readme import anchors

from app.errors import EXIT_LOCKED, EXIT_MEANINGS

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import grafana_dashboard  # noqa: E402
import prometheus_rule  # noqa: E402

OPERATIONS = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package prometheus; make lint installs it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=REPO)


def test_promtool_accepts_the_rules_and_every_rule_unit_test_passes() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", *map(str, sorted(RULE_TESTS.glob("*.yaml"))))
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("moved", [21599, 21601])
def test_promtool_unit_tests_fail_when_a_threshold_moves_by_one_second(tmp_path: Path, moved: int) -> None:
    """The boundary tests pin the thresholds: a second either way and they fail."""
    text = RULES.read_text(encoding="utf-8")
    assert text.count("expr: vector(21600)") == 1
    (tmp_path / "tests").mkdir()
    (tmp_path / RULES.name).write_text(text.replace("expr: vector(21600)", f"expr: vector({moved})"))
    shutil.copy(RULE_TESTS / "freshness.yaml", tmp_path / "tests")
    result = promtool("test", "rules", str(tmp_path / "tests" / "freshness.yaml"))
    assert result.returncode != 0 and "SftpIpiFilesHeldBack" in result.stdout + result.stderr


def _unit_tests() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(RULE_TESTS.glob("*.yaml")):
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_has_unit_tests_that_fire_and_that_stay_silent(name: str) -> None:
    cases = [c for c in _unit_tests() if c["alertname"] == name]
    assert any(c["exp_alerts"] for c in cases), f"{name}: no unit test where it fires"
    assert any(not c["exp_alerts"] for c in cases), f"{name}: no unit test where it stays silent"


def runbook_base() -> str:
    """Where every runbook_url points: the repository's docs/operations.md, from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return f"{project['urls']['Repository']}/blob/main/docs/operations.md"


def runbook_section(name: str) -> str:
    """The alert's section of docs/operations.md, up to the next heading of its level or higher."""
    return OPERATIONS.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_has_a_summary_a_description_and_a_runbook_url_to_its_section(name: str) -> None:
    rule = alerts()[name]
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert re.search(r"\{\{ \$labels\.(instance|feed) \}\}", annotations["summary"])
    assert rule["labels"]["severity"] in {"critical", "warning"}
    url, _, anchor = annotations["runbook_url"].partition("#")
    assert url == runbook_base(), f"{name}: runbook_url is not a full link to docs/operations.md"
    assert anchor == name.lower() and anchor in anchors(OPERATIONS), f"{name}: no section #{anchor}"
    runbook = runbook_section(name)
    for part in ("**What it means.**", "**First checks.**", "**Commands.**"):
        assert part in runbook, f"{name}: the runbook has no {part}"
    assert re.search(r"sftp-ipi (status|audit|refetch|skip|config)", runbook), f"{name}: the runbook names no command"


def test_every_runbook_section_is_an_alert_and_the_runbook_check_catches_a_missing_one() -> None:
    sections = re.findall(r"^### (SftpIpi\w+)$", OPERATIONS, flags=re.M)
    assert sorted(sections) == sorted(alerts())
    assert "sftpipinosuchalert" not in anchors(OPERATIONS)
    with pytest.raises(IndexError):
        runbook_section("SftpIpiNoSuchAlert")


def test_the_alert_table_has_one_row_per_alert_with_its_severity() -> None:
    rows = dict(re.findall(r"^\| `(SftpIpi\w+)` \| (\w+) \|", OPERATIONS, flags=re.M))
    assert rows == {name: rule["labels"]["severity"] for name, rule in alerts().items()}


def test_alerts_that_one_scrape_must_not_page_wait_with_for() -> None:
    """Every alert holds for at least one more evaluation before it pages."""
    for name, rule in alerts().items():
        assert rule.get("for"), f"{name}: no for:"


def test_failure_alerts_state_what_each_exit_code_means() -> None:
    permanent = alerts()["SftpIpiRunFailedPermanent"]["annotations"]["description"]
    transient = alerts()["SftpIpiRunFailed"]["annotations"]["description"]
    for code, meaning in EXIT_MEANINGS.items():
        if code in (0, EXIT_LOCKED):
            # Exit 4 is not a failure: no failure alert names it.
            assert f"eq $value {code}.0" not in permanent + transient
            continue
        where = permanent if code in (2, 3) else transient
        assert meaning in where, f"exit {code} ({meaning})"
        assert f"eq $value {code}.0" in where or code == 3, f"exit {code} is not matched"
    assert set(grafana_dashboard.EXIT_TEXT) == set(EXIT_MEANINGS)


def test_thresholds_are_single_series_recording_rules_at_the_top() -> None:
    names = [r.get("record") or r.get("alert") for r in rules()]
    thresholds = [n for n in names if n and n.startswith("sftp_ipi:threshold_")]
    assert names[: len(thresholds)] == thresholds, "thresholds come first, in one place"
    for name in thresholds:
        expr = recording_rules()[name]
        assert re.fullmatch(r"vector\(\d+\)|\d+ \* sftp_ipi:threshold_\w+", expr), expr
    for name, rule in alerts().items():
        for used in names_in(rule["expr"]):
            if used.startswith("sftp_ipi:threshold_"):
                assert f"scalar({used})" in rule["expr"], f"{name}: read {used} with scalar()"


def unknown_metrics(exprs: list[str]) -> set[str]:
    """Names in ``exprs`` that are neither exported by the job, announced, foreign, nor recorded."""
    known = exported_metrics() | set(ANNOUNCED) | FOREIGN
    missing = set()
    for expr in exprs:
        missing |= {n for n in base_metrics(expr) if n not in known}
        missing |= {n for n in names_in(expr) if ":" in n and n not in recording_rules()}
    return missing


def test_rules_and_dashboard_read_only_metrics_the_job_exports() -> None:
    exprs = [r["expr"] for r in rules()] + [q for _, q in dashboard_queries()]
    assert unknown_metrics(exprs) == set()
    assert unknown_metrics(["sftp_ipi_last_run_bytes / 2"]) == {"sftp_ipi_last_run_bytes"}
    assert unknown_metrics(["sftp_ipi:no_such_rule"]) == {"sftp_ipi:no_such_rule"}


def test_dashboard_is_generated_and_shaped_as_grafana_exports_it() -> None:
    assert grafana_dashboard.main(["--check"]) == 0
    board = dashboard()
    assert board["schemaVersion"] == 39 and board["uid"] == "sftp-ipi" and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    selector = variables["feed"]
    assert selector["label"] == "Feed" and selector["type"] == "query"
    assert selector["query"]["query"] == "label_values(sftp_ipi_feed_info, feed)"
    assert selector["includeAll"] and selector["multi"] and selector["allValue"] == ".*"
    every = panels(board)
    assert {p["type"] for p in every} == {"timeseries", "stat", "table"}
    assert len({p["id"] for p in every}) == len(every)
    cells: set[tuple[int, int]] = set()
    for panel in every:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert "sftp_ipi:threshold_" in target["expr"] or 'feed=~"$feed"' in target["expr"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    titles = " ".join(p["title"].lower() for p in every)
    for topic in ("success", "bytes", "files", "duration", "retries", "throughput", "newest", "held-back", "verif"):
        assert topic in titles, topic
    for topic in ("per day", "backlog", "stuck"):
        assert topic in titles, topic
    per_day = [t["expr"] for p in every if "per day" in p["title"].lower() for t in p["targets"]]
    assert sorted(per_day) == [
        'increase(sftp_ipi_files_delivered_total{feed=~"$feed"}[1d])',
        'increase(sftp_ipi_received_bytes_total{feed=~"$feed"}[1d])',
    ]
    assert {"sftp_ipi_stuck_files"} <= {
        n for p in every if "stuck" in p["title"].lower() for n in names_in(" ".join(t["expr"] for t in p["targets"]))
    }


def _threshold_defaults() -> dict[str, float]:
    """The rules file's default thresholds, evaluated from its recording rules (vector(N), K * other)."""
    values: dict[str, float] = {}
    for name, expr in recording_rules().items():
        if not name.startswith("sftp_ipi:threshold_"):
            continue
        if m := re.fullmatch(r"vector\((\d+)\)", expr):
            values[name] = float(m[1])
        else:
            factor, other = re.fullmatch(r"(\d+) \* (sftp_ipi:threshold_\w+)", expr).groups()  # type: ignore[union-attr]
            values[name] = int(factor) * values[other]
    return values


# Each stat panel with colours, and the thresholds its colours are, in order after green.
STAT_COLOURS = {
    "Since last success": ["sftp_ipi:threshold_stale_seconds", "sftp_ipi:threshold_no_success_seconds"],
    "Newest delivered file age": ["sftp_ipi:threshold_newest_file_age_seconds"],
    "Oldest held-back file": ["sftp_ipi:threshold_held_back_seconds"],
    "Backlog not shrinking": ["sftp_ipi:threshold_due_stalled_runs"],
}


def test_the_dashboards_colours_are_the_rules_default_thresholds() -> None:
    defaults = _threshold_defaults()
    # The defaults agree with the shipped 15-minute schedules.
    assert defaults["sftp_ipi:threshold_schedule_interval_seconds"] == 900
    assert defaults["sftp_ipi:threshold_no_success_seconds"] == 2700
    stats = {p["title"]: p for p in panels() if p["type"] == "stat"}
    for title, names in STAT_COLOURS.items():
        steps = stats[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0] == {"color": "green", "value": None}, title
        assert [s["value"] for s in steps[1:]] == [defaults[n] for n in names], title
        assert steps[-1]["color"] == "red", title


def test_a_threshold_tuned_in_the_rules_reaches_the_dashboard() -> None:
    text = RULES.read_text(encoding="utf-8")
    assert text.count("expr: vector(900)") == 1
    tuned = grafana_dashboard.rule_thresholds(text.replace("expr: vector(900)", "expr: vector(3600)"))
    assert tuned["no_success_seconds"] == 3 * 3600 and tuned["stale_seconds"] == 2 * 3600
    with pytest.raises(ValueError, match="not vector"):
        grafana_dashboard.rule_thresholds(text.replace("expr: vector(900)", "expr: vector(900) + 1"))


def test_prometheus_rule_is_generated_from_the_rules_file_and_structurally_valid() -> None:
    assert prometheus_rule.main(["--check"]) == 0
    committed = yaml.safe_load(prometheus_rule.OUTPUT.read_text(encoding="utf-8"))
    assert committed["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert prometheus_rule.validate(committed) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "groups", 0, "rules", 0, "exprr"), "1"),  # misspelt field
        (("spec", "groups", 0, "rules", -1, "for"), "five minutes"),  # not a duration
        (("spec", "groups", 0, "rules", 0, "annotations"), {"summary": "a recording rule has none"}),
        (("spec", "groups", 0, "rules", -1, "labels"), {"severity": 1}),  # label values are strings
        (("spec", "group"), []),
    ],
)
def test_the_prometheus_rule_check_catches_mistakes(path: tuple[str | int, ...], value: object) -> None:
    doc = copy.deepcopy(yaml.safe_load(prometheus_rule.OUTPUT.read_text(encoding="utf-8")))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert prometheus_rule.validate(doc) != []


def test_the_monitoring_component_adds_the_prometheus_rule_to_the_kustomization(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    tree = tmp_path / "kubernetes"
    shutil.copytree(REPO / "deploy" / "kubernetes", tree)
    for name in ("sftp_credential", "known_hosts"):  # the git-ignored credentials the secretGenerator reads
        (tree / "secrets" / name).write_text("placeholder\n")
    with (tree / "kustomization.yaml").open("a") as f:
        f.write("\ncomponents:\n  - monitoring\n")

    built = subprocess.run([kubectl, "kustomize", str(tree)], capture_output=True, text=True)

    assert built.returncode == 0, built.stderr
    [rule] = [d for d in yaml.safe_load_all(built.stdout) if d and d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


@pytest.mark.parametrize("page", ["operations.md"])
def test_the_runbook_pages_links_lead_somewhere(page: str) -> None:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("https://"):
            continue
        path, _, anchor = target.partition("#")
        linked = (REPO / "docs" / path).resolve() if path else REPO / "docs" / page
        assert linked.exists(), f"{page}: {target} does not exist"
        if anchor:
            assert anchor in anchors(linked.read_text(encoding="utf-8")), f"{page}: no #{anchor} in {linked.name}"
