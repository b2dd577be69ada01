"""Command-line options derived from the fields of the run objects (:mod:`pipeline.config`).

One declaration per option: a field's type gives the argparse type (bool -> flag, ``--no-NAME``
for one that defaults to True, whose help then says what that flag does; Literal -> choices;
tuple[int, ...], tuple[float, ...] or tuple[str, ...] -> comma list; a number or a word, e.g.
``float | Literal["auto"]`` -> the text, read by the model), its default and description give
the help. Only the options a user gave are passed on, so the objects' own defaults apply.

Field extras for the command line (``option(..., **cli)``): ``short``, ``metavar``, ``positional``,
and ``required=False`` for a field the object needs but the command can supply
itself (e.g. from a checkpoint or a saved run).
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


def _comma_floats(name: str):
    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} takes comma-separated numbers like 0.5,0.4,0.3, got {text!r}") from None
    return parse


def _number_or_word(annotation: Any) -> bool:
    """``float | Literal["auto"]`` and the like (``| None`` too): a number or one of some words."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    args = tuple(a for a in args if a is not type(None))
    return bool(args) and any(a in (int, float) for a in args) and all(
        a in (int, float) or typing.get_origin(a) is typing.Literal for a in args)


def _base(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def flag(name: str) -> str:
    """The option string of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _form(name: str, annotation: Any, default: Any) -> dict[str, Any]:
    """The argparse keywords that read a field of type ``annotation`` (``default``: the field's)."""
    base = _base(annotation)
    if base is bool:
        return {"action": "store_false" if default is True else "store_true"}
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
        kinds = {type(c) for c in choices}
        return {"choices": choices, **({"type": kinds.pop()} if kinds in ({int}, {float}) else {})}
    if typing.get_origin(base) is tuple:
        kind = typing.get_args(base)[0]
        if kind is str:
            return {"type": lambda text: tuple(v.strip() for v in text.split(",") if v.strip())}
        return {"type": _comma_floats(name) if kind is float else _comma_ints(name)}
    if base in (int, float):
        return {"type": base}
    if base in (str, SecretStr) or _number_or_word(base):
        return {}  # text; a number-or-word is read (and refused, naming the option) by the model
    raise TypeError(f"no command-line form for field {name}: {annotation}")


def add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel], *,
               exclude: Iterable[str] = (), help_overrides: dict[str, str] | None = None,
               show_defaults: bool = True, keep_defaults: bool = False) -> list[str]:
    """Add one option (or positional) per field of ``model`` to a parser or group; returns the field names added.

    ``show_defaults=False`` leaves the defaults out of the help (for help texts that say them in
    their own words); ``keep_defaults=True`` sets each option's default on the parsed namespace
    (for code that reads ``args.NAME``) instead of leaving options not given unset.
    """
    added = []
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        cli = dict((field.json_schema_extra or {}).get("cli", {}))
        help_text = (help_overrides or {}).get(name, field.description or "")
        default = None if field.is_required() else field.default
        kw: dict[str, Any] = {"dest": name, "default": default if keep_defaults else argparse.SUPPRESS,
                              **_form(name, field.annotation, default)}
        if cli.get("metavar"):
            kw["metavar"] = cli["metavar"]
        if show_defaults and not field.is_required() and field.default not in (None, False):
            help_text += f" (default: {field.default})"
        if cli.get("positional"):
            kw.pop("dest")
            if not field.is_required():
                kw["nargs"] = "?"
            parser.add_argument(name, help=help_text, **kw)
        else:
            negative = kw.get("action") == "store_false"
            names = [flag(f"no_{name}" if negative else name)] + ([cli["short"]] if cli.get("short") else [])
            required = cli.get("required", field.is_required() and "default" not in cli)
            parser.add_argument(*names, help=help_text, required=required, **kw)
        added.append(name)
    return added


def given(args: argparse.Namespace, model: type[BaseModel], *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The options of ``model`` given on the command line (all of them with ``keep_defaults``), by field name."""
    return {k: v for k, v in vars(args).items() if k in model.model_fields and k not in exclude}


def take(args: argparse.Namespace, model: type[BaseModel], /, *, exclude: Iterable[str] = (), **extra: Any) -> Any:
    """Build ``model`` from the options given on the command line (plus ``extra``), leaving out ``exclude``.

    ``extra`` may name any field (a field called ``model`` too: the first two parameters are positional).
    """
    return model(**{**given(args, model, exclude=exclude), **extra})
