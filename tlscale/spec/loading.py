"""YAML -> JobSpec, with dotted overrides and errors that name file:line and field."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tlscale.errors import ConfigError, did_you_mean
from tlscale.spec.schema import JobSpec

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """${VAR} and ${VAR:-default} in strings, so specs can point at machine-specific folders."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            lines.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, prefix + (i,)))
    return lines


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. training.epochs=2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _fields_at(path: tuple) -> list[str]:
    """Valid keys of the section at `path`, for did-you-mean suggestions."""
    model: type[BaseModel] | None = JobSpec
    for part in path:
        field = model.model_fields.get(part) if model else None
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model else []


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_errors(exc: ValidationError, source: str, lines: dict[tuple, int]) -> list[str]:
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            msg = f"unknown key '{loc[-1]}'.{did_you_mean(loc[-1], valid)} Valid keys here: {', '.join(valid)}"
        elif kind == "missing":
            msg = "required field is missing"
        else:
            reason = err["msg"].removeprefix("Value error, ")
            msg = f"{reason} (found {_shown(err.get('input'))})"
        messages.append(f"{where}: {dotted}: {msg}")
    return messages


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, expand, override and validate a spec; every problem is reported at once."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read spec file ({exc.strerror})") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: expected a mapping of sections (task, model, data, ...), found {type(raw).__name__}")
    raw = apply_overrides(expand_env(raw), overrides or [])
    return spec_from_dict(raw, source=str(path), lines=_key_lines(node) if node else {})


def spec_from_dict(raw: dict, source: str = "<spec>", lines: dict[tuple, int] | None = None) -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, lines or {})) from None


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict:
    return JobSpec.model_json_schema()
