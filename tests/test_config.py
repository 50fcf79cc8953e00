"""The site file: env expansion, validation with paths and hints, schema, secrets redacted."""

import json

import pytest
import yaml

from llama_host.config import expand_env, parse_size, redact
from llama_host.errors import ConfigError
from llama_host.host import Host
from llama_host.testing import run_cli

CORE = ["openai_api", "ollama_api", "llama_server"]


def problems_of(data, env=None):
    with pytest.raises(ConfigError) as info:
        Host.from_config(data=data, only=CORE, env=env or {})
    return info.value.problems


def test_env_expansion_keeps_types():
    problems = []
    out = expand_env({"port": "${P}", "host": "${H:-127.0.0.1}", "path": "/m/${NAME}.gguf", "n": "${MISSING}"},
                     {"P": "8123", "NAME": "qwen"}, problems)
    assert out["port"] == 8123 and out["host"] == "127.0.0.1" and out["path"] == "/m/qwen.gguf"
    assert problems == ["n: environment variable MISSING is not set (use ${MISSING:-default})"]


def test_runtime_placeholders_are_left_to_the_runtime():
    problems = []
    out = expand_env({"models": {"m": {"cmd": ["srv", "--port", "${PORT}", "-m", "${MODEL_PATH}", "${HOME_DIR}"]}}},
                     {"PORT": "1", "HOME_DIR": "/h"}, problems)
    assert out["models"]["m"]["cmd"] == ["srv", "--port", "${PORT}", "-m", "${MODEL_PATH}", "/h"] and not problems


def test_valid_config_is_typed(tmp_path):
    host = Host.from_config(data={"port": "${PORT:-9000}", "scheduler": {"memory_budget": "2GiB"},
                                  "plugins": {"ollama_api": {"port": 11999}},
                                  "models": {"m": {"path": "m.gguf", "params": {"ctx_size": 2048}}}},
                            only=CORE, env={})
    assert host.site.port == 9000
    assert host.scheduler.memory_budget == 2 * 2**30
    assert host.settings("ollama_api", type(host.settings("ollama_api", _settings_type(host)))).port == 11999
    assert host.scheduler.models["m"].params == {"ctx_size": 2048}


def _settings_type(host):
    import llama_host_ollama_api as plugin
    for name in dir(plugin):
        obj = getattr(plugin, name)
        if isinstance(obj, type) and name == "Settings":
            return obj
    from llama_host_ollama_api.settings import Settings
    return Settings


def test_every_problem_reported_with_its_path():
    problems = problems_of({
        "port": "abc",
        "schedular": {},
        "scheduler": {"max_loaded": "two", "memory_budget": "12 parsecs"},
        "plugins": {"ollama_api": {"port": "x", "prot": 1}, "olama_api": {}, "nothing_like_it": {}},
        "models": {"m": {"path": 3, "paramz": {}}},
    })
    text = "\n".join(problems)
    assert "port: 'abc' is not of type 'integer'" in text
    assert "schedular: unknown key (did you mean 'scheduler'?)" in text
    assert "scheduler.max_loaded: 'two' is not of type 'integer'" in text
    assert "scheduler.memory_budget: '12 parsecs' is not a size" in text
    assert "plugins.ollama_api.port: 'x' is not of type 'integer'" in text
    assert "plugins.ollama_api.prot: unknown key (did you mean 'port'?)" in text
    assert "plugins.olama_api: no installed plugin is named 'olama_api' (did you mean 'ollama_api'?)" in text
    assert "plugins.nothing_like_it: no installed plugin is named 'nothing_like_it' (installed:" in text
    assert "models.m.paramz: unknown key (did you mean 'params'?)" in text
    assert any(p.startswith("models.m.path: 3 is not of type") for p in problems)


def test_unknown_runtime_is_an_error():
    problems = problems_of({"models": {"m": {"path": "x.gguf", "runtime": "vllm-magic"}}})
    assert problems == ["models.m.runtime: unknown runtime 'vllm-magic' (installed: llama-server)"]


def test_missing_env_var_is_a_problem():
    assert problems_of({"port": "${NOPE}"}) == ["port: environment variable NOPE is not set (use ${NOPE:-default})"]


def test_sizes():
    assert parse_size("20GiB") == 20 * 2**30 and parse_size("1.5 GB") == 1_500_000_000 and parse_size(1024) == 1024
    with pytest.raises(ValueError):
        parse_size("lots")


def test_redact():
    assert redact({"api_keys": ["a", "b"], "models": {"r": {"api_key": "s", "url": "u"}}}) == \
        {"api_keys": ["***", "***"], "models": {"r": {"api_key": "***", "url": "u"}}}


# --- through the real CLI: exit 2, a message naming the problem, no traceback -------------------------------------


def write(tmp_path, text):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("port: [1]\n", "port: [1] is not of type 'integer'"),
    ("loglevel: info\n", "loglevel: unknown key (did you mean 'log_level'?)"),
    ("plugins:\n  ollama: {}\n", "plugins.ollama: no installed plugin is named 'ollama'"),
    ("models:\n  a: {path: x.gguf\n", "site.yaml:3:1: YAML syntax error"),
    ("plugins:\n  ollama_api: {port: high}\n", "plugins.ollama_api.port: 'high' is not of type 'integer'"),
])
def test_cli_bad_config_exits_2(tmp_path, text, expected):
    for command in ("check", "serve"):
        result = run_cli(command, "--config", str(write(tmp_path, text)))
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_missing_file(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_check_prints_effective_config_redacted(tmp_path):
    path = write(tmp_path, "api_keys: [sekrit]\nplugins:\n  lmstudio_api: {enabled: false}\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "sekrit" not in result.stdout and "'***'" in result.stdout
    config = yaml.safe_load(result.stdout.split("# plugins")[0])
    assert config["port"] == 8000 and config["host"] == "127.0.0.1"
    plugins = result.stdout.split("# plugins")[1]
    assert "lmstudio_api" in plugins and "disabled" in plugins
    assert "127.0.0.1:8000" in result.stdout and "configuration OK" in result.stdout


def test_cli_schema_covers_plugins():
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert {"host", "port", "api_keys", "scheduler", "plugins", "models"} <= set(schema["properties"])
    sections = schema["properties"]["plugins"]["properties"]
    assert "port" in sections["ollama_api"]["properties"] and "enabled" in sections["ollama_api"]["properties"]


def test_cli_help_on_each_command():
    for command in ("serve", "check", "plugins", "schema", "discover", "import-config"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage: llama-host" in result.stdout


def test_cli_plugins_lists_installed():
    result = run_cli("plugins")
    assert result.returncode == 0
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert lines["openai_api"][1:] == ["llama-host", "0.1.0", "yes"]
