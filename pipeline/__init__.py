"""changemap's pipeline: plain functions for each step, I/O modules, the CLI."""
import os

# A local Ray listens on the machine's network address unless this variable is set
# before `ray` is imported (its constants are read at import time). A local run keeps
# Ray on 127.0.0.1; only an explicit cluster address (RAY_ADDRESS / --ray-address) leaves it.
LOOPBACK_RAY = not os.environ.get("RAY_ADDRESS") and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
if LOOPBACK_RAY:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
