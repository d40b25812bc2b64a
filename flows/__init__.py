"""Prefect flows and deployments only: they order work that lives in the other packages."""
