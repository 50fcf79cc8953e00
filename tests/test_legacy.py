"""Converting the older project's models_config.json."""

from __future__ import annotations

import json

import pytest
import yaml

from llama_host.errors import ConfigError
from llama_host.legacy import convert_legacy_config, convert_legacy_models

OLD = {
    "default_model": "qwen2.5-7b-instruct",
    "models": {
        "qwen2.5-7b-instruct": {
            "model_path": "..\\models\\qwen2.5-7b-instruct-q4_k_m.gguf",
            "llama_cpp_runtime": "llama-server",
            "parameters": {"ctx_size": 16000, "n_gpu_layers": 50, "temp": 0.6},
            "auto_discovered": True,
            "auto_update_model": False,
        },
        "gemma": {
            "model_path": "/srv/models/gemma-3-4b.gguf",
            "llama_cpp_runtime": "C:\\llama\\cuda\\llama-server.exe",
            "parameters": {"port": 8081, "mmproj": "/srv/models/mmproj-gemma.gguf", "jinja": True},
            "aliases": ["g"],
            "color": "blue",
        },
    },
}


def test_converts_the_documented_example():
    notes: list[str] = []
    models = convert_legacy_models(OLD, notes=notes)
    assert models["qwen2.5-7b-instruct"] == {
        "path": "../models/qwen2.5-7b-instruct-q4_k_m.gguf",
        "params": {"ctx_size": 16000, "n_gpu_layers": 50, "temp": 0.6},
    }
    assert models["gemma"] == {
        "path": "/srv/models/gemma-3-4b.gguf",
        "binary": "C:/llama/cuda/llama-server.exe",
        "params": {"mmproj": "/srv/models/mmproj-gemma.gguf", "jinja": True},
        "aliases": ["g"],
    }
    assert any("parameters.port" in n for n in notes)
    assert any("gemma.color" in n for n in notes)


def test_relative_paths_resolved_against_the_json_folder(tmp_path):
    models = convert_legacy_models(OLD, base_dir=tmp_path / "config")
    assert models["qwen2.5-7b-instruct"]["path"] == str(tmp_path / "models" / "qwen2.5-7b-instruct-q4_k_m.gguf")
    assert models["gemma"]["path"] == "/srv/models/gemma-3-4b.gguf"


def test_whole_config_and_bare_mapping():
    config = convert_legacy_config(OLD)
    assert config["default_model"] == "qwen2.5-7b-instruct"
    assert list(config["models"]) == ["qwen2.5-7b-instruct", "gemma"]
    assert convert_legacy_models(OLD["models"]) == config["models"]
    assert yaml.safe_load(yaml.safe_dump(config, sort_keys=False)) == config


def test_runtime_names():
    data = {"models": {"a": {"model_path": "a.gguf", "llama_cpp_runtime": "default"},
                       "b": {"model_path": "b.gguf", "llama_cpp_runtime": "llama-server-vulkan"},
                       "c": {"model_path": "c.gguf"}}}
    models = convert_legacy_models(data)
    assert "binary" not in models["a"] and "binary" not in models["c"]
    assert models["b"]["binary"] == "llama-server-vulkan"


def test_every_problem_reported():
    bad = {"models": {"x": {"llama_cpp_runtime": "llama-server"}, "y": "nope",
                      "z": {"model_path": "z.gguf", "parameters": [1]}}}
    with pytest.raises(ConfigError) as info:
        convert_legacy_models(bad)
    assert info.value.problems == ["models.x.model_path: missing (a path to a .gguf file is required)",
                                   "models.y: expected an object", "models.z.parameters: expected an object"]
    with pytest.raises(ConfigError):
        convert_legacy_models({"models": []})


def test_cli_import_config(tmp_path):
    from llama_host.testing import run_cli

    legacy = tmp_path / "models_config.json"
    legacy.write_text(json.dumps(OLD))
    proc = run_cli("import-config", str(legacy))
    assert proc.returncode == 0, proc.stderr
    out = yaml.safe_load(proc.stdout)
    assert out["models"]["qwen2.5-7b-instruct"]["params"]["ctx_size"] == 16000
