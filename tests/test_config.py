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
    assert redact({"api_keys": ["a", ""], "models": {"r": {"api_key": None}}}) == \
        {"api_keys": ["***", ""], "models": {"r": {"api_key": None}}}  # an empty secret is a mistake to show


# --- keys that would open the door, models that can never start ---------------------------------------------------


@pytest.mark.parametrize("keys, env, expected", [
    ([""], {}, ["api_keys[0]: empty key"]),
    (["ok", "   "], {}, ["api_keys[1]: empty key"]),
    (["${LLAMA_HOST_KEY:-}"], {}, ["api_keys[0]: empty key"]),
    (["${LLAMA_HOST_KEY}"], {"LLAMA_HOST_KEY": ""}, ["api_keys[0]: empty key"]),
    ([" padded "], {}, ["api_keys[0]: the key has leading or trailing white space"]),
])
def test_empty_or_blank_api_key_is_an_error(keys, env, expected):
    problems = problems_of({"api_keys": keys}, env=env)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_a_key_from_the_environment_is_accepted():
    host = Host.from_config(data={"api_keys": ["${LLAMA_HOST_KEY:-}"]}, only=CORE, env={"LLAMA_HOST_KEY": "s3"})
    assert host.site.api_keys == ["s3"]


@pytest.mark.parametrize("model, expected", [
    ({"aliases": ["x"]}, "models.m.path: runtime 'llama-server' needs the path of a GGUF file"),
    ({"runtime": "remote"}, "models.m.url: runtime 'remote' needs the base URL of an OpenAI-compatible server"),
    ({"runtime": "remote", "url": "ftp://x"}, "models.m.url: 'ftp://x' is not an http:// or https:// URL"),
    ({"runtime": "command", "path": "w.bin"}, "models.m.cmd: runtime 'command' needs 'cmd: [program, args...]'"),
])
def test_a_model_its_runtime_can_never_start_is_an_error(model, expected):
    with pytest.raises(ConfigError) as info:
        Host.from_config(data={"models": {"m": model}}, only=[*CORE, "remote_runtime", "command_runtime"], env={})
    assert info.value.problems == [expected]


def test_a_missing_model_file_is_not_a_configuration_error(tmp_path):
    """The file may appear later (a download, a mount): that stays a load-time error with the runner's words."""
    host = Host.from_config(data={"models": {"m": {"path": str(tmp_path / "later.gguf")}}}, only=CORE, env={})
    assert "m" in host.scheduler.models


def test_runtime_check_skips_discovered_models_it_cannot_start(caplog):
    from llama_host import ModelSpec, hookimpl

    class Scanner:
        @hookimpl
        def discover_models(self, host):
            return [ModelSpec(name="good", path="/m/good.gguf"), ModelSpec(name="pathless")]

    host = Host.from_config(data={}, only=CORE, extra=[("scanner", Scanner())], env={})

    async def refresh():
        await host.refresh_models()

    import asyncio
    asyncio.run(refresh())
    assert "good" in host.scheduler.models and "pathless" not in host.scheduler.models
    assert any("pathless" in r.getMessage() and "needs the path" in r.getMessage() for r in caplog.records)


def test_runtime_check_of_a_third_party_runtime():
    from llama_host import hookimpl

    class Voices:
        @hookimpl
        def register_runtimes(self, register):
            register("echo", object, check=lambda spec: [] if spec.params.get("voice") else ["params.voice: needed"])

    data = {"models": {"a": {"runtime": "echo", "params": {"voice": "x"}}, "b": {"runtime": "echo"}}}
    with pytest.raises(ConfigError) as info:
        Host.from_config(data=data, only=CORE, extra=[("voices", Voices())], env={})
    assert info.value.problems == ["models.b.params.voice: needed"]


def test_security_keys_are_typed_and_checked():
    host = Host.from_config(data={"allowed_origins": ["https://*.example.com"], "allowed_hosts": ["llm.lan"],
                                  "limits": {"header_timeout": 2.5, "max_headers": 50}}, only=CORE, env={})
    assert host.site.allowed_origins == ["https://*.example.com"] and host.site.allowed_hosts == ["llm.lan"]
    assert host.site.limits.header_timeout == 2.5 and host.site.limits.max_headers == 50
    assert host.site.limits.max_header_bytes == 64 * 2**10 and host.site.limits.keep_alive_timeout == 30
    problems = problems_of({"allowed_origins": ["https://ok.example", "https://chat.example.com/", "localhost:3000"],
                            "allowed_hosts": ["llm.lan", "http://llm.lan", "llm.lan:8000"]})
    assert problems == [
        "allowed_origins[1]: 'https://chat.example.com/' is not an origin (scheme://host[:port], no path; '*' for any)",
        "allowed_origins[2]: 'localhost:3000' is not an origin (scheme://host[:port], no path; '*' for any)",
        "allowed_hosts[1]: 'http://llm.lan' is not a host name (no scheme, port or path)",
        "allowed_hosts[2]: 'llm.lan:8000' is not a host name (no scheme, port or path)"]
    problems = problems_of({"allowed_origins": "*", "limits": {"header_timeout": 0, "max_header": 1}})
    text = "\n".join(problems)
    assert "allowed_origins: '*' is not of type 'array'" in text
    assert "limits.header_timeout: 0 is less than or equal to the minimum of 0" in text
    assert "limits.max_header: unknown key (did you mean 'max_headers'?)" in text


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


def test_cli_check_and_serve_refuse_an_empty_key(tmp_path):
    path = write(tmp_path, "api_keys: ['${LLAMA_HOST_KEY:-}']\n")
    for command in ("check", "serve"):
        result = run_cli(command, "--config", str(path), env={"LLAMA_HOST_KEY": ""})
        assert result.returncode == 2, result.stdout
        assert "api_keys[0]: empty key" in result.stderr and "Traceback" not in result.stderr
        assert "configuration OK" not in result.stdout


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
    assert {"host", "port", "api_keys", "scheduler", "plugins", "models", "allowed_origins", "allowed_hosts",
            "limits"} <= set(schema["properties"])
    assert set(schema["$defs"]["LimitSettings"]["properties"]) == {"header_timeout", "max_headers", "max_header_bytes",
                                                                   "keep_alive_timeout"}
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


def test_secret_flags_in_args_and_cmd_are_redacted():
    tree = {"models": {"m": {"args": ["--api-key", "s3cret", "--ctx-size", "512"],
                             "cmd": ["srv", "--api-key=s3cret", "--port", "${PORT}"]}}}
    out = redact(tree)["models"]["m"]
    assert out["args"] == ["--api-key", "***", "--ctx-size", "512"]
    assert out["cmd"] == ["srv", "--api-key=***", "--port", "${PORT}"]


def test_event_loop_uvloop_without_uvloop_is_a_configuration_error(monkeypatch):
    import llama_host.config as config

    assert Host.from_config(data={"event_loop": "uvloop"}, only=CORE).site.event_loop == "uvloop"  # installed here
    monkeypatch.setattr(config, "uvloop_available", lambda: False)
    assert [p.split(":")[0] for p in problems_of({"event_loop": "uvloop"})] == ["event_loop"]
    assert Host.from_config(data={"event_loop": "auto"}, only=CORE).site.event_loop == "auto"  # falls back
