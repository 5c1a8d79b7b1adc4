"""Per-org lanes: requests for one key that arrive while a batch for that key is in flight are queued and
handed to the handler together as the next batch (up to ``max_batch``, in arrival order).

Infrastructure only (asyncio futures and tasks): what a batch means is the handler's. A hot org costs one
handler call per batch instead of one per request; an org with one request in flight costs nothing extra.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
AnswerT = TypeVar("AnswerT")


@dataclass
class _Waiting(Generic[RequestT, AnswerT]):
    request: RequestT
    future: asyncio.Future[AnswerT]


@dataclass
class _Lane(Generic[RequestT, AnswerT]):
    """The requests of one key waiting for the next batch; ``running`` while a batch is being handled."""

    pending: list[_Waiting[RequestT, AnswerT]] = field(default_factory=list)
    running: bool = False


class Lanes(Generic[RequestT, AnswerT]):
    """``submit(key, request)`` answers with the handler's answer for that request.

    ``handle(key, batch)`` returns one answer per request, in order; if it raises, every request of the
    batch gets the exception and the lane goes on with the next batch.
    """

    def __init__(self, handle: Callable[[str, Sequence[RequestT]], Awaitable[list[AnswerT]]], *,
                 max_batch: int, observe_batch_size: Callable[[int], None] | None = None) -> None:
        self._handle = handle
        self._max_batch = max_batch
        self._observe = observe_batch_size or (lambda _size: None)
        self._lanes: dict[str, _Lane[RequestT, AnswerT]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, request: RequestT) -> AnswerT:
        waiting: _Waiting[RequestT, AnswerT] = _Waiting(request, asyncio.get_running_loop().create_future())
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.pending.append(waiting)
        if not lane.running:
            lane.running = True
            task = asyncio.ensure_future(self._drain(key, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiting.future

    async def _drain(self, key: str, lane: _Lane[RequestT, AnswerT]) -> None:
        try:
            while lane.pending:
                batch, lane.pending = lane.pending[:self._max_batch], lane.pending[self._max_batch:]
                self._observe(len(batch))
                try:
                    answers = await self._handle(key, [item.request for item in batch])
                except Exception as error:  # every waiter gets the failure; the lane goes on
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
                    continue
                for item, answer in zip(batch, answers, strict=True):
                    if not item.future.done():
                        item.future.set_result(answer)
        finally:
            lane.running = False
            if not lane.pending and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
