"""A deployment's schedule as a config section, checked when the config is validated.

The section is read by the deployment table (``synthface.flows.deployments``), which
feeds both ``synthface flows serve`` and the generated ``prefect.yaml``; a config kind
opts in by having a top-level field ``schedule`` of this type. A cron expression and a
time zone are checked here, at ``synthface config validate``, rather than when a
deployment is registered: the time zone against the IANA database (``zoneinfo``), the
cron expression with Prefect's own ``CronSchedule`` (the one check the server applies).
"""

from __future__ import annotations

import zoneinfo

from pydantic import Field, field_validator, model_validator

from synthface.pipeline.config import StrictModel


class DeploymentSchedule(StrictModel):
    """At most one of ``cron`` (with ``timezone``) / ``interval_seconds``; none = triggered runs."""

    cron: str | None = None
    interval_seconds: int | None = Field(default=None, ge=1)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as 'UTC' or 'Europe/Paris')"
            ) from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Prefect is a dependency of the package; importing it only for a cron keeps
        # configs without schedules free of its import time.
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"not a valid cron expression: {reason}") from None
        return value

    @model_validator(mode="after")
    def _one(self) -> DeploymentSchedule:
        if self.cron is not None and self.interval_seconds is not None:
            raise ValueError("set cron or interval_seconds, not both")
        return self

    def describe(self) -> str | None:
        """``0 2 * * * (Europe/Paris)``, ``every 3600s (UTC)`` or ``None``."""
        if self.cron:
            return f"{self.cron} ({self.timezone})"
        if self.interval_seconds:
            return f"every {self.interval_seconds}s ({self.timezone})"
        return None
