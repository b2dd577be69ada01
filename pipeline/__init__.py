"""changemap's pipeline: plain functions for each step, I/O modules, the CLI."""
import os
import sys

# A local Ray listens on the machine's network address unless this variable is set before `ray` is
# imported (its constants are read at import time). A local run keeps Ray on 127.0.0.1; only an
# explicit cluster address (RAY_ADDRESS / --ray-address) or the user's own setting leaves it.
_SETTING = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_RAY = not os.environ.get("RAY_ADDRESS") and _SETTING not in os.environ and "ray" not in sys.modules
if LOOPBACK_RAY:
    os.environ[_SETTING] = "0"
# ray imported before this package with nothing set: a local runtime would bind the network (session.start_ray refuses)
RAY_UNPINNED = "ray" in sys.modules and _SETTING not in os.environ
