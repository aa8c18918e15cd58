"""The batching policy, on a fake clock: capacity, the wait bound, exact requests."""

from __future__ import annotations

from worker.runtime.batcher import BatchPolicy, WaitAdvisor, gather_partners


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


POLICY = BatchPolicy(max_images=8, max_wait_s=0.05, poll_interval_s=0.01)


def test_a_lone_leader_waits_no_longer_than_the_bound() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def claim(capacity: int) -> list[tuple[str, int]]:
        calls.append(capacity)
        return []

    assert gather_partners(1, False, claim, POLICY, clock=clock, sleep=clock.sleep) == []
    assert clock.now - 100.0 <= POLICY.max_wait_s + 1e-9
    assert sum(clock.sleeps) <= POLICY.max_wait_s + 1e-9
    assert calls and all(c == 7 for c in calls)


def test_stops_as_soon_as_the_batch_is_full_and_counts_images_not_jobs() -> None:
    clock = FakeClock()
    offers = [[("a", 4)], [("b", 2), ("c", 1)], [("never", 1)]]

    def claim(capacity: int) -> list[tuple[str, int]]:
        return offers.pop(0)

    assert gather_partners(1, False, claim, POLICY, clock=clock, sleep=clock.sleep) == ["a", "b", "c"]
    assert offers == [[("never", 1)]]


def test_capacity_offered_shrinks_by_what_was_claimed() -> None:
    clock = FakeClock()
    seen: list[int] = []

    def claim(capacity: int) -> list[tuple[str, int]]:
        seen.append(capacity)
        return [("x", 3)] if len(seen) == 1 else []

    gather_partners(2, False, claim, POLICY, clock=clock, sleep=clock.sleep)
    assert seen[0] == 6 and all(c == 3 for c in seen[1:])


def test_exact_or_full_leaders_run_alone_without_waiting() -> None:
    clock = FakeClock()

    def claim(capacity: int) -> list[tuple[str, int]]:
        raise AssertionError("must not claim")

    assert gather_partners(1, True, claim, POLICY, clock=clock, sleep=clock.sleep) == []
    assert gather_partners(8, False, claim, POLICY, clock=clock, sleep=clock.sleep) == []
    assert clock.sleeps == []


def test_zero_wait_still_takes_partners_already_queued() -> None:
    clock = FakeClock()
    policy = BatchPolicy(max_images=8, max_wait_s=0.0)
    got = gather_partners(1, False, lambda c: [("a", 1)] if c == 7 else [], policy, clock=clock, sleep=clock.sleep)
    assert got == ["a"] and clock.sleeps == []


def _gather(advisor: WaitAdvisor, offers: list[list[tuple[str, int]]]) -> tuple[list[str], float]:
    """One gather with ``offers`` as successive claim answers (then nothing); ids and time waited."""
    clock = FakeClock()
    queue = list(offers)
    got = gather_partners(1, False, lambda c: queue.pop(0) if queue else [], POLICY, clock=clock,
                          sleep=clock.sleep, advisor=advisor)  # fmt: skip
    return got, round(clock.now - 100.0, 9)


def test_adaptive_wait_stops_waiting_after_fruitless_waits_but_still_takes_queued_partners() -> None:
    advisor = WaitAdvisor(patience=3, probe_every=4)
    for _ in range(3):
        assert _gather(advisor, []) == ([], POLICY.max_wait_s)
    # Now it starts at once...
    assert _gather(advisor, []) == ([], 0.0)
    # ...but partners already queued are still claimed (and say nothing about waiting).
    assert _gather(advisor, [[("queued", 1)]]) == (["queued"], 0.0)


def test_adaptive_wait_probes_again_and_a_late_partner_restores_waiting() -> None:
    advisor = WaitAdvisor(patience=2, probe_every=3)
    for _ in range(2):
        _gather(advisor, [])
    waits = [_gather(advisor, [])[1] for _ in range(6)]
    assert waits == [0.0, 0.0, POLICY.max_wait_s, 0.0, 0.0, POLICY.max_wait_s]  # every 3rd batch probes
    _gather(advisor, [])
    _gather(advisor, [])
    # The probe finds a partner that arrives during the wait: waiting is back for every batch.
    got, waited = _gather(advisor, [[], [("late", 1)]])
    assert got == ["late"] and waited > 0
    assert [_gather(advisor, [])[1] for _ in range(2)] == [POLICY.max_wait_s] * 2


def test_adaptive_wait_can_be_switched_off() -> None:
    advisor = WaitAdvisor(enabled=False, patience=1)
    assert [_gather(advisor, [])[1] for _ in range(4)] == [POLICY.max_wait_s] * 4
