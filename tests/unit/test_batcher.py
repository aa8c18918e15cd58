"""The batching policy, on a fake clock: capacity, the wait bound, exact requests."""

from __future__ import annotations

from worker.batcher import BatchPolicy, gather_partners


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
