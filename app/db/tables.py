"""SQL tables (SQLAlchemy 2.0). SQL is the source of truth; FAISS ids are gallery_items.id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TRACK_BUDGET_PREFIX = "track:"  # a subject_budgets key: this + a track_ref, for a track without a subject


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware instant stored as UTC on every backend.

    SQLite has no time zones: SQLAlchemy writes an aware value's wall-clock and drops its offset (``08:00+02:00`` was
    stored as ``08:00`` and read back as 08:00Z). Converting to UTC before binding makes both backends store the same
    instant; reading attaches UTC to SQLite's naive values. Comparisons against these columns (filters) are converted
    the same way, because SQLAlchemy binds literals through the column's type.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            return value  # naive values inside the service are UTC already (the API refuses naive input)
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = ({"sqlite_autoincrement": True},)  # never reuse a deleted tenant's id (the audit log names tenants by id)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Per-key rate limits of this tenant's keys; NULL: the service defaults (REID_RATE_*), 0: unlimited.
    requests_per_second: Mapped[int | None] = mapped_column(Integer, nullable=True)
    crops_per_second: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class PrivacyPolicyRow(Base):
    """A tenant's current privacy policy; ``epsilon`` NULL means no noise (ε = ∞, explicit)."""

    __tablename__ = "privacy_policies"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    delta: Mapped[float] = mapped_column(Float)
    clip_norm: Mapped[float] = mapped_column(Float, default=1.0)
    subject_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    subject_delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Crops of one track sent in one enrollment are released as one noisy mean (each crop keeps the per-record (ε, δ)).
    pool_tracks: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = ({"sqlite_autoincrement": True},)  # never reuse a deleted key's id

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class GalleryItem(Base):
    """One enrolled crop: only its noisy feature, the noise it was released with, and metadata."""

    __tablename__ = "gallery_items"
    __table_args__ = (
        Index("ix_gallery_tenant_subject", "tenant_id", "subject_ref"),
        Index("ix_gallery_tenant_captured", "tenant_id", "captured_at"),
        Index("ix_gallery_tenant_created", "tenant_id", "created_at"),
        Index("ix_gallery_tenant_release", "tenant_id", "release_id"),
        {"sqlite_autoincrement": True},  # never reuse an erased item's id
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    camera_id: Mapped[str] = mapped_column(String(200))
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime())
    subject_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    track_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    feature: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, noisy
    mechanism: Mapped[str] = mapped_column(String(50))
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL: ε = ∞
    delta: Mapped[float] = mapped_column(Float)
    sensitivity: Mapped[float] = mapped_column(Float)
    sigma: Mapped[float] = mapped_column(Float)
    clip_norm: Mapped[float] = mapped_column(Float)
    noise_library: Mapped[str] = mapped_column(String(200))
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A pooled release (the noisy mean of ``pooled`` crops of one track) is stored on each of its items; ``release_id``
    # is the first item's id, shared by all of them (NULL for a record released alone). Erasing one erases them all.
    pooled: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    release_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class SubjectBudget(Base):
    """Privacy spent on one subject/track reference: μ² of μ-GDP adds up over releases."""

    __tablename__ = "subject_budgets"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_ref"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    subject_ref: Mapped[str] = mapped_column(String(206))  # a subject_ref, or TRACK_BUDGET_PREFIX + a track_ref (both up to 200)
    mu_squared: Mapped[float] = mapped_column(Float, default=0.0)
    releases: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class GalleryHead(Base):
    """Per tenant: the last change-log sequence number and the encoder its gallery was enrolled with.

    Written only inside the tenant's write lock (PostgreSQL advisory lock), in the same transaction as the changes, so a
    follower that sees ``seq`` also sees every change up to it. ``encoder_sha256``/``encoder_dim`` are NULL while the
    gallery is empty: the next enrollment records the serving encoder.
    """

    __tablename__ = "gallery_heads"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    pruned_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # changes up to here were pruned from the log
    encoder_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    encoder_dim: Mapped[int | None] = mapped_column(Integer, nullable=True)


class GalleryChange(Base):
    """The ordered change log every replica's FAISS index follows: ``op`` "add" or "del" of one item."""

    __tablename__ = "gallery_changes"
    __table_args__ = (Index("ix_gallery_changes_tenant_seq", "tenant_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(3))
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)


class ServiceJob(Base):
    """Work that must happen once across replicas (retention): when it last ran."""

    __tablename__ = "service_jobs"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(UtcDateTime())
