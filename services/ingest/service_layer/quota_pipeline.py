"""The pipelined group commit: one writer task per process commits everything submitted since its last
statement, for every org, in one call of ``flush``; submissions go on while that call is in flight.

Infrastructure only (asyncio futures and one task): what an item is and how a group is written is the
``flush`` given (report credits under leases today; the same shape fits spend authorisations, whose items
are micro-dollars). ``submit(item)`` answers with ``flush``'s result for that item, once the group holding
it is committed; if ``flush`` raises, every item of that group gets the exception (nothing of the group was
written: ``flush`` must be one statement or one transaction) and the writer goes on with the next group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

MAX_GROUP = 2000


@dataclass(slots=True)
class _Waiting(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]


class PipelinedWriter(Generic[ItemT, ResultT]):
    """``submit`` items; one task writes them in groups through ``flush`` (see the module docstring).

    ``flush(items)`` returns one result per item, in order.
    """

    def __init__(self, flush: Callable[[Sequence[ItemT]], Awaitable[list[ResultT]]], *,
                 max_group: int = MAX_GROUP, observe_group_size: Callable[[int], None] | None = None) -> None:
        self._flush = flush
        self._max_group = max_group
        self._observe = observe_group_size or (lambda _size: None)
        self._pending: list[_Waiting[ItemT, ResultT]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue ``item`` for the next group; the future resolves once that group is written."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append(_Waiting(item, future))
        if self._writer is None:
            # NOTE: started in the submitting task's turn, the writer runs on the next loop iteration, so
            # every item submitted in this turn (all orgs) goes in its first group
            self._writer = asyncio.ensure_future(self._write())
        return future

    async def _write(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending[:self._max_group], self._pending[self._max_group:]
                self._observe(len(group))
                try:
                    results = await self._flush([waiting.item for waiting in group])
                except Exception as error:  # nothing of the group was written: each caller decides again
                    for waiting in group:
                        if not waiting.future.done():
                            waiting.future.set_exception(error)
                    continue
                except asyncio.CancelledError:  # closing: the group's callers get no answer
                    for waiting in group:
                        waiting.future.cancel()
                    raise
                for waiting, result in zip(group, results, strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result(result)
        finally:
            self._writer = None

    async def aclose(self) -> None:
        self._closed = True
        for waiting in self._pending:
            waiting.future.cancel()
        self._pending = []
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
