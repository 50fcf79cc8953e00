"""``llama-host``: serve, check, plugins, schema, discover, import-config, pull, worker."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llama_host import __version__
from llama_host.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from llama_host.downloads import Job
    from llama_host.host import Host

EXIT_USAGE = 2
COMMANDS = ("serve", "check", "plugins", "schema", "discover", "import-config", "pull", "worker", "reload")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, help="the site file (YAML)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log_level")
    common.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    p = argparse.ArgumentParser(prog="llama-host", parents=[common],
                                description="One host in front of llama-server: OpenAI, Ollama and LM Studio APIs, "
                                            "models on demand, discovery, metrics and a dashboard.")
    p.add_argument("--version", action="version", version=f"llama-host {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="serve every listener (the default command)",
                   description="Serve every listener of the site file until Ctrl+C or SIGTERM.")
    sub.add_parser("check", parents=[common], help="validate the site file and print the effective configuration",
                   description="Validate the site file; print the effective configuration (secrets redacted), the "
                               "plugins with their state and the listeners. Exit 2 on any problem.")
    sub.add_parser("plugins", parents=[common], help="list installed plugins",
                   description="List installed plugins: name, distribution, version, enabled.")
    sub.add_parser("schema", parents=[common], help="print the JSON Schema of the site file",
                   description="Print the JSON Schema of the whole site file (core keys and each plugin's section).")
    sub.add_parser("discover", parents=[common], help="print the models found by discovery plugins",
                   description="Run the discovery plugins once and print the table of models found.")
    pull = sub.add_parser("pull", parents=[common], help="download a GGUF model from Hugging Face",
                          description="Download a GGUF model (and its split parts and projector) from the Hugging "
                                      "Face Hub into the site's managed folder (models_dir), resumable and checked "
                                      "against the hub's sha256. HF_ENDPOINT and HF_TOKEN are honoured. A running "
                                      "host serves it after its next rescan.")
    pull.add_argument("model", help="hf.co/{user}/{repo}[:{quant}] or {user}/{repo}[:{quant}] (quant e.g. Q4_K_M)")
    imp = sub.add_parser("import-config", parents=[common], help="convert the older project's models_config.json",
                         description="Convert llama-runner's models_config.json into a YAML models section.")
    imp.add_argument("legacy", type=Path, help="path of models_config.json")
    imp.add_argument("-o", "--output", type=Path, help="write here (atomically) instead of stdout")
    work = sub.add_parser("worker", parents=[common], help="run and supervise one llama.cpp rpc-server",
                          description="Run one rpc-server (an RPC worker that llama-server reaches with --rpc; models "
                                      "list it under 'rpc:'), restart it when it dies, stop it on Ctrl+C or SIGTERM. "
                                      "rpc-server has no authentication: bind it to a private network only.")
    work.add_argument("--rpc-port", type=int, required=True, help="TCP port the worker listens on")
    work.add_argument("--host", default="127.0.0.1",
                      help="numeric address to bind (default 127.0.0.1; a private-network address to serve others)")
    work.add_argument("--threads", type=int, help="CPU threads of the worker (default: rpc-server's)")
    work.add_argument("--binary", help="rpc-server to run (default: PATH, then scripts/get-rpc-server's build)")
    rel = sub.add_parser("reload", parents=[common], help="make a running host read its site file again",
                         description="Ask the host running with this site file to read it again and apply what "
                                     "changed (POST /api/v1/reload on its main port, with the first of its api_keys "
                                     "that is accepted). Prints what changed, or every problem of a refused file "
                                     "(the host keeps running with its configuration). Exit 0: applied; 1: refused "
                                     "or the host could not be reached; 2: the file itself cannot be read. With "
                                     "--pid, send SIGHUP to that process instead (the outcome is then in the host's "
                                     "log and GET /api/v1/status).")
    rel.add_argument("--url", help="the host's main port (default: http://<host>:<port> of the site file)")
    rel.add_argument("--pid", type=int, help="send SIGHUP to this llama-host process instead of calling its API")
    rel.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the host's answer (30)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in COMMANDS for a in argv) and not any(a in ("-h", "--help", "--version") for a in argv):
        argv.insert(0, "serve")
    args = _parser().parse_args(argv)
    level = "debug" if args.verbose else args.log_level
    try:
        return _COMMANDS[args.command or "serve"](args, level)
    except (ConfigError, PluginError) as exc:
        _report(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


def _report(exc: Exception) -> None:
    if isinstance(exc, ConfigError):
        where = f" in {exc.source}" if exc.source else ""
        print(f"llama-host: configuration error{'s' if len(exc.problems) > 1 else ''}{where}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
    else:
        print(f"llama-host: {exc}", file=sys.stderr)


def _need_config(args: argparse.Namespace) -> Path:
    config: Path | None = args.config
    if config is None:
        raise ConfigError(["no site file given: use --config site.yaml (see config/site.example.yaml)"])
    return config


def _host(args: argparse.Namespace) -> Host:
    from llama_host.host import Host

    return Host.from_config(_need_config(args))


def cmd_serve(args: argparse.Namespace, level: str | None) -> int:
    from llama_host import logs
    from llama_host.eventloop import loop_factory
    from llama_host.serve import ListenError, bind_sockets, freeze_startup_objects, serve, tune_gc

    host = _host(args)
    logs.configure(level or host.site.log_level, host.site.log_dir)
    try:
        sockets = bind_sockets(host)
    except ListenError as exc:
        print(f"llama-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tune_gc()

    def ready(ports: dict[int, int]) -> None:
        _announce(host)
        freeze_startup_objects()

    try:
        with asyncio.Runner(loop_factory=loop_factory(host.site.event_loop)) as runner:
            runner.run(serve(host, sockets=sockets, on_ready=ready))
    except ListenError as exc:
        logging.getLogger("llama_host").error("%s", exc)
        return 1
    finally:
        host.scheduler.kill_all()
        logs.shutdown()
    return 0


def _announce(host: Host) -> None:
    log = logging.getLogger("llama_host")
    base = f"http://{host.site.host}:{{}}"
    for port, surfaces in host.listeners().items():
        log.info("listening on %s: %s", base.format(port), ", ".join(s.name for s in surfaces))
    names = [s.name for s in host.scheduler.statuses() if not s.unlisted]
    model = host.site.default_model or (names[0] if names else "MODEL")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32})
    from llama_host.eventloop import loop_name

    log.info("event loop: %s", loop_name(asyncio.get_running_loop()))
    log.info("ready — %d model(s): %s", len(names), ", ".join(names) or "none (add models: or a discovery folder)")
    log.info("try: curl -s %s/v1/chat/completions -H 'Content-Type: application/json' -d '%s'",
             base.format(host.site.port), body)


def cmd_check(args: argparse.Namespace, level: str | None) -> int:
    host = _host(args)
    print("# effective configuration (secrets redacted)")
    print(yaml.safe_dump(host.effective_config(), sort_keys=False).rstrip())
    print("\n# plugins")
    _table([("name", "distribution", "version", "state")] + [
        (p["name"], p["distribution"], p["version"],
         "error: " + p["error"] if p["error"] else ("enabled" if p["enabled"] else "disabled"))
        for p in host.plugin_states()])
    print("\n# runtimes")
    _table([("name", "plugin")] + [(r.name, r.plugin) for r in host.runtimes.values()])
    print("\n# listeners")
    _table([("address", "surfaces")] + [(f"{host.site.host}:{port}", ", ".join(s.name for s in group))
                                        for port, group in host.listeners().items()])
    print("\nconfiguration OK")
    return 0


def cmd_plugins(args: argparse.Namespace, level: str | None) -> int:
    from llama_host.config import read_yaml
    from llama_host.plugins import enabled_flags, installed_plugins

    flags = enabled_flags(read_yaml(args.config).get("plugins")) if args.config else {}
    rows: list[tuple[str, ...]] = [("name", "distribution", "version", "enabled")]
    for ep in installed_plugins():
        dist = ep.dist
        rows.append((ep.name, dist.name if dist else "?", dist.version if dist else "?",
                     "yes" if flags.get(ep.name, True) else "no"))
    _table(rows)
    return 0


def cmd_schema(args: argparse.Namespace, level: str | None) -> int:
    from llama_host.config import build_schema, read_yaml
    from llama_host.plugins import enabled_flags, make_plugin_manager, plugin_schemas

    flags = enabled_flags(read_yaml(args.config).get("plugins")) if args.config else {}
    pm, infos = make_plugin_manager(flags)
    print(json.dumps(build_schema(plugin_schemas(pm, infos)), indent=2))
    return 0


def cmd_discover(args: argparse.Namespace, level: str | None) -> int:
    from llama_host import logs

    host = _host(args)
    logs.configure(level or "warning")

    async def run() -> list[Any]:
        async with host.running():
            return host.scheduler.statuses()

    statuses = asyncio.run(run())
    rows = [("name", "source", "arch", "params", "quant", "ctx", "size", "path")]
    for s in statuses:
        md = s.metadata
        rows.append((s.name, s.source + (" (missing)" if s.missing else ""), str(md.get("architecture") or "-"),
                     _count(md.get("parameter_count")), str(md.get("quantization") or "-"),
                     str(md.get("context_length") or "-"), _bytes(md.get("size")), s.path or "-"))
    _table(rows)
    return 0


def cmd_import_config(args: argparse.Namespace, level: str | None) -> int:
    from llama_host.atomic import write_atomic
    from llama_host.legacy import convert_legacy_config

    try:
        data = json.loads(args.legacy.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{args.legacy}: cannot read legacy config: {exc}"]) from None
    notes: list[str] = []
    text = yaml.safe_dump(convert_legacy_config(data, base_dir=args.legacy.parent, notes=notes), sort_keys=False)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        write_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_pull(args: argparse.Namespace, level: str | None) -> int:
    from llama_host import logs
    from llama_host.catalogue import FILE_NAME, Catalogue
    from llama_host.config import managed_folder
    from llama_host.downloads import DownloadManager
    from llama_host.hub import BadModelName, parse_ref
    from llama_host.managed import record_pull

    logs.configure(level or "warning")
    if args.config is not None:
        host = _host(args)
        folder = host.site.models_dir or managed_folder(None, args.config)
        catalogue = Catalogue(args.config.resolve().parent / FILE_NAME)
    else:
        folder, catalogue = managed_folder(None, None), Catalogue(None)
    try:
        ref = parse_ref(args.model)
    except BadModelName as exc:
        print(f"llama-host: {exc.message}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> Job:
        manager = DownloadManager(folder)
        job = manager.pull(ref)
        shown: dict[str, int] = {}
        status = ""
        try:
            async for snap in job.follow():
                if snap["status"] != status:
                    status = snap["status"]
                    print(f"{status} {ref.name}", file=sys.stderr)
                for f in snap["files"]:
                    step = int(10 * f["completed"] / f["total"]) if f["total"] else 0
                    if shown.get(f["name"]) != step:
                        shown[f["name"]] = step
                        print(f"  {f['name']}: {_bytes(f['completed']) if f['completed'] else '0'} of "
                              f"{_bytes(f['total'])} ({step * 10}%)", file=sys.stderr)
        finally:
            await manager.close()
        return job

    job = asyncio.run(run())
    if job.status != "success":
        print(f"llama-host: pull failed: {job.error.message if job.error else job.status}", file=sys.stderr)
        return 1
    catalogue.load()
    record_pull(catalogue, job)
    catalogue.save()
    print(job.path)
    print(f"pulled {ref.name} into {folder}; a running host serves it after its next rescan "
          "(POST /api/v1/discovery/rescan, or at once when pulled through the host)", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace, level: str | None) -> int:
    from llama_host import logs
    from llama_host.worker import WorkerSupervisor, find_rpc_server, serve_worker

    if not 0 < args.rpc_port < 65536:
        print(f"llama-host worker: --rpc-port {args.rpc_port} is not a TCP port", file=sys.stderr)
        return EXIT_USAGE
    try:
        ipaddress.ip_address(args.host)
    except ValueError:  # rpc-server would look the name up while binding, and hang where no resolver answers
        print(f"llama-host worker: --host {args.host!r} is not a numeric address (e.g. 10.0.0.2)", file=sys.stderr)
        return EXIT_USAGE
    binary = find_rpc_server(args.binary)
    if binary is None:
        print("llama-host worker: rpc-server not found (run scripts/get-rpc-server or pass --binary)", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(level or "info")
    try:
        asyncio.run(serve_worker(WorkerSupervisor(binary, args.host, args.rpc_port, args.threads)))
    finally:
        logs.shutdown()
    return 0


def cmd_reload(args: argparse.Namespace, level: str | None) -> int:
    import os
    import signal
    import urllib.error
    import urllib.request

    from llama_host.config import expand_env, read_yaml

    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as exc:
            print(f"llama-host reload: cannot signal process {args.pid}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"sent SIGHUP to {args.pid}: the outcome is in the host's log and GET /api/v1/status (reload)",
              file=sys.stderr)
        return 0
    raw = expand_env(read_yaml(_need_config(args)), os.environ, [])
    keys = [k for k in raw.get("api_keys") or [] if isinstance(k, str) and k.strip()]
    url = (args.url or _main_url(raw)).rstrip("/") + "/api/v1/reload"
    status, body = 0, {}
    tries: list[str | None] = [*keys] or [None]
    for key in tries:
        request = urllib.request.Request(url, data=b"", method="POST",
                                         headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:
                status, body = response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                body = json.loads(exc.read() or b"{}")
            except ValueError:
                body = {}
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            print(f"llama-host reload: cannot reach the host at {url}: {reason} (is it running? --url sets its "
                  f"address, --pid PID sends it SIGHUP)", file=sys.stderr)
            return 1
        if status != 401:
            break
    if status == 200:
        print(f"reloaded: {body.get('summary') or 'nothing changed'}")
        for key in body.get("needs_restart") or []:
            print(f"  needs a restart: {key}")
        return 0
    if status == 422:
        print("llama-host reload: the host refused the site file and keeps its running configuration:",
              file=sys.stderr)
        for problem in body.get("problems") or []:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    message = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
    hint = " (the keys in the file are not the running host's: use --pid PID)" if status == 401 else ""
    print(f"llama-host reload: the host answered {status}: {message or body}{hint}", file=sys.stderr)
    return 1


def _main_url(raw: dict[str, Any]) -> str:
    """The URL of the main port of the host serving ``raw`` (a wildcard bind address is reached on loopback)."""
    address = str(raw.get("host") or "127.0.0.1")
    address = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address, address)
    if ":" in address:
        address = f"[{address.strip('[]')}]"
    return f"http://{address}:{raw.get('port') or 8000}"


def _count(n: Any) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _bytes(n: Any) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.2f}G" if n >= 2**30 else f"{n / 2**20:.1f}M"


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_COMMANDS = {"serve": cmd_serve, "check": cmd_check, "plugins": cmd_plugins, "schema": cmd_schema,
             "discover": cmd_discover, "import-config": cmd_import_config, "pull": cmd_pull,
             "worker": cmd_worker, "reload": cmd_reload}

if __name__ == "__main__":
    sys.exit(main())
