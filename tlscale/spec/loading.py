"""YAML -> JobSpec, with dotted overrides and errors that name file:line and field."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tlscale.errors import ConfigError, did_you_mean
from tlscale.spec.schema import JobSpec, _registry, strategy_options_class, task_option_sections, task_options_class

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_NODES = 100_000  # values in a spec once aliases are expanded; real specs hold a few hundred


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans, so `epochs: yes` is an error instead
    of 1, and `labels: [yes, no]` stays two strings."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


class YamlRefused(Exception):
    """Valid YAML that a spec must not be: (1-based line or None, message) pairs."""

    def __init__(self, problems: list[tuple[int | None, str]]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


def parse_yaml(text: str, prefix: tuple = ()) -> tuple[Any, yaml.Node | None]:
    """(value, node); prefix: the key path the text sits at (an override's key). The node graph is checked
    before any Python object is built: duplicate keys (the first silently lost) and aliases that expand past
    MAX_NODES (a 'billion laughs' hangs everything after). Raises yaml.YAMLError for text that is not YAML,
    YamlRefused for the rest."""
    loader = SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        size = _expanded_size(node, {}, set())
        if size > MAX_NODES:
            raise YamlRefused([(None, f"aliases (*name) expand the document to {size:,} values, more than "
                                      f"{MAX_NODES:,}; a spec needs a few hundred (is it an alias bomb?)")])
        duplicates: list[tuple[int | None, str]] = []
        _duplicate_keys(node, prefix, set(), duplicates)
        if duplicates:
            raise YamlRefused(sorted(duplicates, key=lambda problem: problem[0] or 0))
        return loader.construct_document(node), node
    except RecursionError:
        raise YamlRefused([(None, "nested too deeply")]) from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """Values in the document once every alias is replaced by what it names, counted once per node."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise YamlRefused([(node.start_mark.line + 1, "an alias refers to a node that contains it "
                                                      "(a recursive structure); a spec cannot hold one")])
    open_nodes.add(key)
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    size = 1 + sum(_expanded_size(child, memo, open_nodes) for child in children)
    open_nodes.discard(key)
    memo[key] = size
    return size


def _duplicate_keys(node: yaml.Node, path: tuple, seen: set[int], found: list[tuple[int | None, str]]) -> None:
    """A key given twice in one mapping: YAML keeps the last and silently drops the first."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line, dotted = key.start_mark.line + 1, ".".join(map(str, path + (key.value,)))
                if (key.tag, key.value) in first_line:
                    found.append((line, f"{dotted}: duplicate key (first at line {first_line[key.tag, key.value]}); "
                                        "YAML would silently drop the first one. Merge them into one"))
                else:
                    first_line[key.tag, key.value] = line
            _duplicate_keys(value, path + (getattr(key, "value", "?"),), seen, found)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, path + (i,), seen, found)


def expand_env(value: Any, source: str = "<spec>", lines: dict[tuple, int] | None = None) -> Any:
    """${VAR} and ${VAR:-default} in strings, so specs can point at machine-specific folders. An unset VAR
    without a default is an error: it would silently become '' (output_dir '' is the current folder)."""
    unset: list[tuple[tuple, str]] = []
    expanded = _expand(value, (), unset)
    if unset:
        messages = []
        for path, name in unset:
            line = _line_of(path, lines or {})
            where = f"{source}:{line}" if line else source
            messages.append(f"{where}: {'.'.join(map(str, path))}: ${{{name}}} is not set; export it or write "
                            f"${{{name}:-default}}")
        raise ConfigError(messages)
    return expanded


def _expand(value: Any, path: tuple, unset: list[tuple[tuple, str]]) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            current = os.environ.get(name)
            if current:
                return current
            if default is not None:  # shell semantics: unset or empty takes the default
                return default
            if current is None:
                unset.append((path, name))
            return ""

        return _ENV.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, path + (k,), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, path + (i,), unset) for i, v in enumerate(value)]
    return value


def _line_of(path: tuple, lines: dict[tuple, int]) -> int | None:
    return next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)


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
    """KEY=VALUE, the value read by the spec's own YAML rules (text that is not YAML stays a string)."""
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. training.epochs=2")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    try:
        value = parse_yaml(raw, tuple(path))[0] if raw != "" else None
    except yaml.YAMLError:
        value = raw
    except YamlRefused as exc:
        raise ConfigError([f"override '{text}': {message}" for _, message in exc.problems]) from None
    return path, value


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


def _fields_at(path: tuple, raw: dict | None = None) -> list[str]:
    """Valid keys of the section at `path`, for did-you-mean suggestions (the strategy section: those of the
    strategy the spec names)."""
    model: type[BaseModel] | None = JobSpec
    for part in path:
        field = model.model_fields.get(part) if model else None
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if path == ("strategy",):
        model = strategy_options_class(_strategy_name(raw))
    task_key, task_options = task_options_class((raw or {}).get("task", JobSpec.model_fields["task"].default))
    if path == () and task_key:
        return [*model.model_fields, task_key]
    if path == (task_key,):
        model = task_options
    return list(model.model_fields) if model else []


def _strategy_name(raw: dict | None) -> str:
    section = (raw or {}).get("strategy")
    name = section.get("name", "full") if isinstance(section, dict) else "full"
    return name if isinstance(name, str) else "full"


def _option_of_another_strategy(key: str, raw: dict | None) -> str | None:
    """'r only applies to strategies 'lora' and 'qlora', not 'full'' for a key another strategy declares."""
    strategies = _registry("tlscale.strategies", "STRATEGIES")
    if strategies is None:
        return None
    owners = [name for name in strategies.names() if key in strategy_options_class(name).model_fields]
    if not owners:
        return None
    which = f"strategy '{owners[0]}'" if len(owners) == 1 else \
        "strategies " + ", ".join(f"'{o}'" for o in owners[:-1]) + f" and '{owners[-1]}'"
    return f"{key} only applies to {which}, not '{_strategy_name(raw)}'"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_errors(exc: ValidationError, source: str, lines: dict[tuple, int],
                  overridden: dict[tuple, str] | None = None, raw: dict | None = None) -> list[str]:
    """One message per problem, placed at the spec's file:line, or at the override that set the value."""
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        override = next((text for path, text in (overridden or {}).items() if loc[:len(path)] == path
                         or (loc and path[:len(loc)] == loc)), None)  # set there, or beneath a section refused
        line = _line_of(loc, lines)
        where = f"override '{override}'" if override else f"{source}:{line}" if line else source
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = _fields_at(loc[:-1], raw)
            msg = (loc[:-1] == ("strategy",) and _option_of_another_strategy(str(loc[-1]), raw)) or \
                f"unknown key '{loc[-1]}'.{did_you_mean(loc[-1], valid)} Valid keys here: {', '.join(valid)}"
        elif kind == "missing" and loc[:1] == ("strategy",) and len(loc) == 2:
            msg = f"strategy '{_strategy_name(raw)}' needs {loc[-1]}"
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if " found " not in msg and f"'{err.get('input')}'" not in msg:
                msg += f" (found {_shown(err.get('input'))})"
        messages.append(f"{where}: {dotted}: {msg}")
    return messages


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read spec file ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the spec as "
                          "UTF-8") from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, expand, override and validate a spec; every problem is reported at once."""
    path = Path(path)
    text = _read_text(path)
    try:
        raw, node = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except YamlRefused as exc:
        raise ConfigError([f"{path}:{line}: {message}" if line else f"{path}: {message}"
                           for line, message in exc.problems]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: expected a mapping of sections (task, model, data, ...), found {type(raw).__name__}")
    lines = _key_lines(node) if node else {}
    raw = apply_overrides(expand_env(raw, str(path), lines), overrides or [])
    overridden = {tuple(parse_override(text)[0]): text for text in overrides or []}
    return spec_from_dict(raw, source=str(path), lines=lines, overridden=overridden)


def spec_from_dict(raw: dict, source: str = "<spec>", lines: dict[tuple, int] | None = None,
                   overridden: dict[tuple, str] | None = None) -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, lines or {}, overridden, raw)) from None


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict:
    """JobSpec's schema, with `strategy` as one of the registered strategies' options models."""
    schema = JobSpec.model_json_schema()
    strategies = _registry("tlscale.strategies", "STRATEGIES")
    if strategies is None:
        return schema
    choices = []
    for name in strategies.names():
        options = strategy_options_class(name)
        part = options.model_json_schema(ref_template="#/$defs/{model}")
        schema["$defs"].update(part.pop("$defs", {}))
        part["properties"]["name"] = {"const": name, "description": f"The {name} strategy."}
        part["required"] = sorted({"name", *part.get("required", [])})
        key = f"Strategy_{name}"
        schema["$defs"][key] = part
        choices.append({"$ref": f"#/$defs/{key}"})
    schema["$defs"].pop("StrategySpec", None)  # only the base of the choices
    prop = schema["properties"]["strategy"]
    schema["properties"]["strategy"] = {"description": prop.get("description"), "default": prop.get("default"),
                                        "oneOf": choices}
    _add_task_sections(schema)
    return schema


def _add_task_sections(schema: dict) -> None:
    """Each registered task's own section (`qa`, `lm`, a plugin's) as a property; no other extra keys."""
    for key, owners in task_option_sections().items():
        refs = []
        for _, options in owners:
            part = options.model_json_schema(ref_template="#/$defs/{model}")
            schema["$defs"].update(part.pop("$defs", {}))
            schema["$defs"][options.__name__] = part
            refs.append({"$ref": f"#/$defs/{options.__name__}"})
        description = " ".join((options.__doc__ or "").split()) or f"task {owners[0][0]}: its options."
        schema["properties"][key] = {"description": description, **(refs[0] if len(refs) == 1 else {"anyOf": refs})}
    schema["additionalProperties"] = False


_FIELD = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*): ")


def locate_messages(path: str | Path, messages: list[str], overrides: list[str] | None = None) -> list[str]:
    """Checks that run after loading (preflight) blame a field ('strategy.target_modules: ...'); prefix
    each such message with the spec's file:line of that field, as load_spec's own errors are. A field
    set by an override is blamed on the override instead."""
    overridden = {o.split("=", 1)[0].strip(): o for o in overrides or []}
    try:
        node = parse_yaml(_read_text(Path(path)))[1]
    except Exception:  # noqa: BLE001  (the spec loaded a moment ago; if it cannot be read now, say less)
        node = None
    lines = _key_lines(node) if node is not None else {}
    located = []
    for message in messages:
        match = _FIELD.match(message)
        field = match.group(1) if match else None
        blamed = [text for key, text in overridden.items()
                  if field is not None and (field == key or field.startswith(key + ".") or key.startswith(field + "."))]
        if blamed:
            located.append(f"override '{blamed[0]}': {message}")
            continue
        line = _line_of(tuple(field.split(".")), lines) if field else None
        located.append(f"{path}:{line}: {message}" if line else message)
    return located
