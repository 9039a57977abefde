"""Pure selection logic: order keys, the watermark, the plan and how the watermark moves."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.selection import (
    Criteria,
    Observation,
    OrderKey,
    Plan,
    RemoteEntry,
    SkipReason,
    UnplaceableRecordError,
    advance_record,
    date_in_name,
    make_plan,
    observe,
    order,
    order_key,
    record_key,
)

NOW = 1_750_000_000.0
OLD = int(NOW) - 3600  # an hour old: past any MIN_FILE_AGE used here
SEED_NAMES = ("20250427.IPI", "20250428.IPI", "20250429.IPI", "20250430.IPI")


def entry(name: str, mtime: int | None = OLD, *, is_regular: bool | None = True, size: int | None = 10) -> RemoteEntry:
    return RemoteEntry(name=name, size=size, mtime=mtime, is_regular=is_regular)


def criteria(mode: str = "next", order_by: str = "name-date", pattern: str = "*IPI*", min_age: int = 60) -> Criteria:
    return Criteria(pattern=pattern, order_by=order_by, mode=mode, min_age=min_age)


def due_names(plan: Plan) -> list[str]:
    return [e.name for e in plan.due]


def skip_reasons(plan: Plan) -> dict[str, SkipReason]:
    return {s.name: s.reason for s in plan.skipped}


def seed_entries() -> list[RemoteEntry]:
    return [entry(n) for n in SEED_NAMES]


def plan_after(
    entries: list[RemoteEntry],
    crit: Criteria,
    record: str | None,
    completed: frozenset[str] = frozenset(),
    ledger_mtimes: dict[str, int] | None = None,
) -> Plan:
    listed = {e.name: e.mtime for e in entries}
    key = record_key(record, crit.order_by, listed, ledger_mtimes or {})
    return make_plan(entries, crit, key, completed, NOW)


def advance(
    entries: list[RemoteEntry], crit: Criteria, record: str | None, completed: frozenset[str] | set[str]
) -> str | None:
    listed = {e.name: e.mtime for e in entries}
    key = record_key(record, crit.order_by, listed, {})
    return advance_record(entries, crit, key, record, completed)


# -- date_in_name -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20250428.IPI", 20250428),
        ("IPI_20250428.dat", 20250428),
        ("report-20240229-final.IPI", 20240229),  # leap day
        ("20251399_20250428.IPI", 20250428),  # the only *valid* date counts
        ("IPI_12340115_20250102.dat", 20250102),  # the only *plausible* date counts
        ("20250428_x_20250428.IPI", 20250428),  # the same date twice is one date
    ],
)
def test_date_in_name_finds_the_one_plausible_yyyymmdd(name: str, expected: int) -> None:
    assert date_in_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "x120250428.IPI",  # inside a 9-digit run
        "202504281.IPI",  # inside a 9-digit run, at the start
        "120250428.IPI",
        "20251399.IPI",  # month 13
        "20250431.IPI",  # 31 April
        "20230229.IPI",  # not a leap year
        "00000000.IPI",
        "2025-04-28.IPI",
        "2025042.IPI",
        "IPI.dat",
        "",
    ],
)
def test_date_in_name_rejects_embedded_invalid_or_absent_dates(name: str) -> None:
    assert date_in_name(name) is None


# -- order_key ----------------------------------------------------------------


def test_order_key_name_date_is_date_then_name() -> None:
    assert order_key("a_20250428.IPI", 5, "name-date") == (20250428, "a_20250428.IPI")


def test_order_key_name_date_has_no_place_for_undated_name() -> None:
    assert order_key("nodate.IPI", 5, "name-date") is None


def test_order_key_mtime_is_mtime_then_name() -> None:
    assert order_key("20250428.IPI", 1234, "mtime") == (1234, "20250428.IPI")


def test_order_key_mtime_has_no_place_without_mtime() -> None:
    assert order_key("20250428.IPI", None, "mtime") is None


def test_order_key_name_ignores_date_and_mtime() -> None:
    assert order_key("b.IPI", None, "name") == (0, "b.IPI")
    assert order_key("a_20991231.IPI", 1, "name") < order_key("b_20000101.IPI", 999, "name")  # type: ignore[operator]


def test_order_key_rejects_unknown_ordering() -> None:
    with pytest.raises(ValueError, match="size"):
        order_key("20250428.IPI", 1, "size")


# -- record_key -----------------------------------------------------------------


def test_record_key_is_none_without_record() -> None:
    assert record_key(None, "name-date", {}, {}) is None
    assert record_key(None, "mtime", {}, {}) is None


def test_record_key_name_date_places_dated_record_even_if_gone_from_server() -> None:
    assert record_key("20250428.IPI", "name-date", {}, {}) == (20250428, "20250428.IPI")


def test_record_key_undated_record_under_name_date_is_unplaceable() -> None:
    with pytest.raises(UnplaceableRecordError, match=r"nodate\.IPI"):
        record_key("nodate.IPI", "name-date", {"nodate.IPI": 100}, {"nodate.IPI": 100})


def test_record_key_mtime_uses_listing_mtime() -> None:
    assert record_key("a.IPI", "mtime", {"a.IPI": 500}, {}) == (500, "a.IPI")


def test_record_key_mtime_prefers_the_ledger_mtime_over_a_touched_listing() -> None:
    """Touching the recorded file on the server must not move the watermark."""
    assert record_key("a.IPI", "mtime", {"a.IPI": 500}, {"a.IPI": 400}) == (400, "a.IPI")


def test_record_key_mtime_uses_the_listing_for_a_record_the_ledger_does_not_know() -> None:
    assert record_key("a.IPI", "mtime", {"a.IPI": 500}, {}) == (500, "a.IPI")


def test_record_key_mtime_uses_ledger_when_file_gone_from_listing() -> None:
    assert record_key("a.IPI", "mtime", {"other.IPI": 900}, {"a.IPI": 400}) == (400, "a.IPI")


def test_record_key_mtime_record_in_neither_listing_nor_ledger_is_unplaceable() -> None:
    with pytest.raises(UnplaceableRecordError, match=r"a\.IPI"):
        record_key("a.IPI", "mtime", {"b.IPI": 1}, {"c.IPI": 2})


def test_unplaceable_record_error_is_a_value_error() -> None:
    assert issubclass(UnplaceableRecordError, ValueError)


def test_record_key_name_ordering_places_any_record() -> None:
    assert record_key("nodate.IPI", "name", {}, {}) == (0, "nodate.IPI")


# -- make_plan: the seed case and the three modes -------------------------------


def test_seed_case_next_mode_picks_the_file_after_the_record() -> None:
    plan = plan_after(seed_entries(), criteria("next"), "20250428.IPI")
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan) == {
        "20250427.IPI": SkipReason.NOT_AFTER_RECORD,
        "20250428.IPI": SkipReason.NOT_AFTER_RECORD,
        "20250430.IPI": SkipReason.LATER_RUN,
    }
    assert plan.skipped_by_reason == {SkipReason.NOT_AFTER_RECORD: 2, SkipReason.LATER_RUN: 1}
    assert plan.unmatched == 0


def test_seed_case_latest_mode_picks_only_the_newest() -> None:
    plan = plan_after(seed_entries(), criteria("latest"), "20250428.IPI")
    assert due_names(plan) == ["20250430.IPI"]
    assert skip_reasons(plan)["20250429.IPI"] is SkipReason.NOT_NEWEST


def test_seed_case_all_mode_picks_every_later_file_oldest_first() -> None:
    plan = plan_after(list(reversed(seed_entries())), criteria("all"), "20250428.IPI")
    assert due_names(plan) == ["20250429.IPI", "20250430.IPI"]


def test_without_record_next_mode_starts_at_the_oldest() -> None:
    plan = plan_after(list(reversed(seed_entries())), criteria("next"), None)
    assert due_names(plan) == ["20250427.IPI"]


def test_record_newer_than_everything_leaves_nothing_due() -> None:
    plan = plan_after(seed_entries(), criteria("all"), "20250501.IPI")
    assert plan.due == ()
    assert set(skip_reasons(plan).values()) == {SkipReason.NOT_AFTER_RECORD}


def test_record_gone_from_server_still_bounds_the_plan() -> None:
    entries = [e for e in seed_entries() if e.name != "20250428.IPI"]
    plan = plan_after(entries, criteria("next"), "20250428.IPI")
    assert due_names(plan) == ["20250429.IPI"]


# -- make_plan: the three orderings ---------------------------------------------


def test_name_date_orders_by_date_before_name() -> None:
    entries = [entry("a_20250102.IPI"), entry("z_20250101.IPI")]
    assert due_names(plan_after(entries, criteria("all"), None)) == ["z_20250101.IPI", "a_20250102.IPI"]


def test_name_date_orders_same_date_by_name() -> None:
    entries = [entry("B_20250428.IPI"), entry("A_20250428.IPI"), entry("C_20250427.IPI")]
    plan = plan_after(entries, criteria("all"), None)
    assert due_names(plan) == ["C_20250427.IPI", "A_20250428.IPI", "B_20250428.IPI"]


def test_name_date_record_on_a_shared_date_only_passes_names_up_to_it() -> None:
    entries = [entry("A_20250428.IPI"), entry("B_20250428.IPI"), entry("C_20250428.IPI")]
    plan = plan_after(entries, criteria("all"), "B_20250428.IPI")
    assert due_names(plan) == ["C_20250428.IPI"]


def test_name_date_skips_undated_names_with_no_date() -> None:
    entries = [entry("nodate.IPI"), entry("x120250428.IPI"), entry("20251399.IPI"), entry("20250429.IPI")]
    plan = plan_after(entries, criteria("all"), None)
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan) == {
        "nodate.IPI": SkipReason.NO_DATE,
        "x120250428.IPI": SkipReason.NO_DATE,
        "20251399.IPI": SkipReason.NO_DATE,
    }
    assert plan.skipped_by_reason == {SkipReason.NO_DATE: 3}


def test_mtime_orders_by_modification_time_not_name() -> None:
    entries = [entry("a.IPI", OLD - 100), entry("b.IPI", OLD - 300), entry("c.IPI", OLD - 200)]
    plan = plan_after(entries, criteria("all", "mtime"), None)
    assert due_names(plan) == ["b.IPI", "c.IPI", "a.IPI"]


def test_mtime_does_not_need_a_date_in_the_name() -> None:
    plan = plan_after([entry("nodate.IPI")], criteria("all", "mtime"), None)
    assert due_names(plan) == ["nodate.IPI"]


def test_mtime_ties_are_ordered_by_name() -> None:
    entries = [entry("b.IPI", OLD), entry("a.IPI", OLD), entry("c.IPI", OLD - 1)]
    assert due_names(plan_after(entries, criteria("all", "mtime"), None)) == ["c.IPI", "a.IPI", "b.IPI"]


def test_mtime_next_mode_picks_the_file_modified_after_the_record() -> None:
    entries = [entry("a.IPI", OLD - 100), entry("b.IPI", OLD - 300), entry("c.IPI", OLD - 200)]
    plan = plan_after(entries, criteria("next", "mtime"), "b.IPI")
    assert due_names(plan) == ["c.IPI"]


def test_mtime_record_gone_from_server_is_placed_by_ledger_mtime() -> None:
    entries = [entry("a.IPI", OLD - 100), entry("c.IPI", OLD - 200)]
    plan = plan_after(entries, criteria("all", "mtime"), "b.IPI", ledger_mtimes={"b.IPI": OLD - 150})
    assert due_names(plan) == ["a.IPI"]
    assert skip_reasons(plan) == {"c.IPI": SkipReason.NOT_AFTER_RECORD}


def test_name_orders_by_name_ignoring_date_and_mtime() -> None:
    entries = [entry("b_20000101.IPI", OLD - 500), entry("a_20991231.IPI", OLD), entry("c.IPI", OLD - 900)]
    plan = plan_after(entries, criteria("all", "name"), None)
    assert due_names(plan) == ["a_20991231.IPI", "b_20000101.IPI", "c.IPI"]


def test_name_next_mode_picks_the_next_name_after_the_record() -> None:
    entries = [entry("c.IPI"), entry("a.IPI"), entry("b.IPI")]
    assert due_names(plan_after(entries, criteria("next", "name"), "a.IPI")) == ["b.IPI"]


# -- make_plan: what is not a candidate ----------------------------------------


def test_non_regular_entries_are_skipped_as_not_regular() -> None:
    entries = [entry("20250429.IPI", is_regular=False), entry("20250430.IPI")]
    plan = plan_after(entries, criteria("all"), None)
    assert due_names(plan) == ["20250430.IPI"]
    assert skip_reasons(plan) == {"20250429.IPI": SkipReason.NOT_REGULAR}


def test_entries_not_matching_pattern_are_counted_as_unmatched_not_skipped() -> None:
    entries = [entry("readme.txt"), entry("20250429.csv"), entry("dir", is_regular=False), entry("20250429.IPI")]
    plan = plan_after(entries, criteria("all"), None)
    assert due_names(plan) == ["20250429.IPI"]
    assert plan.unmatched == 3
    assert plan.skipped == ()


def test_pattern_match_is_case_sensitive() -> None:
    plan = plan_after([entry("20250429.ipi"), entry("20250430.IPI")], criteria("all"), None)
    assert due_names(plan) == ["20250430.IPI"]
    assert plan.unmatched == 1


def test_custom_pattern_selects_only_matching_names() -> None:
    entries = [entry("20250429.IPI"), entry("20250429.DAT")]
    plan = plan_after(entries, criteria("all", pattern="*.DAT"), None)
    assert due_names(plan) == ["20250429.DAT"]
    assert plan.unmatched == 1


def test_completed_names_in_the_ledger_are_not_due_again() -> None:
    plan = plan_after(seed_entries(), criteria("all"), "20250427.IPI", completed=frozenset({"20250429.IPI"}))
    assert due_names(plan) == ["20250428.IPI", "20250430.IPI"]
    assert skip_reasons(plan)["20250429.IPI"] is SkipReason.COMPLETED


def test_next_mode_skips_completed_file_and_picks_the_following_one() -> None:
    plan = plan_after(seed_entries(), criteria("next"), "20250428.IPI", completed=frozenset({"20250429.IPI"}))
    assert due_names(plan) == ["20250430.IPI"]


def test_latest_mode_does_not_refetch_a_completed_newest_file() -> None:
    plan = plan_after(seed_entries(), criteria("latest"), "20250428.IPI", completed=frozenset({"20250430.IPI"}))
    assert due_names(plan) == ["20250429.IPI"]


# -- make_plan: MIN_FILE_AGE ---------------------------------------------------


def young_middle() -> list[RemoteEntry]:
    return [
        entry("20250429.IPI"),
        entry("20250430.IPI", mtime=int(NOW) - 10),  # still being written
        entry("20250501.IPI"),
        entry("20250502.IPI"),
    ]


def test_all_mode_too_young_file_holds_back_later_files() -> None:
    plan = plan_after(young_middle(), criteria("all"), "20250428.IPI")
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan) == {
        "20250430.IPI": SkipReason.TOO_YOUNG,
        "20250501.IPI": SkipReason.HELD_BACK,
        "20250502.IPI": SkipReason.HELD_BACK,
    }


def test_next_mode_too_young_next_file_leaves_nothing_due() -> None:
    plan = plan_after(young_middle(), criteria("next"), "20250429.IPI")
    assert plan.due == ()
    assert skip_reasons(plan)["20250430.IPI"] is SkipReason.TOO_YOUNG
    assert skip_reasons(plan)["20250501.IPI"] is SkipReason.HELD_BACK


def test_latest_mode_picks_newest_old_enough_file_past_a_young_one() -> None:
    entries = [*young_middle()[:3], entry("20250502.IPI", mtime=int(NOW) - 5)]
    plan = plan_after(entries, criteria("latest"), "20250428.IPI")
    assert due_names(plan) == ["20250501.IPI"]
    reasons = skip_reasons(plan)
    assert reasons["20250430.IPI"] is SkipReason.TOO_YOUNG
    assert reasons["20250502.IPI"] is SkipReason.TOO_YOUNG
    assert reasons["20250429.IPI"] is SkipReason.NOT_NEWEST
    assert SkipReason.HELD_BACK not in plan.skipped_by_reason


def test_latest_mode_with_only_young_files_has_nothing_due() -> None:
    plan = plan_after([entry("20250429.IPI", mtime=int(NOW))], criteria("latest"), None)
    assert plan.due == ()


def test_file_exactly_min_file_age_old_is_taken_one_second_younger_is_not() -> None:
    entries = [entry("20250429.IPI", mtime=int(NOW) - 60), entry("20250430.IPI", mtime=int(NOW) - 59)]
    plan = plan_after(entries, criteria("all", min_age=60), None)
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan) == {"20250430.IPI": SkipReason.TOO_YOUNG}


def test_min_file_age_zero_takes_files_modified_now() -> None:
    plan = plan_after([entry("20250429.IPI", mtime=int(NOW))], criteria("all", min_age=0), None)
    assert due_names(plan) == ["20250429.IPI"]


def test_completed_file_after_a_young_one_counts_as_completed_not_held() -> None:
    plan = plan_after(young_middle(), criteria("all"), "20250429.IPI", completed=frozenset({"20250501.IPI"}))
    assert skip_reasons(plan)["20250501.IPI"] is SkipReason.COMPLETED
    assert skip_reasons(plan)["20250502.IPI"] is SkipReason.HELD_BACK


# -- remote names that must never touch a local path ---------------------------


@pytest.mark.parametrize("name", ["../20250429.IPI", "sub/20250429.IPI", ".20250429.IPI", "20250429.IPI.part"])
def test_unsafe_remote_names_are_never_due(name: str) -> None:
    plan = plan_after([entry(name), entry("20250430.IPI")], criteria("all"), None)
    assert name not in due_names(plan)
    assert skip_reasons(plan)[name] is SkipReason.UNSAFE_NAME
    assert due_names(plan) == ["20250430.IPI"], "an unsafe name does not hold the others back"


# -- advance_record ------------------------------------------------------------


def five() -> list[RemoteEntry]:
    return [entry(n) for n in (*SEED_NAMES, "20250501.IPI")]


def test_advance_moves_over_consecutive_completed_files() -> None:
    new = advance(five(), criteria("all"), "20250428.IPI", {"20250429.IPI", "20250430.IPI"})
    assert new == "20250430.IPI"


def test_advance_stops_before_a_failed_middle_file() -> None:
    new = advance(five(), criteria("all"), "20250428.IPI", {"20250429.IPI", "20250501.IPI"})
    assert new == "20250429.IPI"


def test_advance_does_not_move_when_the_first_file_after_record_failed() -> None:
    new = advance(five(), criteria("all"), "20250428.IPI", {"20250430.IPI", "20250501.IPI"})
    assert new == "20250428.IPI"


def test_advance_without_completions_keeps_the_record() -> None:
    assert advance(five(), criteria("next"), "20250428.IPI", set()) == "20250428.IPI"
    assert advance(five(), criteria("next"), None, set()) is None


def test_advance_from_no_record_starts_at_the_oldest() -> None:
    assert advance(five(), criteria("next"), None, {"20250427.IPI", "20250428.IPI"}) == "20250428.IPI"


def test_advance_stops_at_a_too_young_file_that_is_not_completed() -> None:
    entries = young_middle()
    new = advance(entries, criteria("all"), "20250428.IPI", {"20250429.IPI", "20250501.IPI", "20250502.IPI"})
    assert new == "20250429.IPI"


def test_advance_ignores_completed_files_at_or_before_the_record() -> None:
    assert advance(five(), criteria("all"), "20250429.IPI", {"20250427.IPI", "20250428.IPI"}) == "20250429.IPI"


def test_advance_is_not_blocked_by_entries_that_are_never_candidates() -> None:
    entries = [
        entry("20250429.IPI"),
        entry("20250429_dir.IPI", is_regular=False),
        entry("nodate.IPI"),  # undated
        entry("20250430.IPI"),
        entry("20250430.txt"),  # unmatched
    ]
    assert advance(entries, criteria("all"), "20250428.IPI", {"20250429.IPI", "20250430.IPI"}) == "20250430.IPI"


def test_advance_latest_mode_moves_to_the_newest_completed_file() -> None:
    new = advance(five(), criteria("latest"), "20250428.IPI", {"20250430.IPI"})
    assert new == "20250430.IPI"


def test_advance_latest_mode_picks_newest_of_several_completed() -> None:
    new = advance(five(), criteria("latest"), "20250427.IPI", {"20250428.IPI", "20250501.IPI", "20250429.IPI"})
    assert new == "20250501.IPI"


def test_advance_latest_mode_ignores_completed_files_before_the_record() -> None:
    assert advance(five(), criteria("latest"), "20250429.IPI", {"20250427.IPI"}) == "20250429.IPI"


def test_advance_mtime_ordering_follows_mtime_not_name() -> None:
    entries = [entry("a.IPI", OLD - 100), entry("b.IPI", OLD - 300), entry("c.IPI", OLD - 200)]
    crit = criteria("all", "mtime")
    assert advance(entries, crit, "b.IPI", {"c.IPI"}) == "c.IPI"
    assert advance(entries, crit, "b.IPI", {"a.IPI"}) == "b.IPI"


# -- properties ----------------------------------------------------------------

BASE_DAY = dt.date(2025, 4, 1)


@st.composite
def listings(draw: st.DrawFn) -> list[RemoteEntry]:
    """Distinct dated names (some sharing a date), random mtimes, a few too young or not regular."""
    specs = draw(
        st.lists(
            st.tuples(st.integers(0, 40), st.sampled_from(["", "A_", "B_", "C_"])),
            unique=True,
            max_size=14,
        )
    )
    result = []
    for day, prefix in specs:
        name = f"{prefix}{(BASE_DAY + dt.timedelta(days=day)):%Y%m%d}.IPI"
        age = draw(st.sampled_from([0, 30, 120, 3600, 86400]))
        regular = draw(st.sampled_from([True, True, True, True, True, False]))
        result.append(entry(name, mtime=int(NOW) - age, is_regular=regular))
    return draw(st.permutations(result))


def keyed_candidates(entries: list[RemoteEntry], crit: Criteria) -> list[tuple[OrderKey, str]]:
    keys = []
    for e in entries:
        key = order_key(e.name, e.mtime, crit.order_by)
        if e.is_regular and key is not None:
            keys.append((key, e.name))
    return sorted(keys)


@settings(max_examples=200, deadline=None)
@given(
    entries=listings(),
    order_by=st.sampled_from(["name-date", "mtime", "name"]),
    min_age=st.sampled_from([0, 60, 7200]),
    data=st.data(),
)
def test_all_mode_due_is_sorted_and_after_the_watermark(
    entries: list[RemoteEntry], order_by: str, min_age: int, data: st.DataObject
) -> None:
    crit = criteria("all", order_by, min_age=min_age)
    names = [e.name for e in entries]
    record = data.draw(st.sampled_from([None, *names]))
    completed = frozenset(data.draw(st.lists(st.sampled_from(names), unique=True)) if names else [])
    listed = {e.name: e.mtime for e in entries}
    last_key = record_key(record, order_by, listed, {})
    plan = make_plan(entries, crit, last_key, completed, NOW)

    keys = [order_key(e.name, e.mtime, order_by) for e in plan.due]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    for k, e in zip(keys, plan.due, strict=True):
        assert last_key is None or k > last_key  # type: ignore[operator]
        assert e.name not in completed
        assert e.is_regular
        assert NOW - e.mtime >= min_age
    # Every matching entry is either due or skipped, exactly once.
    assert sorted(due_names(plan) + [s.name for s in plan.skipped]) == sorted(names)


@settings(max_examples=200, deadline=None)
@given(
    entries=listings(),
    order_by=st.sampled_from(["name-date", "mtime", "name"]),
    mode=st.sampled_from(["next", "all"]),
    data=st.data(),
)
def test_advance_never_passes_an_uncompleted_file(
    entries: list[RemoteEntry], order_by: str, mode: str, data: st.DataObject
) -> None:
    crit = criteria(mode, order_by)
    names = [e.name for e in entries]
    record = data.draw(st.sampled_from([None, *names]))
    completed = frozenset(data.draw(st.lists(st.sampled_from(names), unique=True)) if names else [])
    listed = {e.name: e.mtime for e in entries}
    old_key = record_key(record, order_by, listed, {})

    new = advance_record(entries, crit, old_key, record, completed)

    if new == record:
        return
    assert new is not None
    new_key = record_key(new, order_by, listed, {})
    assert new_key is not None
    assert old_key is None or new_key > old_key
    passed = [n for k, n in keyed_candidates(entries, crit) if (old_key is None or k > old_key) and k <= new_key]
    assert new in passed
    assert all(n in completed for n in passed), f"watermark passed an uncompleted file: {passed} vs {completed}"


@settings(max_examples=150, deadline=None)
@given(
    entries=listings(),
    order_by=st.sampled_from(["name-date", "mtime", "name"]),
    mode=st.sampled_from(["next", "all"]),
    failures=st.lists(st.booleans(), max_size=30),
)
def test_repeated_runs_fetch_every_candidate_exactly_once(
    entries: list[RemoteEntry], order_by: str, mode: str, failures: list[bool]
) -> None:
    """Simulate runs (MIN_FILE_AGE=0) in which some downloads fail: no file is passed over or fetched twice."""
    crit = criteria(mode, order_by, min_age=0)
    listed = {e.name: e.mtime for e in entries}
    record: str | None = None
    completed: set[str] = set()
    fetched: list[str] = []
    outcomes = iter(failures)
    for _ in range(len(entries) + len(failures) + 1):
        last_key = record_key(record, order_by, listed, {})
        plan = make_plan(entries, crit, last_key, frozenset(completed), NOW)
        if not plan.due:
            break
        for e in plan.due:
            if next(outcomes, False):  # this download fails
                if mode != "all":
                    break
                continue
            fetched.append(e.name)
            completed.add(e.name)
            record = advance_record(entries, crit, record_key(record, order_by, listed, {}), record, completed)
    assert len(fetched) == len(set(fetched))
    assert sorted(fetched) == sorted(n for _, n in keyed_candidates(entries, crit))
    candidates = keyed_candidates(entries, crit)
    assert record == (candidates[-1][1] if candidates else None)


# -- server metadata is a claim (issue 10, items 4, 5) ---------------------------

FUTURE = 4_102_444_800  # 2100-01-01


def test_unknown_type_is_tried_as_a_regular_file() -> None:
    plan = plan_after([entry("20250429.IPI", is_regular=None)], criteria("all"), None)
    assert due_names(plan) == ["20250429.IPI"]


def test_future_mtime_with_min_file_age_zero_is_due_at_once() -> None:
    entries = [entry("20250429.IPI", mtime=FUTURE), entry("20250430.IPI")]
    plan = plan_after(entries, criteria("all", min_age=0), None)
    assert due_names(plan) == ["20250429.IPI", "20250430.IPI"]


def test_clock_skew_of_a_few_seconds_does_not_hold_the_queue_with_min_file_age_zero() -> None:
    plan = plan_after([entry("20250429.IPI", mtime=int(NOW) + 5)], criteria("next", min_age=0), None)
    assert due_names(plan) == ["20250429.IPI"]


@pytest.mark.parametrize("mtime", [FUTURE, None])
def test_future_or_missing_mtime_is_judged_by_how_long_it_was_seen_unchanged(mtime: int | None) -> None:
    crit = criteria("all", min_age=60)
    files = [entry("20250429.IPI", mtime=mtime)]
    seen_long = {"20250429.IPI": Observation(NOW - 600, NOW - 61, 10, mtime)}
    seen_now = {"20250429.IPI": Observation(NOW - 600, NOW - 10, 10, mtime)}
    assert due_names(make_plan(files, crit, None, frozenset(), NOW, seen_long)) == ["20250429.IPI"]
    assert skip_reasons(make_plan(files, crit, None, frozenset(), NOW, seen_now)) == {
        "20250429.IPI": SkipReason.TOO_YOUNG
    }


def test_missing_mtime_is_never_taken_for_an_old_file() -> None:
    plan = plan_after([entry("20250429.IPI", mtime=None)], criteria("all", min_age=60), None)
    assert skip_reasons(plan) == {"20250429.IPI": SkipReason.TOO_YOUNG}


def test_missing_mtime_under_order_by_mtime_is_skipped_with_its_own_reason() -> None:
    entries = [entry("a.IPI", mtime=None), entry("b.IPI")]
    plan = plan_after(entries, criteria("all", "mtime"), None)
    assert due_names(plan) == ["b.IPI"]
    assert skip_reasons(plan) == {"a.IPI": SkipReason.NO_MTIME}


# -- dates in names (item 7) -------------------------------------------------------


def test_an_implausible_year_is_not_a_date() -> None:
    entries = [entry("IPI_12340115_20250102.dat"), entry("IPI_20250101.dat")]
    plan = plan_after(entries, criteria("all"), None)
    assert due_names(plan) == ["IPI_20250101.dat", "IPI_12340115_20250102.dat"]


@pytest.mark.parametrize("name", ["19691231.IPI", "22000101.IPI", "00010101.IPI"])
def test_years_outside_1970_to_2199_are_not_dates(name: str) -> None:
    assert date_in_name(name) is None


def test_two_different_plausible_dates_are_ambiguous_and_skipped() -> None:
    entries = [entry("20250428_20250501.IPI"), entry("20250429.IPI")]
    plan = plan_after(entries, criteria("all"), None)
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan) == {"20250428_20250501.IPI": SkipReason.AMBIGUOUS_DATE}


def test_date_pattern_chooses_among_several_dates() -> None:
    pattern = re.compile(r"_(?P<date>\d{8})\.IPI$")
    crit = Criteria("*IPI*", "name-date", "all", 0, date_pattern=pattern)
    entries = [entry("20250601_20250428.IPI"), entry("20250101_20250427.IPI"), entry("20250429.IPI")]
    plan = make_plan(entries, crit, None, frozenset(), NOW)
    assert due_names(plan) == ["20250101_20250427.IPI", "20250601_20250428.IPI"]
    assert skip_reasons(plan) == {"20250429.IPI": SkipReason.NO_DATE}
    assert date_in_name("IPI_20250428_19000101.IPI", pattern) is None  # matched, but not a plausible date


# -- the watermark keeps the place a file had when it was fetched (item 3) ------


def test_a_completed_file_touched_on_the_server_keeps_its_ledger_place() -> None:
    """a.IPI (fetched at mtime 100) is touched to 900: c.IPI (200) must still be due, and the
    watermark, once b.IPI completes, moves to b.IPI, not onto the touched a.IPI."""
    crit = criteria("all", "mtime", min_age=0)
    entries = [entry("a.IPI", 900), entry("b.IPI", 150), entry("c.IPI", 200)]
    ledger = {"a.IPI": 100, "b.IPI": 150}
    ordered = order(entries, crit, ledger)
    last_key = record_key("a.IPI", "mtime", {e.name: e.mtime for e in entries}, ledger)
    assert due_names(make_plan(ordered, crit, last_key, frozenset(ledger), NOW)) == ["c.IPI"]
    assert advance_record(ordered, crit, last_key, "a.IPI", {"a.IPI", "b.IPI"}) == "b.IPI"


# -- observations and late arrivals (items 4, 6) --------------------------------


def observed(
    entries: list[RemoteEntry], previous: dict[str, Observation] | None, record: str | None, now: float = NOW
) -> dict[str, Observation]:
    crit = criteria("all")
    key = record_key(record, crit.order_by, {e.name: e.mtime for e in entries}, {})
    return observe(previous, order(entries, crit), key, frozenset({"20250427.IPI"}), now)


def test_first_observations_are_the_baseline_never_late() -> None:
    result = observed([entry("20250427.IPI"), entry("20250428.IPI"), entry("20250430.IPI")], None, "20250429.IPI")
    assert set(result) == {"20250428.IPI", "20250430.IPI"}, "completed names are not kept"
    assert not any(o.late for o in result.values())
    assert result["20250428.IPI"] == Observation(NOW, NOW, 10, OLD, late=False)


def test_a_name_first_listed_behind_the_watermark_is_late_and_stays_late() -> None:
    first = observed([entry("20250430.IPI")], None, "20250429.IPI")
    second = observed([entry("20250428.IPI"), entry("20250430.IPI")], first, "20250429.IPI", NOW + 60)
    assert second["20250428.IPI"].late and not second["20250430.IPI"].late
    third = observed([entry("20250428.IPI", size=99)], second, "20250429.IPI", NOW + 120)
    assert third["20250428.IPI"] == Observation(NOW + 60, NOW + 120, 99, OLD, late=True)
    assert "20250430.IPI" not in third, "names no longer listed are dropped"


def test_unchanged_observation_keeps_its_stable_since() -> None:
    first = observed([entry("20250430.IPI", mtime=FUTURE)], None, None)
    again = observed([entry("20250430.IPI", mtime=FUTURE)], first, None, NOW + 300)
    assert again["20250430.IPI"].stable_since == NOW


def late_plan(policy: str, completed: frozenset[str] = frozenset(), min_age: int = 0) -> Plan:
    crit = Criteria("*IPI*", "name-date", "all", min_age, late_files=policy)
    entries = [entry("A_20250428.IPI", mtime=int(NOW)), entry("B_20250428.IPI"), entry("20250429.IPI")]
    seen = {"A_20250428.IPI": Observation(NOW, NOW, 10, int(NOW), late=True)}
    key = record_key("B_20250428.IPI", "name-date", {}, {})
    return make_plan(entries, crit, key, completed, NOW, seen)


def test_late_files_warn_names_the_late_file() -> None:
    plan = late_plan("warn")
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan)["A_20250428.IPI"] is SkipReason.LATE


def test_late_files_fetch_makes_it_due_without_holding_back_the_rest() -> None:
    assert due_names(late_plan("fetch")) == ["A_20250428.IPI", "20250429.IPI"]
    young = late_plan("fetch", min_age=60)
    assert due_names(young) == ["20250429.IPI"], "a young late file holds nothing back: it is behind the record"
    assert skip_reasons(young)["A_20250428.IPI"] is SkipReason.TOO_YOUNG


def test_late_files_fetch_never_fetches_a_completed_file_twice() -> None:
    plan = late_plan("fetch", completed=frozenset({"A_20250428.IPI"}))
    assert due_names(plan) == ["20250429.IPI"]


def test_late_files_ignore_treats_it_as_passed() -> None:
    assert skip_reasons(late_plan("ignore"))["A_20250428.IPI"] is SkipReason.NOT_AFTER_RECORD


# -- properties over arbitrary listings (issue 10) --------------------------------

NAME_PARTS = st.sampled_from(
    ["20250428", "20250429", "20250501", "12340115", "22000101", "20251399", "x", "A_", "B_", " ", ".", "/", "é"]
)


@st.composite
def wild_listings(draw: st.DrawFn) -> list[RemoteEntry]:
    """Any names (dated, doubly dated, implausible, unsafe, spaced) with any claims: mtimes
    missing, young, old or far ahead of our clock; sizes and types missing or not."""
    names = draw(
        st.lists(
            st.lists(NAME_PARTS, min_size=1, max_size=4).map(lambda p: "".join(p) + ".IPI"), unique=True, max_size=12
        )
    )
    mtimes = st.sampled_from([None, OLD, int(NOW) - 30, int(NOW) + 5, FUTURE])
    return [
        RemoteEntry(
            name,
            draw(st.sampled_from([None, 0, 10])),
            draw(mtimes),
            draw(st.sampled_from([True, True, True, None, False])),
        )
        for name in names
    ]


@settings(max_examples=150, deadline=None)
@given(
    first=wild_listings(),
    arrivals=wild_listings(),
    order_by=st.sampled_from(["name-date", "mtime", "name"]),
    mode=st.sampled_from(["next", "all"]),
    policy=st.sampled_from(["warn", "fetch", "ignore"]),
    failures=st.lists(st.booleans(), max_size=20),
)
def test_runs_over_wild_listings_never_fetch_twice_and_name_every_file(
    first: list[RemoteEntry],
    arrivals: list[RemoteEntry],
    order_by: str,
    mode: str,
    policy: str,
    failures: list[bool],
) -> None:
    """Simulated runs, a minute apart, with failing downloads and files arriving midway:
    no file is due twice, the watermark never passes an incomplete file, and every
    listed matching file is due, completed, behind the record (late only if first seen
    there), or skipped with a named reason."""
    crit = Criteria("*.IPI", order_by, mode, 60, late_files=policy)
    fetched_mtimes: dict[str, int] = {}
    record: str | None = None
    observations: dict[str, Observation] | None = None
    outcomes = iter(failures)
    fetched: list[str] = []
    now = NOW
    for run in range(14):
        listing = first + [e for e in arrivals if e.name not in {f.name for f in first}] if run >= 4 else first
        completed = frozenset(fetched)
        ordered = order(listing, crit, fetched_mtimes)
        listed = {e.name: e.mtime for e in listing}
        last_key = record_key(record, order_by, listed, fetched_mtimes)
        observations = observe(observations, ordered, last_key, completed, now)
        plan = make_plan(ordered, crit, last_key, completed, now, observations)

        matching = [e.name for _, e in ordered.keyed] + [e.name for e in ordered.unplaced]
        assert sorted(due_names(plan) + [s.name for s in plan.skipped]) == sorted(matching), "due or skipped, once"
        for skip in plan.skipped:
            observation = observations.get(skip.name)
            if skip.reason is SkipReason.LATE:
                assert observation is not None and observation.late and policy == "warn"
            if skip.reason is SkipReason.NOT_AFTER_RECORD and skip.name not in completed:
                assert policy == "ignore" or observation is None or not observation.late
        for e in plan.due:
            assert e.name not in completed, "never due twice"
            if next(outcomes, False):
                if mode != "all":
                    break
                continue
            fetched.append(e.name)
            if e.mtime is not None:
                fetched_mtimes[e.name] = e.mtime
            new = advance_record(ordered, crit, last_key, record, set(fetched))
            if new != record and new is not None:
                new_key = record_key(new, order_by, listed, fetched_mtimes)
                passed = [x.name for k, x in ordered.keyed if (last_key is None or k > last_key) and k <= new_key]
                assert all(n in fetched for n in passed), "the watermark passed an incomplete file"
            record = new
        now += 60
    assert len(fetched) == len(set(fetched))


# -- Ready markers and companions (issue 11) ----------------------------------------------


@pytest.mark.parametrize("mode", ["next", "all"])
def test_a_file_waiting_for_its_marker_holds_back_later_files(mode: str) -> None:
    files = [entry("20250427.IPI"), entry("20250428.IPI"), entry("20250429.IPI")]
    plan = make_plan(files, criteria(mode), None, frozenset(), NOW, ready=lambda name: name != "20250428.IPI")
    assert due_names(plan) == ["20250427.IPI"]
    assert skip_reasons(plan) == {"20250428.IPI": SkipReason.NO_MARKER, "20250429.IPI": SkipReason.HELD_BACK}


def test_under_latest_a_file_waiting_for_its_marker_holds_nothing_back() -> None:
    files = [entry("20250427.IPI"), entry("20250428.IPI"), entry("20250429.IPI")]
    plan = make_plan(files, criteria("latest"), None, frozenset(), NOW, ready=lambda name: name != "20250428.IPI")
    assert due_names(plan) == ["20250429.IPI"]
    assert skip_reasons(plan)["20250428.IPI"] is SkipReason.NO_MARKER


def test_companions_are_neither_candidates_nor_unmatched_noise() -> None:
    crit = Criteria("*", "name", "all", 0, companion=lambda name: name.endswith((".sha256", ".done")))
    listed = [entry("a.dat"), entry("a.dat.sha256"), entry("a.dat.done"), entry("b.txt")]
    plan = make_plan(order(listed, crit), crit, None, frozenset(), NOW)
    assert due_names(plan) == ["a.dat", "b.txt"]
    assert plan.unmatched == 0 and plan.skipped == ()
