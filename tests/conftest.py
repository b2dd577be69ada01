"""Session fixtures: isolated Prefect/Ray/cache settings, generated rasters, shared real data."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Isolate everything a run touches before any of it is imported.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="changemap-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)
os.environ["CHANGEMAP_CACHE"] = str(_SESSION_TMP / "cache")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray socket on loopback
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHANGEMAP_SHARED_DATA", REPO.parent / "shared" / "data"))
LEVIR_1024 = SHARED_DATA / "levir-cd-1024" / "geotiff"
LEVIR_256 = SHARED_DATA / "levir-cd-256"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a ``slow`` test first, then the rest, each group in its own order.

    The suite's two processes take whole modules (``--dist loadfile``, without xdist's reordering
    by test count, which put the long modules of few tests last): the long end-to-end modules start
    first and the many short ones fill in after them, rather than one starting last and running alone.
    """
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module.__name__ not in slow)  # a stable sort: the order within each group stays


def require(path: Path) -> Path:
    """Skip the calling test when a piece of the shared research data is absent."""
    if not path.exists():
        pytest.skip(f"shared research data {path} is absent (it is not shipped in the repository; "
                    "set CHANGEMAP_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def synthetic() -> dict[str, Path]:
    """The seeded test rasters of tests/data/make_data.py."""
    from tests.data.make_data import make_all

    return make_all(_SESSION_TMP / "synthetic", seed=0)


@pytest.fixture(scope="session")
def levir_pair():
    """Paths of LEVIR-CD test_1 (before, after, label) from the shared data."""
    return tuple(require(LEVIR_1024 / f"test_1_{s}.tif") for s in ("A", "B", "label"))


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance on loopback for the session (never `ray stop`)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024**2,
             _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """A throw-away Prefect API for flow tests."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Nobody reads a throw-away API's heartbeats, and stopping the heartbeat thread costs up to a
    # second at the end of every flow run (an archive's pairs are a flow run each). The product's
    # own choice (heartbeats on a real API, none on an ephemeral one) is tested in test_session.py.
    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def prefect_api_env(prefect_harness) -> dict[str, str]:
    """The environment for a child ``changemap``: this session's Prefect API, so it starts none of its own.

    Each ephemeral API a child starts costs it 8-12 s of a 2-core machine (the server's imports
    and database); the ephemeral path itself is tested on its own (tests/pipeline/test_session.py).
    """
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private weights cache for one test."""
    monkeypatch.setenv("CHANGEMAP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API on 127.0.0.1 (in-process), with the endpoint and dummy keys as storage options.

    Nothing goes into the environment: the keys reach fsspec and GDAL only through
    changemap's storage options, which is what the archive tests check.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "AKIACHANGEMAPTEST", "secret": "sEcReT-changemap-not-to-be-logged-42",
               "endpoint_url": f"http://{host}:{port}"}
    yield options
    server.stop()


@pytest.fixture(scope="session")
def status_server():
    """An HTTP server on loopback answering ``GET /<status>/...`` with that status (403, 404, 500, ...).

    Yields its URL, whose ``seen`` lists the paths asked for.
    """
    import http.server
    import threading

    class Url(str):
        """The server's URL; ``seen`` lists the paths asked for, in order."""

        seen: list[str]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url.seen.append(self.path)
            self.send_response(int(self.path.strip("/").split("/")[0]))
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = Url(f"http://127.0.0.1:{server.server_address[1]}")
    url.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield url
    server.shutdown()


@pytest.fixture(scope="session")
def stac_world(s3_server, tmp_path_factory):
    """The Items of :data:`tests.helpers.stac.SCENES` in moto S3: a static catalog, stac-geoparquet, a live STAC API."""
    from tests.helpers.stac import build_world

    world, server = build_world(s3_server, tmp_path_factory.mktemp("stac-world"))
    yield world
    server.stop()


@pytest.fixture
def run_storage(s3_server):
    """The moto endpoint and keys as the run's storage options for s3:// (never the environment).

    Keyed by protocol: flat options would also be handed to fsspec's HTTP filesystem, which
    refuses ``endpoint_url`` (the STAC API's Item URLs are http://).
    """
    from pipeline import storage

    with storage.using(storage.StorageOptions.from_mapping({"s3": s3_server})) as options:
        yield options
