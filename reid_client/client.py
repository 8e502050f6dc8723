"""Sync and async clients on httpx: every integrator and operator endpoint, typed errors, retries honouring Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx

from reid_client import _calls as calls
from reid_client import models
from reid_client._calls import UNSET, Call, GroupBy, ImageInput, Timestamp
from reid_client.errors import ReidError, TransportError, error_from_response

T = TypeVar("T")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for 429/503 answers that say when to come back, and for transport errors on idempotent calls.

    The wait is the service's ``details.retry_after_ms`` (precise) or its ``Retry-After`` header (whole seconds or an
    HTTP date); without either (transport errors) it is exponential backoff with full jitter. Every wait is capped at
    ``max_wait`` seconds; after ``max_retries`` retries the last error is raised.
    """

    max_retries: int = 5
    backoff: float = 0.5
    max_wait: float = 30.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_wait, max(0.0, retry_after) + random.uniform(0, 0.1))
        return min(self.max_wait, random.uniform(0, self.backoff * 2**attempt))


def retry_after_seconds(response: httpx.Response, body: Any) -> float | None:
    """When the service asked to come back: details.retry_after_ms, else the Retry-After header."""
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if isinstance(details, dict) and isinstance(details.get("retry_after_ms"), int | float):
        return float(details["retry_after_ms"]) / 1000
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    try:
        return float(header)
    except ValueError:
        when = email.utils.parsedate_to_datetime(header) if header else None
        return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when is not None else None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class _Base:
    def __init__(self, base_url: str, *, api_key: str | None, admin_key: str | None, retry: RetryPolicy | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.admin_key = admin_key
        self.retry = retry or RetryPolicy()

    def _headers(self, call: Call[Any]) -> dict[str, str]:
        if call.auth == "api":
            if not self.api_key:
                raise ValueError("this call needs an integrator key: pass api_key=")
            return {"X-API-Key": self.api_key}
        if call.auth == "admin":
            if not self.admin_key:
                raise ValueError("this call needs the operator key: pass admin_key=")
            return {"X-Admin-Key": self.admin_key}
        return {}

    def _request_kwargs(self, call: Call[Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self._headers(call), "params": call.params or None}
        if call.json is not None:
            kwargs["json"] = call.json
        if call.data is not None:
            kwargs["data"] = call.data
        if call.files is not None:
            kwargs["files"] = call.files
        return kwargs

    def _outcome(self, call: Call[Any], response: httpx.Response) -> tuple[Any, ReidError | None, bool]:
        """(result, error, retryable) for one answer."""
        if response.is_success:
            return call.parse(response), None, False
        body = _json_or_none(response)
        retry_after = retry_after_seconds(response, body)
        error = error_from_response(response.status_code, body, retry_after)
        return None, error, response.status_code in (429, 503) and retry_after is not None

    def _transport_error(self, call: Call[Any], exc: httpx.TransportError) -> tuple[ReidError, bool]:
        return TransportError(f"{type(exc).__name__}: {exc}", status=0), call.method in IDEMPOTENT


class ReidClient(_Base):
    """Synchronous client. ``with ReidClient(url, api_key=…) as client: client.search("query.jpg")``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, admin_key=admin_key, retry=retry)
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> ReidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, call: Call[T]) -> T:
        """Send ``call``, retrying as the policy allows; the parsed answer or a typed ``ReidError``."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **self._request_kwargs(call))
            except httpx.TransportError as exc:
                error, retryable = self._transport_error(call, exc)
                retry_after = None
            else:
                result, maybe_error, retryable = self._outcome(call, response)
                if maybe_error is None:
                    return result  # type: ignore[return-value]
                error, retry_after = maybe_error, maybe_error.retry_after
            if not retryable or attempt >= self.retry.max_retries:
                raise error
            time.sleep(self.retry.wait(attempt, retry_after))
            attempt += 1

    # integrator
    def enroll(self, images: Sequence[ImageInput], metadata: Sequence[Mapping[str, Any]]) -> models.Enrolled:
        return self.run(calls.enroll(images, metadata))

    def search(
        self,
        image: ImageInput | list[ImageInput],
        *,
        k: int = 10,
        group_by: GroupBy | None = None,
        camera_ids: Sequence[str] | None = None,
        captured_from: Timestamp | None = None,
        captured_to: Timestamp | None = None,
        min_score: float | None = None,
        subject_ref: str | None = None,
    ) -> models.SearchResult | models.GroupedSearchResult:
        """Top-k crops (or, with ``group_by``, tracks/subjects) most like ``image`` (a list: one person's query track); filters narrow the gallery."""
        return self.run(
            calls.search(
                image,
                k=k,
                group_by=group_by,
                camera_ids=camera_ids,
                captured_from=captured_from,
                captured_to=captured_to,
                min_score=min_score,
                subject_ref=subject_ref,
            )
        )

    def list_items(
        self,
        *,
        limit: int = 100,
        after_id: int = 0,
        camera_id: str | None = None,
        subject_ref: str | None = None,
        captured_from: Timestamp | None = None,
        captured_to: Timestamp | None = None,
    ) -> models.ItemPage:
        return self.run(
            calls.list_items(
                limit=limit,
                after_id=after_id,
                camera_id=camera_id,
                subject_ref=subject_ref,
                captured_from=captured_from,
                captured_to=captured_to,
            )
        )

    def iter_items(self, *, page_size: int = 1000, **filters: Any) -> Iterator[models.Item]:
        after = 0
        while True:
            page = self.list_items(limit=page_size, after_id=after, **filters)
            yield from page.items
            if page.next_after_id is None:
                return
            after = page.next_after_id

    def get_item(self, item_id: int) -> models.Item:
        return self.run(calls.get_item(item_id))

    def delete_item(self, item_id: int) -> int:
        return self.run(calls.delete_item(item_id))

    def erase(self, *, subject_ref: str | None = None, before: Timestamp | None = None) -> int:
        return self.run(calls.erase(subject_ref=subject_ref, before=before))

    # operator
    def create_tenant(self, name: str, *, retention_days: int | None = None) -> models.Tenant:
        return self.run(calls.create_tenant(name, retention_days=retention_days))

    def list_tenants(self) -> list[models.Tenant]:
        return self.run(calls.list_tenants())

    def get_tenant(self, tenant_id: int) -> models.Tenant:
        return self.run(calls.get_tenant(tenant_id))

    def update_tenant(self, tenant_id: int, *, name: str = UNSET, retention_days: int | None = UNSET) -> models.Tenant:
        return self.run(calls.update_tenant(tenant_id, name=name, retention_days=retention_days))

    def delete_tenant(self, tenant_id: int) -> models.TenantDeleted:
        return self.run(calls.delete_tenant(tenant_id))

    def issue_key(self, tenant_id: int, *, label: str | None = None) -> models.IssuedKey:
        return self.run(calls.issue_key(tenant_id, label=label))

    def list_keys(self, tenant_id: int) -> list[models.Key]:
        return self.run(calls.list_keys(tenant_id))

    def revoke_key(self, tenant_id: int, key_id: int) -> models.Key:
        return self.run(calls.revoke_key(tenant_id, key_id))

    def get_privacy(self, tenant_id: int) -> models.Policy:
        return self.run(calls.get_privacy(tenant_id))

    def set_privacy(
        self,
        tenant_id: int,
        *,
        epsilon: float | Literal["inf"],
        delta: float = 1e-5,
        subject_epsilon: float | None = None,
        subject_delta: float | None = None,
        pool_tracks: bool | None = None,
    ) -> models.Policy:
        """``pool_tracks``: a track's crops sent in one enrollment are released as one noisy mean (README, "The privacy
        model in plain words"); None keeps the tenant's setting."""
        return self.run(
            calls.set_privacy(
                tenant_id, epsilon=epsilon, delta=delta, subject_epsilon=subject_epsilon, subject_delta=subject_delta, pool_tracks=pool_tracks
            )
        )

    def tradeoff(self, tenant_id: int, epsilons: Sequence[float] | None = None) -> models.Tradeoff:
        return self.run(calls.tradeoff(tenant_id, epsilons))

    def audit(self, *, tenant_id: int | None = None, limit: int = 100, before_id: int | None = None) -> list[models.AuditEntry]:
        return self.run(calls.audit(tenant_id=tenant_id, limit=limit, before_id=before_id))

    # operations
    def health(self) -> bool:
        return self.run(calls.health())

    def ready(self) -> models.Ready:
        return self.run(calls.ready())

    def model(self) -> models.ModelInfo:
        return self.run(calls.model())

    def metrics(self) -> str:
        return self.run(calls.metrics())


class AsyncReidClient(_Base):
    """Asynchronous client, the same methods as ``ReidClient`` as coroutines."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, admin_key=admin_key, retry=retry)
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncReidClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **self._request_kwargs(call))
            except httpx.TransportError as exc:
                error, retryable = self._transport_error(call, exc)
                retry_after = None
            else:
                result, maybe_error, retryable = self._outcome(call, response)
                if maybe_error is None:
                    return result  # type: ignore[return-value]
                error, retry_after = maybe_error, maybe_error.retry_after
            if not retryable or attempt >= self.retry.max_retries:
                raise error
            await asyncio.sleep(self.retry.wait(attempt, retry_after))
            attempt += 1

    async def enroll(self, images: Sequence[ImageInput], metadata: Sequence[Mapping[str, Any]]) -> models.Enrolled:
        return await self.run(calls.enroll(images, metadata))

    async def search(
        self,
        image: ImageInput | list[ImageInput],
        *,
        k: int = 10,
        group_by: GroupBy | None = None,
        camera_ids: Sequence[str] | None = None,
        captured_from: Timestamp | None = None,
        captured_to: Timestamp | None = None,
        min_score: float | None = None,
        subject_ref: str | None = None,
    ) -> models.SearchResult | models.GroupedSearchResult:
        """Top-k crops (or, with ``group_by``, tracks/subjects) most like ``image`` (a list: one person's query track); filters narrow the gallery."""
        return await self.run(
            calls.search(
                image,
                k=k,
                group_by=group_by,
                camera_ids=camera_ids,
                captured_from=captured_from,
                captured_to=captured_to,
                min_score=min_score,
                subject_ref=subject_ref,
            )
        )

    async def list_items(
        self,
        *,
        limit: int = 100,
        after_id: int = 0,
        camera_id: str | None = None,
        subject_ref: str | None = None,
        captured_from: Timestamp | None = None,
        captured_to: Timestamp | None = None,
    ) -> models.ItemPage:
        return await self.run(
            calls.list_items(
                limit=limit,
                after_id=after_id,
                camera_id=camera_id,
                subject_ref=subject_ref,
                captured_from=captured_from,
                captured_to=captured_to,
            )
        )

    async def iter_items(self, *, page_size: int = 1000, **filters: Any) -> AsyncIterator[models.Item]:
        after = 0
        while True:
            page = await self.list_items(limit=page_size, after_id=after, **filters)
            for item in page.items:
                yield item
            if page.next_after_id is None:
                return
            after = page.next_after_id

    async def get_item(self, item_id: int) -> models.Item:
        return await self.run(calls.get_item(item_id))

    async def delete_item(self, item_id: int) -> int:
        return await self.run(calls.delete_item(item_id))

    async def erase(self, *, subject_ref: str | None = None, before: Timestamp | None = None) -> int:
        return await self.run(calls.erase(subject_ref=subject_ref, before=before))

    async def create_tenant(self, name: str, *, retention_days: int | None = None) -> models.Tenant:
        return await self.run(calls.create_tenant(name, retention_days=retention_days))

    async def list_tenants(self) -> list[models.Tenant]:
        return await self.run(calls.list_tenants())

    async def get_tenant(self, tenant_id: int) -> models.Tenant:
        return await self.run(calls.get_tenant(tenant_id))

    async def update_tenant(self, tenant_id: int, *, name: str = UNSET, retention_days: int | None = UNSET) -> models.Tenant:
        return await self.run(calls.update_tenant(tenant_id, name=name, retention_days=retention_days))

    async def delete_tenant(self, tenant_id: int) -> models.TenantDeleted:
        return await self.run(calls.delete_tenant(tenant_id))

    async def issue_key(self, tenant_id: int, *, label: str | None = None) -> models.IssuedKey:
        return await self.run(calls.issue_key(tenant_id, label=label))

    async def list_keys(self, tenant_id: int) -> list[models.Key]:
        return await self.run(calls.list_keys(tenant_id))

    async def revoke_key(self, tenant_id: int, key_id: int) -> models.Key:
        return await self.run(calls.revoke_key(tenant_id, key_id))

    async def get_privacy(self, tenant_id: int) -> models.Policy:
        return await self.run(calls.get_privacy(tenant_id))

    async def set_privacy(
        self,
        tenant_id: int,
        *,
        epsilon: float | Literal["inf"],
        delta: float = 1e-5,
        subject_epsilon: float | None = None,
        subject_delta: float | None = None,
        pool_tracks: bool | None = None,
    ) -> models.Policy:
        return await self.run(
            calls.set_privacy(
                tenant_id, epsilon=epsilon, delta=delta, subject_epsilon=subject_epsilon, subject_delta=subject_delta, pool_tracks=pool_tracks
            )
        )

    async def tradeoff(self, tenant_id: int, epsilons: Sequence[float] | None = None) -> models.Tradeoff:
        return await self.run(calls.tradeoff(tenant_id, epsilons))

    async def audit(self, *, tenant_id: int | None = None, limit: int = 100, before_id: int | None = None) -> list[models.AuditEntry]:
        return await self.run(calls.audit(tenant_id=tenant_id, limit=limit, before_id=before_id))

    async def health(self) -> bool:
        return await self.run(calls.health())

    async def ready(self) -> models.Ready:
        return await self.run(calls.ready())

    async def model(self) -> models.ModelInfo:
        return await self.run(calls.model())

    async def metrics(self) -> str:
        return await self.run(calls.metrics())
