"""Adapters to the outside systems: MLflow (tracking and registry), DVC, git, the Prefect server."""
