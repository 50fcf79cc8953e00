"""The site file: reading, ``${VAR}`` expansion, one composed JSON Schema, and every problem reported with its path."""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import msgspec
import yaml

from llama_host.errors import ConfigError
from llama_host.eventloop import EventLoopChoice, uvloop_available
from llama_host.types import ModelSpec

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class GroupSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``scheduler.groups.<name>``: models with rules for running together (see llama_host.placement.Group)."""

    members: list[str]
    swap: bool = True
    """At most one member runs at a time: starting one unloads the others."""
    exclusive: bool = False
    """Starting a member unloads every model outside the group (but pinned and persistent ones)."""
    persistent: bool = False
    """Members are never unloaded to make room for a model outside the group."""


class SchedulerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_loaded: int = msgspec.field(default=1)
    memory_budget: int | str | None = None
    ttl: float = 300.0
    startup_timeout: float = 120.0
    queue_timeout: float = 600.0
    max_queue: int = 2048
    """Requests waiting for models at once (more get 503): ~35 KB each plus its body (bench/README.md, "Queued
    requests"): a burst of 1,000 at a cold model waits instead of 744 getting 503 as with the old 256."""
    stop_grace: float = 5.0
    groups: dict[str, GroupSettings] = {}
    preload: list[str] = []
    """Models started at startup, one after another, in this order."""


class LimitSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Connection limits of every listener (slow or oversized requests from the network)."""

    header_timeout: Annotated[float, msgspec.Meta(
        gt=0, description="seconds a connection may take to send a request's line and headers (slowloris)")] = 10.0
    max_headers: Annotated[int, msgspec.Meta(gt=0, description="header fields of one request; more get 431")] = 100
    max_header_bytes: Annotated[int, msgspec.Meta(
        gt=0, description="bytes of one request's line and headers; more get 431")] = 64 * 2**10
    keep_alive_timeout: Annotated[float, msgspec.Meta(
        gt=0, description="idle seconds a kept-alive connection waits for its next request")] = 30.0


class PeerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One entry of ``peers``: another llama-host whose models this one lists and routes to."""

    url: str
    """Base URL of the peer's main port, e.g. ``http://10.0.0.2:8000``."""
    api_key: str | None = None
    """One of the peer's ``api_keys`` (sent as ``Authorization: Bearer``)."""
    name: str | None = None
    """The node's name in model lists and metrics; default: the URL's host:port."""
    poll_seconds: float = 5.0
    """How often the peer's health and model list are read."""
    timeout: float = 5.0
    """Seconds a health check or model-list read may take before the peer counts as down."""


class SiteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = []
    allowed_origins: Annotated[list[str], msgspec.Meta(description=(
        "browser origins allowed besides the listener's own and loopback pages; '*' in a pattern matches any text "
        "('*' alone: every origin), as OLLAMA_ORIGINS"))] = []
    allowed_hosts: Annotated[list[str], msgspec.Meta(description=(
        "Host names served besides loopback names ('*' matches any text); needed to reach the host by a DNS "
        "name"))] = []
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    log_level: LogLevel = "info"
    log_dir: str = "logs"
    default_model: str | None = None
    #: The managed folder: pulled models and uploaded blobs (default: ``models`` next to the site file).
    models_dir: str | None = None
    shutdown_grace: float = 5.0
    watch_config: Annotated[bool, msgspec.Meta(description=(
        "reload the site file when it changes "
        "(SIGHUP, 'llama-host reload' and POST /api/v1/reload always work)"))] = True
    #: streams show loading progress while their model loads (a model's ``loading_progress`` wins)
    loading_progress: bool = False
    event_loop: Annotated[EventLoopChoice, msgspec.Meta(description=(
        "the event loop the host serves on: auto (uvloop when installed: ~13% less host CPU per relayed request), "
        "uvloop (an error when it is not installed), asyncio (the standard loop); read at start only"))] = "auto"
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    plugins: dict[str, dict[str, Any]] = {}
    models: dict[str, ModelSpec] = {}
    peers: list[PeerSettings] = []


# Keys of ModelSpec that are filled by the host, not written by users.
_MODEL_INTERNAL = ("name", "source", "missing")
RUNTIME_PLACEHOLDERS = ("PORT", "MODEL_PATH", "MODEL_NAME")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """``"20GiB"`` → bytes; plain numbers are bytes. Raises ``ValueError`` naming the accepted units."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 20GiB")
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size (use bytes or a unit: KB, MB, GB, KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def expand_env(tree: Any, env: Mapping[str, str], problems: list[str], path: tuple[str | int, ...] = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a value that is one whole expression is re-read as
    YAML so ``port: ${PORT}`` stays an integer."""
    if isinstance(tree, dict):
        return {k: expand_env(v, env, problems, (*path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [expand_env(v, env, problems, (*path, i)) for i, v in enumerate(tree)]
    if not isinstance(tree, str) or "${" not in tree:
        return tree

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in RUNTIME_PLACEHOLDERS and len(path) >= 3 and path[0] == "models" and path[2] in ("cmd", "args"):
            return m.group(0)  # replaced by the runtime when it starts the model, not read from the environment
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{_path(path)}: environment variable {name} is not set (use ${{{name}:-default}})")
        return ""

    whole = _ENV.fullmatch(tree)
    value = _ENV.sub(sub, tree)
    if whole:
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, str | int | float | bool) else value
    return value


def read_yaml(path: Path | None) -> dict[str, Any]:
    """Parse the site file; syntax errors become a ConfigError with file, line and column."""
    if path is None:
        raise ConfigError(["no site file given (and no data)"])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {path}"]) from None
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: YAML syntax error: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML error: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the site file must be a mapping of keys, not {type(data).__name__}"])
    return data


# --- the composed schema --------------------------------------------------------------------------------------------


def _hoist(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Move a schema's ``$defs`` under the root with a prefix, rewriting its ``$ref``s, and return its body."""
    schema = copy.deepcopy(schema)
    local = schema.pop("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (f"#/$defs/{prefix}{v.rsplit('/', 1)[1]}" if k == "$ref" and isinstance(v, str)
                        and v.startswith("#/$defs/") else rewrite(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, definition in local.items():
        defs[prefix + name] = rewrite(definition)
    body: dict[str, Any] = rewrite(schema)
    while "$ref" in body and len(body) == 1:  # msgspec returns {"$ref": ...} for a Struct: inline the object
        body = copy.deepcopy(defs[body["$ref"].rsplit("/", 1)[1]])
    return body


def build_schema(plugin_schemas: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """JSON Schema of the whole site file: the core keys plus one ``plugins.<name>`` section per installed plugin."""
    defs: dict[str, Any] = {}
    root = _hoist(msgspec.json.schema(SiteConfig), "", defs)
    model = defs["ModelSpec"]
    for key in _MODEL_INTERNAL:
        model["properties"].pop(key, None)
    model["properties"]["memory"] = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "null"}],
                                     "description": "bytes or a size such as 6GiB; default: an estimate"}
    sections: dict[str, Any] = {}
    for name, schema in sorted(plugin_schemas.items()):
        body: dict[str, Any] = _hoist(schema, f"{name}.", defs) if schema else {"type": "object", "properties": {}}
        body.setdefault("properties", {})["enabled"] = {"type": "boolean", "description": "false blocks the plugin"}
        body.setdefault("additionalProperties", False)
        body.setdefault("type", "object")
        sections[name] = body
    root["properties"]["plugins"] = {"type": "object", "properties": sections, "additionalProperties": False}
    root["additionalProperties"] = False
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "llama-host site file",
            **root, "$defs": defs}


def _describe(error: jsonschema.ValidationError) -> list[str]:
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties":
        schema, instance = error.schema, error.instance  # a schema and an object here (the stubs allow Unset)
        allowed = list(schema.get("properties", {})) if isinstance(schema, Mapping) else []
        extra = [k for k in instance if k not in allowed] if isinstance(instance, Mapping) else []
        is_plugins = list(error.absolute_path) == ["plugins"]
        out = []
        for key in extra:
            full = f"{where}.{key}" if error.absolute_path else key
            hint = difflib.get_close_matches(key, allowed, n=1)
            msg = (f"{full}: no installed plugin is named '{key}'" if is_plugins else f"{full}: unknown key")
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            elif is_plugins:
                msg += f" (installed: {', '.join(allowed) or 'none'})"
            out.append(msg)
        return out
    if error.validator in ("anyOf", "oneOf") and error.context:
        # Report the most specific branch: a mapping's problems inside the object branch (``filters: {...}``),
        # else a type summary.
        branches = error.validator_value if isinstance(error.validator_value, list) else []
        if isinstance(error.instance, dict):
            for i, branch in enumerate(branches):
                if isinstance(branch, dict) and ("$ref" in branch or branch.get("type") == "object"):
                    inner = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] == i]
                    if inner:
                        return [p for e in inner for p in _describe(e)]
        types = [s.get("type") for s in branches if isinstance(s, dict) and "type" in s]
        if types:
            return [f"{where}: {error.instance!r} is not of type {' or '.join(map(str, types))}"]
    return [f"{where}: {error.message}"]


def validate(data: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[str] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.extend(_describe(error))
    # Meaning checks the schema cannot express.
    problems += _browser_problems(data)
    keys = data.get("api_keys")
    for i, key in enumerate(keys if isinstance(keys, list) else []):
        if isinstance(key, str) and not key.strip():
            problems.append(f"api_keys[{i}]: empty key (an unset variable? an empty key would let anyone in)")
        elif isinstance(key, str) and key != key.strip():
            problems.append(f"api_keys[{i}]: the key has leading or trailing white space (it could never match)")
    if data.get("event_loop") == "uvloop" and not uvloop_available():
        problems.append("event_loop: 'uvloop' is not installed (pip install uvloop, or use 'auto' or 'asyncio')")
    sched = data.get("scheduler") or {}
    if isinstance(sched, dict) and sched.get("memory_budget") is not None:
        try:
            parse_size(sched["memory_budget"])
        except ValueError as exc:
            problems.append(f"scheduler.memory_budget: {exc}")
    if isinstance(sched, dict) and isinstance(sched.get("groups"), dict):
        problems += _group_problems(sched["groups"])
    problems += _network_problems(data)
    for name, spec in (data.get("models") or {}).items():
        if isinstance(spec, dict) and spec.get("memory") is not None:
            try:
                parse_size(spec["memory"])
            except ValueError as exc:
                problems.append(f"models.{name}.memory: {exc}")
    return problems


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value.strip("[]"))
    except ValueError:
        return False
    return True


def _browser_problems(data: dict[str, Any]) -> list[str]:
    """Patterns that could never match a browser's ``Origin`` or a ``Host`` name (a path, a scheme, a port)."""
    problems = []
    origins, hosts = data.get("allowed_origins"), data.get("allowed_hosts")
    for i, value in enumerate(origins if isinstance(origins, list) else []):
        if isinstance(value, str) and value.strip() != "*":
            scheme, sep, rest = value.partition("://")
            if not sep or not scheme or not rest or "/" in rest:
                problems.append(f"allowed_origins[{i}]: {value!r} is not an origin (scheme://host[:port], no path; "
                                f"'*' for any)")
    for i, value in enumerate(hosts if isinstance(hosts, list) else []):
        if isinstance(value, str) and (not value.strip() or "/" in value or (":" in value and not _is_ipv6(value))):
            problems.append(f"allowed_hosts[{i}]: {value!r} is not a host name (no scheme, port or path)")
    return problems


def _network_problems(data: dict[str, Any]) -> list[str]:
    """``peers[].url`` must be an http(s) URL; ``models.<name>.rpc`` entries must be ``host:port``."""
    from llama_host.worker import split_address

    problems = []
    peers = data.get("peers")
    for i, peer in enumerate(peers if isinstance(peers, list) else ()):
        url = peer.get("url") if isinstance(peer, dict) else None
        if isinstance(url, str) and not re.match(r"^https?://[^/\s]+", url):
            problems.append(f"peers[{i}].url: {url!r} is not an http:// or https:// URL")
    for name, spec in (data.get("models") or {}).items():
        rpc = spec.get("rpc") if isinstance(spec, dict) else None
        for i, address in enumerate(rpc if isinstance(rpc, list) else ()):
            if isinstance(address, str):
                try:
                    split_address(address)
                except ValueError as exc:
                    problems.append(f"models.{name}.rpc[{i}]: {exc}")
    return problems


def _group_problems(groups: dict[str, Any]) -> list[str]:
    """A model may belong to one group only (its rules would otherwise contradict each other)."""
    owner: dict[str, str] = {}
    problems = []
    for group, body in groups.items():
        members = body.get("members") if isinstance(body, dict) else None
        for i, member in enumerate(members if isinstance(members, list) else ()):
            if not isinstance(member, str):
                continue
            if owner.setdefault(member, group) != group:
                problems.append(f"scheduler.groups.{group}.members[{i}]: model '{member}' is already in group "
                                f"'{owner[member]}' (a model belongs to one group)")
    return problems


def load_site(path: Path | None, plugin_schemas: Mapping[str, dict[str, Any] | None],
              env: Mapping[str, str] | None = None, data: dict[str, Any] | None = None) -> SiteConfig:
    """Read, expand and validate the site file (or ``data``); raise ConfigError listing every problem."""
    source = str(path) if path else None
    raw = read_yaml(path) if data is None else copy.deepcopy(data)
    problems: list[str] = []
    raw = expand_env(raw, os.environ if env is None else env, problems)
    unset = tuple(p.split(":", 1)[0] + ":" for p in problems)  # don't also report the empty value's type
    problems += [p for p in validate(raw, build_schema(plugin_schemas)) if not p.startswith(unset)]
    if problems:
        raise ConfigError(problems, source)
    site = msgspec.convert(raw, SiteConfig)
    base = path.parent if path else Path.cwd()
    models = {}
    for name, spec in site.models.items():
        fixed = {"name": name}
        if spec.path:
            fixed["path"] = str((base / Path(spec.path).expanduser()).resolve())
        if spec.mmproj:
            fixed["mmproj"] = str((base / Path(spec.mmproj).expanduser()).resolve())
        models[name] = msgspec.structs.replace(spec, **fixed)
    log_dir = str((base / Path(site.log_dir).expanduser()).resolve())
    return msgspec.structs.replace(site, models=models, log_dir=log_dir,
                                   models_dir=managed_folder(site.models_dir, path))


def managed_folder(value: str | None, site_file: Path | None) -> str:
    """The managed folder: ``models_dir`` relative to the site file; by default ``models`` next to the site file, or
    ``$XDG_DATA_HOME/llama-host/models`` (``~/.local/share/...``) for a host built without one."""
    if value:
        base = site_file.parent if site_file else Path.cwd()
        return str((base / Path(value).expanduser()).resolve())
    if site_file is not None:
        return str((site_file.parent / "models").resolve())
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data) / "llama-host" / "models")


def plugin_settings(site: SiteConfig, name: str, kind: type[msgspec.Struct]) -> Any:
    section = {k: v for k, v in (site.plugins.get(name) or {}).items() if k != "enabled"}
    return msgspec.convert(section, kind)


SECRET_KEYS = {"api_keys", "api_key"}


def _mask(value: Any) -> Any:
    return "***" if value else value  # an empty secret stays visible: it is a mistake to see, not a secret


def redact(tree: Any) -> Any:
    """A copy of a config tree with secrets replaced by ``"***"``: secret keys, and the values of secret flags in a
    model's ``args`` and ``cmd`` (``--api-key KEY``)."""
    from llama_host.process import redact_argv

    if isinstance(tree, dict):
        return {k: (([_mask(x) for x in v] if isinstance(v, list) else _mask(v)) if k in SECRET_KEYS
                    else redact_argv(v) if k in ("args", "cmd") and isinstance(v, list)
                    and all(isinstance(x, str) for x in v) else redact(v))
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree
