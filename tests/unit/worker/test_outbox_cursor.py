"""The outbox relay's cursor: which id ranges a round reads (shared/adapters/kafka/outbox_cursor.py)."""

from __future__ import annotations

import pytest

from shared.adapters.kafka.outbox_cursor import TOP, Gap, OutboxCursor

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_cursor_reads_from_the_bottom_then_from_above_what_it_published() -> None:
    cursor = OutboxCursor(clock=Clock())
    assert cursor.ranges() == ([1], [TOP])
    cursor.published([1, 2, 3], complete=True, xmin=100, xmax=100)
    assert cursor.ranges() == ([4], [TOP]) and cursor.gaps == []


def test_ids_skipped_below_the_highest_published_are_read_again_until_their_transactions_ended() -> None:
    cursor = OutboxCursor(clock=Clock())
    cursor.published([1, 2], complete=True, xmin=100, xmax=100)
    # 3-5 belong to a transaction still running at this snapshot (xmin 90 .. xmax 105)
    cursor.published([6, 7], complete=True, xmin=90, xmax=105)
    assert cursor.gaps == [Gap(3, 5, 105)]
    assert cursor.ranges() == ([3, 8], [5, TOP])
    cursor.published([], complete=True, xmin=104, xmax=110)  # a transaction older than 105 still runs
    assert cursor.gaps == [Gap(3, 5, 105)]
    cursor.published([], complete=True, xmin=105, xmax=110)  # every one of them has ended before this read
    assert cursor.gaps == [] and cursor.ranges() == ([8], [TOP])


def test_a_round_cut_short_by_the_batch_forgets_no_gap() -> None:
    cursor = OutboxCursor(clock=Clock())
    cursor.published([1, 3], complete=True, xmin=100, xmax=101)
    cursor.published([4, 5], complete=False, xmin=200, xmax=200)  # rows left unread above 5 or in the gap
    assert cursor.gaps == [Gap(2, 2, 101)]


def test_rows_published_from_a_gap_are_taken_out_of_it() -> None:
    cursor = OutboxCursor(clock=Clock())
    cursor.published([10], complete=True, xmin=100, xmax=100)
    assert cursor.gaps == [Gap(1, 9, 100)]
    cursor.published([3, 4, 9, 11], complete=False, xmin=95, xmax=120)
    assert cursor.gaps == [Gap(1, 2, 100), Gap(5, 8, 100)]
    assert cursor.after == 11
    cursor.published([1, 2, 5, 6, 7, 8], complete=True, xmin=95, xmax=120)
    assert cursor.gaps == []


def test_gap_rows_come_first_in_the_ranges_so_a_round_publishes_in_id_order() -> None:
    cursor = OutboxCursor(clock=Clock())
    cursor.published([2, 5, 9], complete=True, xmin=50, xmax=60)
    los, his = cursor.ranges()
    assert list(zip(los, his, strict=True)) == [(1, 1), (3, 4), (6, 8), (10, TOP)]


def test_too_many_gaps_merge_the_closest_neighbours_keeping_the_later_tag() -> None:
    cursor = OutboxCursor(clock=Clock(), max_gaps=2)
    cursor.published([2, 4], complete=True, xmin=10, xmax=11)  # gaps 1, 3
    cursor.published([10], complete=True, xmin=5, xmax=12)  # gap 5-9
    assert cursor.gaps == [Gap(1, 3, 11), Gap(5, 9, 12)]


def test_the_cursor_reads_from_the_bottom_again_every_rescan_period() -> None:
    clock = Clock()
    cursor = OutboxCursor(clock=clock, rescan_s=30)
    cursor.published([5, 6], complete=True, xmin=10, xmax=11)
    clock.now = 29.9
    assert cursor.ranges() == ([1, 7], [4, TOP])
    clock.now = 30.0
    assert cursor.ranges() == ([1], [TOP]) and cursor.gaps == []
    assert cursor.ranges() == ([1], [TOP])
