"""Settings declared once: a dataclass field that is also a command-line flag.

    @dataclass(frozen=True)
    class SPAOptions:
        num_samples: int = option(48, "latent samples per image", check=positive)

The field's name is the flag (`-num_samples`, or `flag=` for another name), its default the flag's default, its
type the default's (or `type=` when the default is None; a bool default False makes a switch), and `check` a
rule on its value. cfg.py builds the parser from these fields (`add_flags`) and refuses values that break a
rule (`problems`); the run configuration is made of the same dataclasses, so a setting has one declaration.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, field, fields
from typing import Any

Check = Callable[[Any], "str | None"]


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple | list | None = None,
    type: Callable | None = None,
    check: Check | None = None,
    const: Any = None,
) -> Any:
    """A dataclass field declaring a flag (see the module docstring); with `const` the flag may be given without a
    value, meaning `const` (e.g. `-freeze_encoder` for `-freeze_encoder yes`)."""
    meta = {
        "help": help,
        "flag": flag,
        "choices": tuple(choices) if choices else None,
        "type": type,
        "check": check,
        "const": const,
    }
    return field(default=default, metadata={"option": meta})


def declared(cls: type) -> Iterator[tuple[Field, dict]]:
    """(field, option metadata) of every field of dataclass `cls` declared with `option`."""
    for f in fields(cls):
        if "option" in f.metadata:
            yield f, f.metadata["option"]


def flag_of(f: Field) -> str:
    """The flag name of an option field (without the dash)."""
    return f.metadata["option"]["flag"] or f.name


def flag_names(cls: type) -> list[str]:
    return [flag_of(f) for f, _ in declared(cls)]


def add_flag(group: argparse._ActionsContainer, f: Field, note: str | None = None) -> None:
    """Add the flag of one option field to an argparse group; `note` adds a sentence to its help."""
    meta, name = f.metadata["option"], flag_of(f)
    text = meta["help"] + (f"; {note}" if note else "")
    if f.default is False and meta["type"] is None:
        group.add_argument(f"-{name}", dest=name, action="store_true", help=text)
        return
    shown = "" if f.default is None else f" (default {f.default})"
    kind = meta["type"] or type(f.default)
    optional = {"nargs": "?", "const": meta["const"]} if meta["const"] is not None else {}
    group.add_argument(
        f"-{name}", dest=name, type=kind, default=f.default, choices=meta["choices"], help=text + shown, **optional
    )


def add_flags(group: argparse._ActionsContainer, cls: type, notes: Mapping[str, str] | None = None) -> None:
    """Add the flags of dataclass `cls` to an argparse group; `notes` {flag: sentence} extend their help."""
    for f, _ in declared(cls):
        add_flag(group, f, (notes or {}).get(flag_of(f)))


def problems(cls: type, values: Mapping[str, Any]) -> str | None:
    """The first value of `values` ({flag: value}) that breaks its field's rule, as `argument -flag: ...`."""
    for f, _ in declared(cls):
        name = flag_of(f)
        problem = field_problem(f, values[name]) if name in values else None
        if problem:
            return f"argument -{name}: {problem}"
    return None


def field_problem(f: Field, value: Any) -> str | None:
    """What is wrong with `value` for option field `f`: not among its choices, or breaking its rule (None: fine).
    Used where values arrive without argparse (build_dataset's keywords) as well as for parsed flags."""
    meta = f.metadata["option"]
    if value is None:
        return None
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}, got {value!r}"
    if meta["check"] is None:
        return None
    try:
        return meta["check"](value)
    except TypeError:  # a rule comparing numbers, given something else
        return f"must be a {type(f.default).__name__}, got {value!r}"


# --- rules -------------------------------------------------------------------------------------------------


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value}"


def finite_positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be a finite positive number, got {value}"


def within(low: float, high: float, high_included: bool = True) -> Check:
    """low <= value <= high (or < high)."""
    shown = f"[{low}, {high}{']' if high_included else ')'}"

    def rule(value: float) -> str | None:
        inside = low <= value <= high if high_included else low <= value < high
        return None if inside else f"must be in {shown}, got {value}"

    return rule


def seed_range(maximum: int) -> Check:
    def rule(value: int) -> str | None:
        return None if 0 <= value <= maximum else f"must be in 0..{maximum}, got {value}"

    return rule


def multiple_of(step: int) -> Check:
    def rule(value: int) -> str | None:
        return None if value > 0 and value % step == 0 else f"must be a positive multiple of {step}, got {value}"

    return rule
