"""User errors on the command line: found behind the engines' wrappers, said once, without a traceback."""
from __future__ import annotations

import logging
import re
import sys

from pipeline.errors import ChangemapError


def _user_error_types() -> tuple[type[BaseException], ...]:
    """ChangemapError, and the model zoo's errors once the zoo is imported (none can be raised before)."""
    zoo = sys.modules.get("models.errors")
    return (ChangemapError, zoo.ModelZooError) if zoo is not None else (ChangemapError,)


def user_error(exc: BaseException | None) -> BaseException | None:
    """The user error behind ``exc``, if any: itself, or the cause Ray (``RayTaskError``) or a wrapper carries.

    A user error is a :class:`~pipeline.errors.ChangemapError` or the model zoo's unknown-model and
    weights errors: the user can fix it, and it is answered in one paragraph, without a traceback.
    """
    types, seen = _user_error_types(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # RayTaskError(X) is an X, and carries the original X
        if isinstance(exc, types):
            return cause if isinstance(cause, types) else exc
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


def _user_error_names() -> re.Pattern:
    names: set[str] = set()
    stack = list(_user_error_types())
    while stack:
        cls = stack.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            stack.extend(cls.__subclasses__())
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\)?:")


# The loggers that would repeat a user error with a traceback: Prefect's flow and task run loggers
# ("Encountered exception during execution", "Task run failed with exception", "Finished in state
# Failed(...)"), its engine loggers, and Ray's driver ("Unhandled error" of a task whose result
# nobody read after the run had already failed).
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine",
                   "prefect.task_engine", "ray._private.worker")


class _QuietUserErrors(logging.Filter):
    """Drops the engines' log records about a user error: the CLI says it once, in one paragraph."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and user_error(record.exc_info[1]) is not None:
            return False
        if record.levelno < logging.INFO:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to judge
            return True
        return not _user_error_names().search(text)


_QUIET = _QuietUserErrors()


def quiet_user_errors() -> None:
    """Prefect and Ray log a failing flow, task or remote task with its traceback; a user error is said once, by us."""
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
