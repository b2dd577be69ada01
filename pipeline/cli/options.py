"""Command-line options derived from the fields of the run objects (:mod:`pipeline.config`).

One declaration per option: a field's type gives the argparse type (bool -> flag, Literal ->
choices, tuple[int, ...] -> comma list), its default and description give the help. Only the
options a user gave are passed on, so the objects' own defaults apply.
"""
from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr


def _comma_ints(name: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(b) for b in text.split(",") if b.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name} takes comma-separated band numbers like 3,2,1, got {text!r}") from None
    return parse


def _base(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def flag(name: str) -> str:
    """The option string of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def add_fields(parser: argparse.ArgumentParser, model: type[BaseModel], *, exclude: Iterable[str] = (),
               help_overrides: dict[str, str] | None = None) -> list[str]:
    """Add one option (or positional) per field of ``model``; returns the field names added."""
    added = []
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        cli = dict((field.json_schema_extra or {}).get("cli", {}))
        base = _base(field.annotation)
        help_text = (help_overrides or {}).get(name, field.description or "")
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if base is bool:
            kw["action"] = "store_true"
        elif typing.get_origin(base) is typing.Literal:
            kw["choices"] = typing.get_args(base)
        elif typing.get_origin(base) is tuple:
            kw["type"] = _comma_ints(name)
        elif base in (int, float):
            kw["type"] = base
        elif base not in (str, SecretStr):
            raise TypeError(f"no command-line form for field {name}: {field.annotation}")
        if cli.get("metavar"):
            kw["metavar"] = cli["metavar"]
        if not field.is_required() and field.default not in (None, False):
            help_text += f" (default: {field.default})"
        if cli.get("positional"):
            kw.pop("dest")
            if not field.is_required():
                kw["nargs"] = "?"
            parser.add_argument(name, help=help_text, **kw)
        else:
            names = [flag(name)] + ([cli["short"]] if cli.get("short") else [])
            parser.add_argument(*names, help=help_text, required=field.is_required() and "default" not in cli,
                                **kw)
        added.append(name)
    return added


def take(args: argparse.Namespace, model: type[BaseModel], *, exclude: Iterable[str] = (), **extra: Any) -> Any:
    """Build ``model`` from the options given on the command line (plus ``extra``), leaving out ``exclude``."""
    given = {k: v for k, v in vars(args).items() if k in model.model_fields and k not in exclude}
    return model(**{**given, **extra})
