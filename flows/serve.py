"""Serve the deployment table with one long-lived process (``prefect.serve``).

The rows come from ``synthface.flows.deployments`` — the same rows that
``synthface flows deployments --write-prefect-yaml`` writes to ``prefect.yaml`` — so
``flows serve`` and ``prefect deploy --all`` register the same deployments. A run
triggered with ``prefect deployment run generate-synthetic/<name> --param identities=100``
is validated against the flow's parameter schema by the server
(``enforce_parameter_schema``), so a bad value fails at once and names the field.
"""

from __future__ import annotations

from synthface.flows.deployments import build_table, runner_deployment


def serve_deployments(
    configs: list[str] | None = None,
    *,
    flows: list[str] | None = None,
    schedules: bool = True,
    limit: int | None = None,
) -> None:
    """Register the table's deployments and execute their runs until interrupted."""
    from prefect import serve

    rows = build_table(configs, flows=flows)
    serve(*[runner_deployment(r, schedules=schedules) for r in rows], limit=limit)
