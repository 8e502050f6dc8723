"""Typed Python client for the Re-ID gallery service (sync and async, on httpx; no torch needed).

>>> from reid_client import ReidClient
>>> with ReidClient("http://127.0.0.1:8000", api_key="rk_…") as client:
...     result = client.search("query.jpg", k=5)
"""

from reid_client import errors, models
from reid_client._calls import UNSET, Call
from reid_client.client import AsyncReidClient, ReidClient, RetryPolicy
from reid_client.errors import ReidError

__all__ = ["UNSET", "AsyncReidClient", "Call", "ReidClient", "ReidError", "RetryPolicy", "errors", "models"]
