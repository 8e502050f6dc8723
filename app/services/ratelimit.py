"""Per-API-key rate limits (requests/s and crops/s) with the ``limits`` library, in this process's memory.

Each replica counts its own traffic: behind a load balancer that spreads a key's requests over N replicas, a key may
reach N times its limit (the README says so; a shared store such as Redis would make it exact).
"""

from __future__ import annotations

import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from app.core.errors import PayloadTooLarge, RateLimited

CROP_WINDOW_S = 10  # crops are counted over 10 s, so that a batch larger than one second's allowance can pass


class RateLimiter:
    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def _hit(self, item: RateLimitItem, key: str, cost: int, what: str) -> None:
        if self._limiter.hit(item, key, cost=cost):
            return
        stats = self._limiter.get_window_stats(item, key)
        wait = max(0.05, stats.reset_time - time.time())
        raise RateLimited(f"rate limit of this API key exceeded: {what}; retry after the delay given", retry_after_s=wait)

    def requests(self, key_id: int, per_second: int) -> None:
        """One request of this key; raises RateLimited past ``per_second`` (0: unlimited)."""
        if per_second > 0:
            self._hit(RateLimitItemPerSecond(per_second, 1), f"req:{key_id}", 1, f"{per_second} requests per second")

    def crops(self, key_id: int, per_second: int, count: int) -> None:
        """``count`` crops of this key; raises RateLimited past ``per_second`` on average over 10 s (0: unlimited)."""
        if per_second <= 0 or count <= 0:
            return
        item = RateLimitItemPerSecond(per_second * CROP_WINDOW_S, CROP_WINDOW_S)
        if count > item.amount:
            raise PayloadTooLarge(f"{count} crops exceed this key's allowance of {item.amount} per {CROP_WINDOW_S} s; send smaller batches")
        self._hit(item, f"crops:{key_id}", count, f"{per_second} crops per second")
