"""Prometheus metrics, one registry per app instance; series of a deleted tenant are dropped with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_seconds = Histogram(
            "reid_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_size = Histogram(
            "reid_enroll_batch_size", "crops per enrollment request", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        )
        self.images_embedded = Counter("reid_images_embedded_total", "crops run through the encoder", ["path"], registry=r)
        self.embed_seconds = Histogram("reid_embed_seconds", "encoder time per request", ["path"], registry=r)
        self.gallery_size = Gauge("reid_gallery_items", "items in a tenant's gallery", ["tenant"], registry=r)
        self.releases = Counter("reid_privacy_releases_total", "noisy records released", ["tenant", "mechanism"], registry=r)
        self.subject_mu_squared = Gauge(
            "reid_privacy_subject_mu_squared_max", "largest composed mu^2 of any subject of a tenant", ["tenant"], registry=r
        )
        self.purged = Counter("reid_retention_purged_total", "items purged by retention", ["tenant"], registry=r)

    def forget_tenant(self, tenant_id: int) -> None:
        """Drop every series labelled with this tenant (it was deleted), in every metric that has a tenant label."""
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase) and "tenant" in metric._labelnames:
                metric.remove_by_labels({"tenant": str(tenant_id)})


def serve_metrics(address: str, registry: CollectorRegistry) -> tuple[Any, Any]:
    """Start a plain HTTP listener for ``registry`` on ``host:port`` (its own thread); returns (server, thread)."""
    host, port = address.rsplit(":", 1)
    return start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)  # type: ignore[no-any-return]
