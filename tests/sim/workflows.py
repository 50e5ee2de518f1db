"""The workflow jobs a seed's client submits besides its plain ones, drawn
from a random source of their own (so that the plain jobs, the cluster and
the fault plan draw what they drew before workflows).

Each kind comes with its own odds, so that a seed has none, some or all:

- `map`: as many chunks as job0, chunk i reading job0's chunk i output
  (SAME_CHUNK), sometimes also after job1; sometimes with a deadline;
- `reduce`: one chunk reading every chunk's output of `map` (ALL_CHUNKS,
  as part.0, part.1, ...) and, as its own input, job0's chunk 0 output;
  sometimes also after `held`;
- `held`: held until the client releases it, 0.3-4 s after its
  acknowledgement, or (three in ten) cancels it instead, which cancels
  what waits for it; sometimes after job0, sometimes with a deadline that
  may come first;
- `later`: a start time 0.5-3 s ahead, sometimes with a deadline that may
  come before it; sometimes also after `held`;
- `twin0` and `twin1`: two jobs with the same spec and cache=True, the
  second submitted 0-2 s after the first: while one's chunk runs the
  other's waits for it, and takes its result; half of the pairs read
  job0's outputs chunk by chunk; three in ten twin0s have a deadline.

A deadline is 0.3-5 s after the submission: short enough that many are
hit.
"""
from __future__ import annotations

import random
from dataclasses import replace

from uds.master.commands import ALL_CHUNKS, JOB_WIDE, SAME_CHUNK, InputRef

from .client import JobPlan
from .storage import PROOF_NAME

KIND_ODDS = {"map": 0.5, "held": 0.4, "later": 0.3, "twins": 0.4}
REDUCE_ODDS = 0.7           # of the seeds with a map
DEADLINE_ODDS = 0.3
DEADLINE_IN_S = (0.3, 5.0)
RELEASE_IN_S = (0.3, 4.0)
CANCEL_INSTEAD_ODDS = 0.3
START_IN_S = (0.5, 3.0)
TWIN_LAG_S = (0.0, 2.0)


def _id(name: str) -> bytes:
    return name.encode().ljust(16, b"\0")


def _deadline(rng: random.Random) -> float | None:
    return rng.uniform(*DEADLINE_IN_S) if rng.random() < DEADLINE_ODDS else None


def draw_workflows(seed: int, plain: list[tuple[bytes, int]]) -> list[tuple[float, JobPlan]]:
    """(when to submit, plan) for the seed's workflow jobs, given its plain
    jobs (job id, chunk count); each is submitted once what it names is
    acknowledged."""
    rng = random.Random(f"workflows {seed}")
    job0, chunks0 = plain[0]
    job1 = plain[1][0] if len(plain) > 1 else None
    draws = {kind: rng.random() < odds for kind, odds in KIND_ODDS.items()}
    planned: list[tuple[float, JobPlan]] = []
    held = None
    if draws["held"]:
        held = JobPlan(_id("held"), rng.randint(1, 2), hold=True, after=(job0,) if rng.random() < 0.5 else (),
                       deadline_in=_deadline(rng))
        if rng.random() < CANCEL_INSTEAD_ODDS:
            held = replace(held, cancel_in=rng.uniform(*RELEASE_IN_S))
        else:
            held = replace(held, release_in=rng.uniform(*RELEASE_IN_S))
        planned.append((rng.uniform(0.0, 2.0), held))
    if draws["map"]:
        after = (job1,) if job1 is not None and rng.random() < 0.5 else ()
        mapped = JobPlan(_id("map"), chunks0, max_retries=rng.choice((0, 2)), after=after,
                         refs=(InputRef("in", JOB_WIDE, job0, PROOF_NAME, SAME_CHUNK),),
                         deadline_in=_deadline(rng))
        planned.append((rng.uniform(0.0, 2.5), mapped))
        if rng.random() < REDUCE_ODDS:
            after = (held.job,) if held is not None and rng.random() < 0.5 else ()
            planned.append((rng.uniform(0.0, 3.0), JobPlan(
                _id("reduce"), 1, max_retries=rng.choice((0, 2)), after=after,
                refs=(InputRef("part", JOB_WIDE, mapped.job, PROOF_NAME, ALL_CHUNKS),
                      InputRef("first", 0, job0, PROOF_NAME, 0)))))
    if draws["later"]:
        after = (held.job,) if held is not None and rng.random() < 0.5 else ()
        planned.append((rng.uniform(0.0, 2.5), JobPlan(
            _id("later"), rng.randint(1, 2), after=after, start_in=rng.uniform(*START_IN_S),
            deadline_in=_deadline(rng))))
    if draws["twins"]:
        by_chunk = rng.random() < 0.5
        count = chunks0 if by_chunk else rng.randint(1, 3)
        refs = (InputRef("in", JOB_WIDE, job0, PROOF_NAME, SAME_CHUNK),) if by_chunk else ()
        first_at = rng.uniform(0.0, 2.5)
        retries = rng.choice((0, 2))
        # A deadline is no part of a chunk's key: twin0's may end its running
        # chunks, and then twin1's waiting ones must run instead.
        deadline_in = _deadline(rng)
        for index, at in enumerate((first_at, first_at + rng.uniform(*TWIN_LAG_S))):
            planned.append((at, JobPlan(_id(f"twin{index}"), count, max_retries=retries, refs=refs, cache=True,
                                        deadline_in=deadline_in if index == 0 else None)))
    return planned


def twin_pairs(plans: list[JobPlan]) -> list[tuple[bytes, bytes]]:
    """The pairs of cache jobs that share a spec, hence every chunk's key."""
    twins = [plan.job for plan in plans if plan.cache]
    return [(twins[0], twins[1])] if len(twins) == 2 else []
