"""Convert the older project's ``models_config.json`` into llama-host's ``models:`` section.

The old format::

    {"default_model": "qwen2.5-7b-instruct",
     "models": {"qwen2.5-7b-instruct": {"model_path": "..\\\\models\\\\qwen2.5-7b-instruct-q4_k_m.gguf",
                                         "llama_cpp_runtime": "llama-server",
                                         "parameters": {"ctx_size": 16000, "n_gpu_layers": 50, "temp": 0.6},
                                         "auto_discovered": true, "auto_update_model": false}}}

becomes::

    default_model: qwen2.5-7b-instruct
    models:
      qwen2.5-7b-instruct:
        path: ../models/qwen2.5-7b-instruct-q4_k_m.gguf
        params: {ctx_size: 16000, n_gpu_layers: 50, temp: 0.6}
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath
from typing import Any

from llama_host.errors import ConfigError

#: ``llama_cpp_runtime`` values meaning "the llama-server found by the host".
DEFAULT_RUNTIMES = {"", "default", "llama-server", "llama_server", "llama.cpp", "llamacpp", "llama-cpp"}
#: Parameters the runner sets itself (model file, address): dropped with a note.
MANAGED_PARAMS = {"model", "m", "port", "host", "alias", "a"}
#: Keys of an old entry that have no meaning in llama-host.
DROPPED_KEYS = {"auto_discovered", "auto_update_model"}
#: Keys an old entry may carry that mean the same in llama-host.
KEPT_KEYS = ("aliases", "ttl", "pinned", "env", "args", "mmproj")


def _normalise_path(raw: str, base_dir: Path | None) -> str:
    text = raw.strip()
    if "\\" in text:
        text = PureWindowsPath(text).as_posix()
    path = Path(os.path.expanduser(text))
    if base_dir is not None and not path.is_absolute() and not PureWindowsPath(text).drive:
        return os.path.normpath(base_dir / path)
    return text


def _binary(runtime: Any, base_dir: Path | None) -> str | None:
    """The ``binary:`` of an old ``llama_cpp_runtime`` (None for the default llama-server)."""
    if runtime is None:
        return None
    text = str(runtime).strip()
    if text.lower() in DEFAULT_RUNTIMES:
        return None
    if "/" in text or "\\" in text or text.lower().endswith(".exe"):
        return _normalise_path(text, base_dir)
    return text  # a command name, looked up in PATH


def convert_legacy_models(data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
                          notes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ``models:`` section (name → model) equivalent to an old ``models_config.json``.

    :param data: the parsed JSON: the whole file (``{"models": {...}}``) or its ``models`` mapping.
    :param base_dir: folder that relative ``model_path`` values are relative to (the JSON file's folder);
        ``None`` keeps them relative, with Windows separators turned into ``/``.
    :param notes: when given, receives one line per thing that was dropped or changed.
    :raises ConfigError: every entry that cannot be converted, with its path.
    """
    base = Path(base_dir) if base_dir is not None else None
    notes = notes if notes is not None else []
    models = data.get("models", data) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(["models: expected a mapping of model names to entries"])
    problems: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    for name, entry in models.items():
        where = f"models.{name}"
        if name == "default_model" and not isinstance(entry, dict):
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        raw_path = entry.get("model_path")
        if not isinstance(raw_path, str) or not raw_path.strip():
            problems.append(f"{where}.model_path: missing (a path to a .gguf file is required)")
            continue
        model: dict[str, Any] = {"path": _normalise_path(raw_path, base)}
        binary = _binary(entry.get("llama_cpp_runtime"), base)
        if binary is not None:
            model["binary"] = binary
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            problems.append(f"{where}.parameters: expected an object")
            continue
        params: dict[str, Any] = {}
        for key, value in parameters.items():
            if key.replace("-", "_").lstrip("_") in MANAGED_PARAMS:
                notes.append(f"{where}.parameters.{key}: dropped (llama-host sets it)")
                continue
            params[key] = value
        if params:
            model["params"] = params
        for key in KEPT_KEYS:
            if entry.get(key) is not None:
                model[key] = entry[key]
        for key in entry:
            if key in DROPPED_KEYS:
                continue
            if key not in ("model_path", "llama_cpp_runtime", "parameters", *KEPT_KEYS):
                notes.append(f"{where}.{key}: no equivalent in llama-host, dropped")
        out[str(name)] = model
    if problems:
        raise ConfigError(problems)
    return out


def convert_legacy_config(data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
                          notes: list[str] | None = None) -> dict[str, Any]:
    """The part of a site file equivalent to an old ``models_config.json``: ``default_model`` and ``models``."""
    out: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("default_model"), str):
        out["default_model"] = data["default_model"]
    out["models"] = convert_legacy_models(data, base_dir=base_dir, notes=notes)
    return out
