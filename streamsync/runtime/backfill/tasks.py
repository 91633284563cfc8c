"""Run coroutines at once and surface the first failure itself, not an ExceptionGroup."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_or_first_error(jobs: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every job's result, in order; on the first failure cancel the others (so none is left
    talking to a closed session) and raise that error itself, not an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def all_or_first_error(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run every job; on the first failure cancel the others and raise that error itself
    (not an ExceptionGroup), so callers see e.g. the RetriableError that stopped a window."""
    await gather_or_first_error(jobs)
