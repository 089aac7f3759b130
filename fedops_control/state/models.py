"""Database tables of the control service."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fedops_common.convert import utcnow


class Base(DeclarativeBase):
    """Declarative base of all tables."""


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    app: Mapped[dict[str, Any]] = mapped_column(JSON)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"match_labels": {...}, "count": N}: runs started without clients select by it (None: the selected ids)
    label_selection: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True,
                                                                 default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ClientRow(Base):
    __tablename__ = "clients"
    # Lists are newest registration first, paged by (registered_at, id): see fedops_control/clients/listing.py.
    __table_args__ = (Index("ix_clients_registered_at_id", "registered_at", "id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_path: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[int] = mapped_column(Integer)
    state_reason: Mapped[str] = mapped_column(Text, default="")
    last_heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    current_run_id: Mapped[str] = mapped_column(String(64), default="")
    registered_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    metrics_address: Mapped[str] = mapped_column(String(128), default="")
    supernode_public_key: Mapped[str] = mapped_column(Text, default="")
    name: Mapped[str] = mapped_column(String(200), default="")  # the enrolment token's name
    # The labels the agent's config gave at its last registration: applied again only when they change.
    agent_labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    last_selected_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # by a run


class ClientLabelRow(Base):
    """One label of a client. Indexed by (key, value): a selection finds its clients without a scan."""

    __tablename__ = "client_labels"
    __table_args__ = (Index("ix_client_labels_key_value", "key", "value"),)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(317), primary_key=True)   # fedops_common.labels.MAX_KEY_CHARS
    value: Mapped[str] = mapped_column(String(63), default="")
    source: Mapped[str] = mapped_column(String(16))   # fedops_control.clients.labels.LabelSource


class MembershipRow(Base):
    __tablename__ = "memberships"
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)
    enrolled: Mapped[bool] = mapped_column(Boolean, default=True)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    state: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    client_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    total_rounds: Mapped[int] = mapped_column(Integer, default=0)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    run_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    node_configs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config_hash: Mapped[str] = mapped_column(String(64), default="")
    flower_run_id: Mapped[str] = mapped_column(String(32), default="")
    superlink_address: Mapped[str] = mapped_column(String(128), default="")
    resumed_from_model_id: Mapped[str] = mapped_column(String(64), default="")
    stop_requested: Mapped[str] = mapped_column(String(16), default="")
    initial_central_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    node_clients: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    api_style: Mapped[int] = mapped_column(Integer, default=0)          # common_pb2.ApiStyle
    completed_rounds: Mapped[int] = mapped_column(Integer, default=0)   # round 0 (initialisation) not counted
    model_note: Mapped[str] = mapped_column(Text, default="")           # why the registry holds no model
    app_decides: Mapped[list[str]] = mapped_column(JSON, default=list)  # strategy settings the app hard-codes
    # How client_ids were chosen: {"ids": [...]} or {"labels": {"match_labels": {...}, "count": N}}
    selection: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class RoundRow(Base):
    __tablename__ = "rounds"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), default="waiting")
    phase_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    phase_timeout_s: Mapped[float] = mapped_column(Float, default=0.0)
    phase_expected: Mapped[list[str]] = mapped_column(JSON, default=list)
    phase_received: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    selected: Mapped[list[str]] = mapped_column(JSON, default=list)
    responded: Mapped[list[str]] = mapped_column(JSON, default=list)
    failed: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Metrics: name -> a number or a list of numbers (fedops_common.metricvalues).
    train_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evaluate_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    central_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_version_id: Mapped[str] = mapped_column(String(64), default="")


class ClientResultRow(Base):
    __tablename__ = "client_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(String(64), default="")
    node_id: Mapped[str] = mapped_column(String(24), default="")  # uint64 overflows BIGINT
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str] = mapped_column(Text, default="")


class EventRow(Base):
    __tablename__ = "run_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    round: Mapped[int] = mapped_column(Integer, default=0)
    client_id: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelRow(Base):
    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    participants: Mapped[list[str]] = mapped_column(JSON, default=list)
    config_hash: Mapped[str] = mapped_column(String(64), default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16), default="npz")
    path: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DataStatusRow(Base):
    """One data status report of a client: aggregates only, never rows."""

    __tablename__ = "data_status"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    reported_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CredentialRow(Base):
    """An API token, enrolment token, agent credential or run token; only the secret's hash is kept."""

    __tablename__ = "credentials"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[int] = mapped_column(Integer)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(64), default="", index=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    used_by: Mapped[str] = mapped_column(String(64), default="")  # the client that redeemed an enrolment token
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # enrolment: the labels the client gets
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
