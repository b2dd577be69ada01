"""Prefect flows over the plain functions of :mod:`pipeline`."""
import os

# Prefect's server sends anonymous telemetry by default; a pipeline run must not
# reach out to the network on its own.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
