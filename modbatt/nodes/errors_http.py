"""One mapping from a rejection reason to an HTTP status, used by every HTTP face."""

from __future__ import annotations

from ..errors import Reason

_STATUS = {
    Reason.MALFORMED: 400,
    Reason.UNKNOWN_FIELD: 400,
    Reason.INVALID_POINT: 400,
    Reason.HASH_MISMATCH: 400,
    Reason.BAD_MAC: 400,
    Reason.OVERSIZED: 413,
    Reason.UNAUTHORIZED: 401,
    Reason.BAD_SIGNATURE: 403,
    Reason.WRONG_PEER: 403,
    Reason.STALE: 401,
    Reason.EXPIRED: 401,
    Reason.NOT_YET_VALID: 401,
    Reason.REPLAY: 409,
    Reason.DUPLICATE: 409,
    Reason.UNKNOWN_BINDING: 404,
    Reason.RATE_LIMITED: 429,
}


def http_status(reason: Reason) -> int:
    """The 4xx status an HTTP API answers for a rejection with this reason."""
    return _STATUS.get(reason, 422)
