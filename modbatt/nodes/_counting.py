"""Failure counters: every classified rejection a node sees is counted by reason (DESIGN §8)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import VerificationError

F = TypeVar("F", bound=Callable[..., Any])


def counts_rejections(method: F) -> F:
    """Count a ``VerificationError`` raised by ``method`` in ``self.rejections``, then re-raise."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            raise

    return wrapper  # type: ignore[return-value]
