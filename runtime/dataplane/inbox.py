"""A node's inbox: pushes waiting for its one drain loop, in arrival order.

``asyncio.Queue`` is made for many producers and consumers, bounded or not (a dozen Python
calls per item between ``put_nowait`` and ``get``); a host has one consumer and never bounds
its inbox (the senders' credits do), so this one is a deque and the consumer's one waiter.

>>> import asyncio
>>> async def demo() -> list[int]:
...     inbox: Inbox[int] = Inbox()
...     taken = asyncio.ensure_future(inbox.get())  # waits: nothing is there yet
...     await asyncio.sleep(0)
...     inbox.put_nowait(1)
...     inbox.put_nowait(2)
...     return [await taken, await inbox.get(), inbox.qsize()]
>>> asyncio.run(demo())
[1, 2, 0]
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """An unbounded FIFO for one consumer, with ``asyncio.Queue``'s methods that a host uses."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        #: What the consumer waits on while the inbox is empty.
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        """Add ``item`` last; wake the consumer if it waits."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        """The first item, once there is one (one consumer at a time)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> T:
        """The first item; raises ``asyncio.QueueEmpty`` if there is none."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether no item waits."""
        return not self._items
