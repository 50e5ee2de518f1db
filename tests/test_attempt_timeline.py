"""client/attempts.py: an attempt's timeline as phases, and as `uds status
--chunk` draws it (a line of durations and a bar of letters)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from uds.client.attempts import (
    PHASE_LETTERS, TIMELINE_BAR_COLUMNS, TIMELINE_STEPS, Attempt, AttemptList, attempt_lines, duration_text,
    timeline_drawing, timeline_phases,
)
from uds.wire.records import ChunkResult

T = 1_764_500_000.0
FULL = dict(dispatched=T, assigned=T + 0.003, started=T + 0.043, first_read=T + 0.045, ended=T + 1.245,
            uploaded=T + 1.260, committed=T + 1.264)


def test_every_known_step_ends_the_phase_named_for_it():
    assert [(name, round(start - T, 3), round(end - T, 3)) for name, start, end in timeline_phases(FULL)] == [
        ("dispatch", 0.0, 0.003), ("start", 0.003, 0.043), ("first read", 0.043, 0.045),
        ("run", 0.045, 1.245), ("upload", 1.245, 1.26), ("commit", 1.26, 1.264)]


def test_an_unknown_step_is_skipped_not_shown_as_zero():
    no_read_nor_upload = dict(FULL, first_read=None, uploaded=None)
    assert [(name, round(end - start, 3)) for name, start, end in timeline_phases(no_read_nor_upload)] == [
        ("dispatch", 0.003), ("start", 0.04), ("run", 1.202), ("commit", 0.019)]
    never_started = dict(FULL, started=None, first_read=None, uploaded=None)
    assert [name for name, _, _ in timeline_phases(never_started)] == ["dispatch", "prepare", "commit"]
    running = dict(FULL, first_read=None, ended=None, uploaded=None, committed=None)
    assert [name for name, _, _ in timeline_phases(running)] == ["dispatch", "start"]
    assert timeline_phases(dict.fromkeys(TIMELINE_STEPS)) == []
    assert timeline_phases({"dispatched": T}) == []


def test_a_step_a_clock_skew_puts_early_takes_no_time():
    # The worker's clock a little behind the masters': assigned before dispatched.
    skewed = dict(FULL, assigned=T - 0.002)
    phases = timeline_phases(skewed)
    assert phases[0] == ("dispatch", T, T)
    assert phases[1][1] == T


@given(st.lists(st.none() | st.floats(0, 1e4), min_size=len(TIMELINE_STEPS), max_size=len(TIMELINE_STEPS)))
def test_phases_are_contiguous_forward_and_cover_the_known_steps(times):
    timeline = {step: None if at is None else T + at for step, at in zip(TIMELINE_STEPS, times)}
    phases = timeline_phases(timeline)
    known = [at for at in timeline.values() if at is not None]
    assert len(phases) == max(0, len(known) - 1)
    for (_, start, end), (_, next_start, _) in zip(phases, phases[1:]):
        assert end == next_start
    assert all(start <= end for _, start, end in phases)
    if phases:
        assert phases[0][1] == known[0] and phases[-1][2] == max(known)
    for line in timeline_drawing(phases)[1:]:
        assert len(line) == TIMELINE_BAR_COLUMNS + 2


def test_the_drawing_names_each_phase_and_draws_it_in_proportion():
    text, bar = timeline_drawing(timeline_phases(FULL))
    assert text == ("dispatch 3ms | start 40ms | first read 2ms | run 1.20s | upload 15ms | commit 4ms  (1.26s)")
    assert bar.startswith("[") and bar.endswith("]") and len(bar) == TIMELINE_BAR_COLUMNS + 2
    letters = bar[1:-1]
    # In order, every phase seen (a short one gets a column), the run most of it.
    assert letters == "dsf" + "r" * 55 + "uc"
    assert set(PHASE_LETTERS[name] for name, _, _ in timeline_phases(FULL)) == set(letters)


def test_the_bar_follows_the_shares():
    phases = [("dispatch", 0.0, 1.0), ("run", 1.0, 4.0)]
    assert timeline_drawing(phases, columns=8)[1] == "[ddrrrrrr]"
    assert timeline_drawing([("run", 5.0, 5.0)]) == ["run 0ms  (0ms)"]      # no time: no bar
    assert timeline_drawing([]) == []


def test_durations_read_at_every_scale():
    assert [duration_text(s) for s in (0.0, 0.0034, 0.5, 1.2, 59.994, 125.0, 3725.0)] == [
        "0ms", "3ms", "500ms", "1.20s", "59.99s", "2m05s", "1h02m"]


def test_uds_status_chunk_lines_show_the_known_clock_times_and_the_bar():
    attempt = Attempt(number=1, state="succeeded", failure="", worker="ab" * 16, result=ChunkResult(exit_code=0),
                      timeline=dict(FULL, first_read=None))
    assert attempt.phases() == timeline_phases(attempt.timeline)
    lines = attempt_lines(AttemptList([attempt]))
    assert lines[0].split()[:3] == ["attempt", "1", "succeeded"]
    clocks = lines[1].split()
    assert clocks[::2] == ["dispatched", "assigned", "started", "ended", "uploaded", "committed"]
    assert lines[2].strip().startswith("dispatch 3ms | start 40ms | run 1.20s | upload 15ms | commit 4ms")
    assert lines[3].strip().startswith("[ds") and len(lines) == 4
    unknown = Attempt(number=2, state="queued", failure="", worker=None, result=ChunkResult(),
                      timeline=dict.fromkeys(TIMELINE_STEPS))
    assert len(attempt_lines(AttemptList([unknown]))) == 1
