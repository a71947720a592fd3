"""The jittered window math, on its own (no Home Assistant): one run per local day, inside the window."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from custom_components.offsite_backup.engine.schedule import Plan, Window, draw, next_plan, plausible

PARIS = ZoneInfo("Europe/Paris")


def simulate(start: datetime, days: int, window: Window, seed: int) -> list[datetime]:
    """Run the scheduler like the integration does: wake at each planned instant, run, mark done, plan again."""
    rng = random.Random(seed)
    now = start
    plan = next_plan(now, window, PARIS, None, rng)
    runs: list[datetime] = []
    end = start + timedelta(days=days)
    while plan.run_at < end:
        assert plan.run_at >= now, "a plan is never in the past"
        assert len(runs) <= 2 * days, "runs more than once a day"
        now = plan.run_at
        runs.append(now)
        plan = next_plan(now, window, PARIS, plan.mark_done(), rng)
    return runs


def local_window_day(instant: datetime, window: Window) -> date:
    local = instant.astimezone(PARIS)
    if window.crosses_midnight and local.time() < window.end:
        return local.date() - timedelta(days=1)
    return local.date()


def inside_local_window(instant: datetime, window: Window) -> bool:
    """Inside the window as the wall clock shows it (a gap-shifted instant may read up to an hour later)."""
    day = local_window_day(instant, window)
    start, end = window.bounds(day, PARIS)
    return start <= instant < end


@pytest.mark.parametrize(
    ("first_day", "label"),
    [
        (datetime(2026, 3, 1, 12, tzinfo=UTC), "spring forward"),
        (datetime(2026, 10, 1, 12, tzinfo=UTC), "fall back"),
    ],
)
@pytest.mark.parametrize(
    "window",
    [
        Window(time(0, 0), time(2, 0)),  # the default
        Window(time(1, 30), time(3, 30)),  # straddles both clock changes
        Window(time(2, 0), time(3, 0)),  # the hour that vanishes in March and repeats in October
        Window(time(23, 0), time(1, 0)),  # crosses midnight
    ],
)
def test_sixty_days_one_run_per_local_day_inside_the_window(
    first_day: datetime, label: str, window: Window
) -> None:
    runs = simulate(first_day, 60, window, seed=first_day.month * 100 + window.start.hour)
    days = [local_window_day(run, window) for run in runs]

    assert len(runs) == 60, f"{label}: {len(runs)} runs in 60 days"
    assert len(set(days)) == len(days), "never twice on one day"
    assert days == [days[0] + timedelta(days=i) for i in range(60)], "never a night skipped"
    assert all(inside_local_window(run, window) for run in runs)
    # Jitter: the time of day differs from day to day (60 draws over a window of at least a minute).
    seconds = {run.astimezone(PARIS).time().replace(microsecond=0) for run in runs}
    assert len(seconds) >= 55


def test_the_clock_change_nights_are_in_the_simulation() -> None:
    window = Window(time(1, 30), time(3, 30))
    spring = simulate(datetime(2026, 3, 1, 12, tzinfo=UTC), 60, window, seed=1)
    fall = simulate(datetime(2026, 10, 1, 12, tzinfo=UTC), 60, window, seed=2)
    assert date(2026, 3, 29) in {local_window_day(r, window) for r in spring}
    assert date(2026, 10, 25) in {local_window_day(r, window) for r in fall}
    # The window lasts real time: an hour less on the night clocks go forward, an hour more when they go back.
    spring_start, spring_end = window.bounds(date(2026, 3, 29), PARIS)
    fall_start, fall_end = window.bounds(date(2026, 10, 25), PARIS)
    assert spring_end - spring_start == timedelta(hours=1)
    assert fall_end - fall_start == timedelta(hours=3)


def test_draws_are_uniform_over_the_window() -> None:
    window = Window(time(0, 0), time(2, 0))
    rng = random.Random(7)
    start, end = window.bounds(date(2026, 6, 1), PARIS)
    offsets = [(draw(date(2026, 6, 1), window, PARIS, rng) - start).total_seconds() for _ in range(4000)]  # type: ignore[operator]
    span = (end - start).total_seconds()
    assert min(offsets) >= 0
    assert max(offsets) < span
    quarters = [sum(1 for o in offsets if q * span / 4 <= o < (q + 1) * span / 4) for q in range(4)]
    assert all(850 < count < 1150 for count in quarters), quarters


def test_restart_inside_the_window_after_the_run_does_not_run_again() -> None:
    window = Window(time(0, 0), time(2, 0))
    rng = random.Random(3)
    ran = Plan(
        day=date(2026, 6, 1), run_at=datetime(2026, 5, 31, 22, 30, tzinfo=UTC), done=True
    )  # 00:30 local
    restart = datetime(2026, 5, 31, 23, 0, tzinfo=UTC)  # 01:00 local, still inside the window
    plan = next_plan(restart, window, PARIS, ran, rng)
    assert plan.day == date(2026, 6, 2)
    assert plan.run_at.astimezone(PARIS).date() == date(2026, 6, 2)


def test_restart_before_the_planned_instant_keeps_the_draw() -> None:
    window = Window(time(0, 0), time(2, 0))
    planned = Plan(day=date(2026, 6, 1), run_at=datetime(2026, 5, 31, 23, 15, tzinfo=UTC))
    restart = datetime(2026, 5, 31, 22, 5, tzinfo=UTC)
    assert next_plan(restart, window, PARIS, planned, random.Random(4)) == planned
    # Even long before the window (the plan is tomorrow's, drawn after today's run).
    assert next_plan(restart - timedelta(hours=20), window, PARIS, planned, random.Random(4)) == planned


def test_off_during_the_window_does_not_replay_it_at_startup() -> None:
    window = Window(time(0, 0), time(2, 0))
    missed = Plan(day=date(2026, 6, 1), run_at=datetime(2026, 5, 31, 22, 40, tzinfo=UTC))
    startup = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 local, the window is long over
    plan = next_plan(startup, window, PARIS, missed, random.Random(5))
    assert plan.day == date(2026, 6, 2)
    start, end = window.bounds(date(2026, 6, 2), PARIS)
    assert start <= plan.run_at < end


def test_started_inside_the_window_draws_in_what_is_left() -> None:
    window = Window(time(0, 0), time(2, 0))
    startup = datetime(2026, 5, 31, 23, 30, tzinfo=UTC)  # 01:30 local
    for seed in range(50):
        plan = next_plan(startup, window, PARIS, None, random.Random(seed))
        assert plan.day == date(2026, 6, 1)
        assert startup <= plan.run_at < datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
    # The planned instant went by while Home Assistant restarted: drawn again in the rest of the window.
    passed = Plan(day=date(2026, 6, 1), run_at=datetime(2026, 5, 31, 22, 10, tzinfo=UTC))
    plan = next_plan(startup, window, PARIS, passed, random.Random(9))
    assert plan.day == date(2026, 6, 1)
    assert plan.run_at >= startup
    assert not plan.done


def test_a_changed_window_draws_again() -> None:
    planned = Plan(day=date(2026, 6, 1), run_at=datetime(2026, 5, 31, 22, 10, tzinfo=UTC))  # 00:10 local
    later = Window(time(3, 0), time(5, 0))
    plan = next_plan(datetime(2026, 5, 31, 20, 0, tzinfo=UTC), later, PARIS, planned, random.Random(1))
    start, end = later.bounds(date(2026, 6, 1), PARIS)
    assert start <= plan.run_at < end


def test_plan_round_trip_and_bad_data() -> None:
    plan = Plan(day=date(2026, 6, 1), run_at=datetime(2026, 5, 31, 22, 10, tzinfo=UTC), done=True)
    assert Plan.from_dict(plan.as_dict()) == plan
    for bad in (
        {},
        {"day": "x", "run_at": "2026-01-01T00:00:00+00:00"},
        {"day": "2026-01-01", "run_at": "2026-01-01T00:00:00"},
        {"day": "2026-01-01", "run_at": "2026-01-01T00:00:00+00:00", "done": "yes"},
    ):
        with pytest.raises(ValueError):
            Plan.from_dict(bad)


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="empty"):
        Window(time(1, 0), time(1, 0))
    with pytest.raises(ValueError, match="aware"):
        next_plan(datetime(2026, 1, 1), Window(time(0), time(2)), PARIS, None, random.Random())


@pytest.mark.parametrize(
    ("zone", "day", "window", "local_bounds"),
    [
        # Paris jumps from 02:00 to 03:00 on 29 March 2026.
        ("Europe/Paris", date(2026, 3, 29), Window(time(2, 30), time(3, 10)), ("03:00", "03:10")),
        ("Europe/Paris", date(2026, 3, 29), Window(time(2, 10), time(2, 50)), ("03:00", "03:01")),
        ("Europe/Paris", date(2026, 3, 28), Window(time(23, 30), time(2, 30)), ("23:30", "03:00")),
        ("Europe/Paris", date(2026, 3, 29), Window(time(1, 30), time(2, 30)), ("01:30", "03:00")),
        # New York jumps from 02:00 to 03:00 on 8 March 2026; Lord Howe Island by half an hour, 02:00 to 02:30.
        ("America/New_York", date(2026, 3, 8), Window(time(2, 30), time(3, 10)), ("03:00", "03:10")),
        ("Australia/Lord_Howe", date(2026, 10, 4), Window(time(2, 10), time(2, 50)), ("02:30", "02:50")),
    ],
)
def test_a_window_end_in_the_spring_forward_gap_moves_to_the_end_of_the_gap(
    zone: str, day: date, window: Window, local_bounds: tuple[str, str]
) -> None:
    """A local time the clocks skip is read as the instant they jump: the window keeps what exists of it."""
    tz = ZoneInfo(zone)
    start, end = window.bounds(day, tz)
    assert (start.astimezone(tz).strftime("%H:%M"), end.astimezone(tz).strftime("%H:%M")) == local_bounds
    assert start < end
    # Never after the window's own end on the wall clock (the old reading put 02:30 at 03:30, past 03:10).
    if not window.crosses_midnight and window.end > time(3, 0):
        assert end.astimezone(tz).time() <= window.end


def test_a_plan_further_ahead_than_tomorrow_is_not_plausible() -> None:
    """A plan is for tonight's window or tomorrow's; one further ahead was drawn while the clock was ahead."""
    tz = ZoneInfo("Europe/Paris")
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    window = Window(time(0, 0), time(2, 0))
    tonight = next_plan(now, window, tz, None, random.Random(1))
    assert plausible(tonight, now, tz)
    assert plausible(tonight.mark_done(), now, tz)
    late = Window(time(23, 0), time(1, 0))  # crosses midnight: tomorrow's window starts tomorrow evening
    assert plausible(
        next_plan(now + timedelta(hours=11, minutes=30), late, tz, None, random.Random(1)), now, tz
    )
    a_year_ahead = next_plan(now + timedelta(days=365), window, tz, None, random.Random(1))
    assert not plausible(a_year_ahead, now, tz)
    assert not plausible(Plan(day=date(2026, 6, 3), run_at=datetime(2026, 6, 2, 22, 30, tzinfo=UTC)), now, tz)
