"""Option checking: constructor parameters as a schema, values checked against type hints.

A leaf module (it imports nothing of the harness but its errors), so every layer may use it: the
config merger, the registries, the shared objectives, the encoders and the plugins.

A nested option mapping (``tokenizer.perceptual``, ``tokenizer.encoder``, ``tokenizer.latent_2d``,
...) declares its own check in the constructor's type hint, ``Annotated[dict, Checked(fn)]``, so
that one walk over a config's type hints validates every nested option at plan time, with the same
code the constructor runs later. A number's range is in its hint the same way, ``Annotated[int,
Bounds(minimum=1)]`` (named: :data:`PositiveInt`, :data:`Decay`, ...): ``train.lr=-1`` or
``tokenizer.codebook_size=0`` fails the plan, naming the key and the range, instead of a stage.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from benchmark.errors import ConfigError


@dataclass(frozen=True)
class Checked:
    """Type-hint metadata: ``Annotated[dict, Checked(fn)]`` is a mapping that ``fn(value, where)`` validates
    (raising :class:`ConfigError` naming ``where`` and the key at fault)."""

    check: Callable[[Any, str], None]


@dataclass(frozen=True)
class Bounds:
    """Type-hint metadata: the range of a number, ``Annotated[int, Bounds(minimum=1)]`` (JSON Schema's
    names: ``minimum`` / ``maximum`` inclusive, ``exclusive_minimum`` / ``exclusive_maximum`` strict)."""

    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None

    def holds(self, value: float) -> bool:
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.exclusive_minimum is None or value > self.exclusive_minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.exclusive_maximum is None or value < self.exclusive_maximum)
        )

    def __str__(self) -> str:
        bounds = (
            (">=", self.minimum),
            (">", self.exclusive_minimum),
            ("<=", self.maximum),
            ("<", self.exclusive_maximum),
        )
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)


# The ranges of the options that have one (a count of steps or images, a learning rate, a decay).
PositiveInt = Annotated[int, Bounds(minimum=1)]
NonNegativeInt = Annotated[int, Bounds(minimum=0)]
PositiveFloat = Annotated[float, Bounds(exclusive_minimum=0)]
NonNegativeFloat = Annotated[float, Bounds(minimum=0)]
UnitInterval = Annotated[float, Bounds(minimum=0, maximum=1)]
Decay = Annotated[float, Bounds(minimum=0, exclusive_maximum=1)]  # an EMA decay, Adam's betas


def nested(check: Callable[[Any, str], None]) -> Any:
    """The type hint of a nested option mapping validated by ``check(value, where)``."""
    return Annotated[dict, Checked(check)]


def init_parameters(cls: type, harness: set[str] | frozenset[str] = frozenset()) -> dict[str, inspect.Parameter]:
    """The user-settable constructor parameters of ``cls`` (those not in ``harness``), with their type
    hints as annotations. A constructor that passes ``**kwargs`` on to its base class also accepts the
    base's."""
    return dict(_init_parameters(cls, frozenset(harness)))


@functools.cache
def _init_parameters(cls: type, harness: frozenset[str]) -> dict[str, inspect.Parameter]:
    """:func:`init_parameters`, read once per class: planning checks every layer of every cell against
    it, and ``typing.get_type_hints`` is most of a plan's validation time."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init, include_extras=True)
        params = inspect.signature(init).parameters
        for p, param in params.items():
            if p != "self" and p not in harness and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                out.setdefault(p, param.replace(annotation=hints.get(p, Any)))
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def init_params(cls: type, harness: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The user-settable constructor parameters of ``cls`` and their type hints (``init_parameters``)."""
    return {p: param.annotation for p, param in init_parameters(cls, harness).items()}


def unknown_key(key: str, allowed: list[str], where: str) -> ConfigError:
    """The error for a key that is not an option: names it, suggests close matches, lists the options."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'.{hint} Allowed: {', '.join(sorted(allowed)) or 'none'}.")


def check_options(
    options: Mapping[str, Any], params: Mapping[str, Any], where: str, what: str, extra: tuple[str, ...] = ()
) -> None:
    """A nested option mapping (``tokenizer.encoder``, ``tokenizer.adversarial``, ...): every key must
    be a parameter of ``what`` (or one of ``extra``, handled by the caller) with a value of its type;
    nested mappings with a :class:`Checked` hint are checked in turn."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options of {what}, got {options!r}")
    for key, value in options.items():
        if key in extra:
            continue
        if key not in params:
            raise ConfigError(
                f"{where}.{key}: not an option of {what}; options: {', '.join([*extra, *params]) or 'none'}"
            )
        check_value(value, params[key], f"{where}.{key}")


def check_value(value: Any, hint: Any, where: str) -> None:
    """``value`` must fit ``hint`` and the :class:`Bounds` of the member it fits; a fitting nested mapping
    runs its :class:`Checked` validators."""
    if not type_ok(value, hint):
        raise ConfigError(f"{where} must be {hint_name(hint)}, got {value!r}")
    for meta in metadata_for(value, hint):
        if isinstance(meta, Bounds) and not meta.holds(value):
            raise ConfigError(f"{where} must be {meta}, got {value!r}")
        if isinstance(meta, Checked):
            meta.check(value, where)


def metadata_for(value: Any, hint: Any) -> tuple[Any, ...]:
    """The ``Annotated`` metadata (:class:`Checked`, :class:`Bounds`) of the member of ``hint`` that
    ``value`` fits."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return hint.__metadata__
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            if type_ok(value, member):
                return metadata_for(value, member)
    return ()


def type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint (ints count as floats; bools are not ints)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return type_ok(value, typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        return all(type_ok(v, args[0]) for v in value) if args else True
    if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def hint_name(hint: Any) -> str:
    """A readable name for a type hint (``int``, ``dict | None``)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return hint_name(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(hint_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
