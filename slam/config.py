"""Typed recipes: nested dataclasses, YAML files that only override defaults, dotted `key=value` overrides.

A schema is a plain `@dataclass` whose fields may be other dataclasses. Each field is documented by the
string literal right under it (litgpt style); `describe(cls)` turns those into help text. Loading is strict:
an unknown key, a wrong type or a value rejected by a `__post_init__` check raises `ConfigError` naming the
dotted field, which the CLI prints as one line with exit code 2.

    @dataclass
    class Optim:
        lr: float = 1e-3
        \"\"\"Peak learning rate.\"\"\"

    cfg = load_config(Recipe, "recipes/slam.yaml", ["optim.lr=5e-4"])
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from slam.errors import ConfigError

T = TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against a type annotation; strings from the CLI are parsed as YAML first."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {where!r} (valid keys{' under ' + prefix if prefix else ''}: "
                          f"{', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(f"{prefix}.{msg}" if prefix and not msg.startswith(prefix) else msg) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {p!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["optim.lr=5e-4", "budget.time=90m"]` -> nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML{at}: "
                          f"{getattr(e, 'problem', None) or ' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text (byte {e.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of keys, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict) -> T:
    """Build a schema instance from a nested dict (strict: unknown keys and wrong types are errors)."""
    return _build(cls, data)


def _one_of(cls: type, tree: dict) -> dict:
    """A section whose class lists `ONE_OF` field names (e.g. the budget: time, tokens or steps) takes one of
    them: a layer (the YAML over the defaults, the overrides over the YAML) that sets one of them to a value
    clears the others it does not set itself, so `budget.steps=100` on a time-budgeted recipe replaces the
    time budget instead of stopping with "set exactly one"."""
    if not (_is_dataclass_type(cls) and isinstance(tree, dict)):
        return tree
    hints = _hints(cls)
    for name, value in tree.items():
        tp = hints.get(name)
        for cand in (tp, *typing.get_args(tp)):
            if _is_dataclass_type(cand) and isinstance(value, dict):
                _one_of(cand, value)
    group = getattr(cls, "ONE_OF", ())
    if any(tree.get(k) is not None for k in group):
        for k in group:
            tree.setdefault(k, None)
    return tree


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls` <- the YAML recipe <- dotted CLI overrides (each layer replacing a one-of choice
    of the layer below, see `_one_of`)."""
    data = _one_of(cls, read_yaml(recipe)) if recipe else {}
    data = _merge(data, _one_of(cls, parse_overrides(overrides or [])))
    return _build(cls, data)


RECIPES = Path(__file__).resolve().parent / "recipes"
"""The shipped recipes: `slam train NAME` finds recipes/NAME.yaml."""


def resolve_recipe(recipe: str) -> tuple[Path, list[str]]:
    """A YAML file, a shipped recipe name, or a run folder (then its config.yaml and resume=true)."""
    p = Path(recipe)
    if p.is_dir() and (p / "config.yaml").exists():
        return p / "config.yaml", [f"out={p}", "resume=true"]
    if "/" not in recipe and (RECIPES / f"{recipe}.yaml").exists():
        return RECIPES / f"{recipe}.yaml", []
    if p.is_dir():
        raise ConfigError(f"recipe: {recipe!r} is a folder without config.yaml (not a run folder)")
    if not p.exists():
        raise ConfigError(f"recipe {recipe!r} does not exist: give a YAML file, a run folder or a shipped "
                          f"recipe ({', '.join(shipped_recipes())})")
    return p, []


def shipped_recipes() -> list[str]:
    """Every recipe `slam train NAME` / `slam dpo NAME` finds by name."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(cls: type[T], recipe: str, overrides: list[str]) -> T:
    """`load_config` for a recipe as the CLI names it (file, shipped name or run folder)."""
    path, implied = resolve_recipe(recipe)
    return load_config(cls, path, implied + list(overrides))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source), inherited ones included: a
    subclass that redeclares a field to change its default keeps the base's docstring unless it gives one."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    node = ast.parse(src).body[0]
    docs: dict[str, str] = {}
    body = getattr(node, "body", [])
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every leaf field: the recipe reference and `--help` text."""
    rows = []
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(hints[f.name]):
            rows.extend(describe(hints[f.name], key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((key, repr(default), docs.get(f.name, "")))
    return rows


def check(cond: bool, field: str, message: str) -> None:
    """For `__post_init__`: raise a ConfigError naming the field when `cond` is false."""
    if not cond:
        raise ConfigError(f"{field}: {message}")
