"""The pipelined group commit's scheduling, with a scriptable flush: what is submitted while a group is being
written forms the next group, a failed group fails only its own items, and order is kept."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.ingest.service_layer.quota_pipeline import PipelinedWriter


class ScriptedFlush:
    """Records each group; ``gate`` holds a flush in flight until the test releases it; ``fail`` raises once."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.groups.append(list(items))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return [f"{item}:ok" for item in items]


async def test_everything_submitted_in_one_loop_turn_is_written_in_one_group() -> None:
    flush = ScriptedFlush()
    writer: PipelinedWriter[str, str] = PipelinedWriter(flush)

    results = await asyncio.gather(*(writer.submit(f"org{i}") for i in range(5)))

    assert results == [f"org{i}:ok" for i in range(5)]
    assert flush.groups == [[f"org{i}" for i in range(5)]]


async def test_items_submitted_while_a_group_is_in_flight_form_the_next_group() -> None:
    flush = ScriptedFlush()
    gate = flush.gate = asyncio.Event()
    writer: PipelinedWriter[str, str] = PipelinedWriter(flush)
    first = writer.submit("a")
    await asyncio.sleep(0)  # the writer took "a" and waits on the gate
    later = [writer.submit("b"), writer.submit("c")]
    await asyncio.sleep(0)
    assert flush.groups == [["a"]]

    gate.set()

    assert await first == "a:ok"
    assert await asyncio.gather(*later) == ["b:ok", "c:ok"]
    assert flush.groups == [["a"], ["b", "c"]]


async def test_a_failed_group_fails_its_own_items_and_the_next_group_is_still_written() -> None:
    flush = ScriptedFlush()
    gate = flush.gate = asyncio.Event()
    flush.fail = ConnectionError("lost")
    writer: PipelinedWriter[str, str] = PipelinedWriter(flush)
    doomed = writer.submit("a")
    await asyncio.sleep(0)
    fine = writer.submit("b")
    gate.set()

    with pytest.raises(ConnectionError):
        await doomed
    assert await fine == "b:ok"
    assert flush.groups == [["a"], ["b"]]


async def test_groups_are_capped_and_keep_submission_order() -> None:
    flush = ScriptedFlush()
    writer: PipelinedWriter[str, str] = PipelinedWriter(flush, max_group=2)

    assert await asyncio.gather(*(writer.submit(str(i)) for i in range(5))) == [f"{i}:ok" for i in range(5)]
    assert flush.groups == [["0", "1"], ["2", "3"], ["4"]]


async def test_a_closed_writer_refuses_new_items_and_cancels_queued_ones() -> None:
    flush = ScriptedFlush()
    flush.gate = asyncio.Event()
    writer: PipelinedWriter[str, str] = PipelinedWriter(flush)
    in_flight = writer.submit("in-flight")
    await asyncio.sleep(0)
    queued = writer.submit("queued")

    await writer.aclose()

    assert in_flight.cancelled() and queued.cancelled()
    with pytest.raises(RuntimeError):
        writer.submit("late")
