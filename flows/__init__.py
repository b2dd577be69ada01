"""Prefect flows over the plain functions of :mod:`pipeline`."""
import os

# Prefect's server sends anonymous telemetry by default; a pipeline run must not
# reach out to the network on its own.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's ephemeral API (no PREFECT_API_URL) must start within 20 s by default, which a
# busy 2-core machine misses (measured: `changemap run` failed with "Timed out while
# attempting to connect to ephemeral Prefect API server" next to three busy processes).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
