"""The job clock: every second between a job's start and end lands on exactly one row."""

from __future__ import annotations

import pytest

from pipelines import progress
from pipelines.progress import OTHER_STAGE, StageClock, StageTiming, with_other


class FakeTime:
    """perf_counter that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def seconds_by_stage(clock: StageClock) -> dict[str, float]:
    return {row.stage: row.seconds for row in clock.rows()}


def test_nested_stages_are_charged_their_own_time_only(clock_time):
    clock = StageClock()
    clock_time.wait(1)  # before any stage: other
    with clock.stage("fit:x"):
        clock_time.wait(2)
        with clock.stage("train:x"):
            clock_time.wait(5)
        clock_time.wait(3)
    clock_time.wait(0.5)  # after: other
    assert seconds_by_stage(clock) == {"fit:x": 5, "train:x": 5, OTHER_STAGE: 1.5}
    assert clock.total() == 11.5
    assert sum(seconds_by_stage(clock).values()) == clock.total()


def test_a_stage_inside_one_of_its_name_adds_to_it(clock_time):
    """A job times ``fit:dsir``; the fit's own Dask stage is ``fit:dsir`` too: one row."""
    clock = StageClock()
    with clock.stage("fit:dsir"):
        clock_time.wait(1)
        with clock.stage("fit:dsir", tasks=4):
            clock_time.wait(2)
    assert [(r.stage, r.tasks, r.seconds) for r in clock.rows()] == [
        ("fit:dsir", 4, 3), (OTHER_STAGE, 0, 0)]


def test_stages_one_after_another_keep_their_rows(clock_time):
    clock = StageClock()
    for seconds in (1, 2):
        with clock.stage("write", tasks=1):
            clock_time.wait(seconds)
    assert [(r.stage, r.seconds) for r in clock.timings] == [("write", 1), ("write", 2)]


def test_a_failing_stage_is_still_charged(clock_time):
    clock = StageClock()
    with pytest.raises(RuntimeError), clock.stage("score:x"):
        clock_time.wait(4)
        raise RuntimeError("worker died")
    assert seconds_by_stage(clock)["score:x"] == 4


def test_record_adds_up_to_its_total(clock_time):
    clock = StageClock()
    with clock.stage("start cluster"):
        clock_time.wait(1.25)
    clock_time.wait(0.5)
    record = clock.record()
    assert record["total_seconds"] == 1.75
    assert [s["stage"] for s in record["stages"]] == ["start cluster", OTHER_STAGE]
    assert sum(s["seconds"] for s in record["stages"]) == pytest.approx(1.75)


def test_with_other_covers_the_rest_of_a_total():
    rows = with_other([StageTiming("score", 2, 3.0)], 5.0)
    assert [(r.stage, r.seconds) for r in rows] == [("score", 3.0), (OTHER_STAGE, 2.0)]
    # a list that has its other row already is left as it is
    assert with_other(rows, 9.0) == rows
