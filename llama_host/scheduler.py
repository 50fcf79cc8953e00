"""Models on demand: one runner per model, started when a request names it, shared by concurrent requests, unloaded
when idle, evicted (least recently used, idle, unpinned only) to respect the count and memory limits."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from llama_host.config import SchedulerSettings, parse_size
from llama_host.eventloop import Deadline
from llama_host.errors import (
    HostError,
    ModelNotFound,
    ModelTooLarge,
    QueueFull,
    QueueTimeout,
    RunnerStartError,
)
from llama_host.facts import (
    ModelFacts,
    applicable_load_params,
    model_facts,
    params_match,
    with_load_params,
)
from llama_host.models import NameIndex, merge
from llama_host.placement import (
    Group,
    Limits,
    Slot,
    backoff_left,
    backoff_seconds,
    can_admit,
    idle_seconds,
    plan,
)
from llama_host.plugins import live_hookimpls
from llama_host.process import LogBuffer
from llama_host.reload import model_diff, runner_changed
from llama_host.types import (
    ModelFailed,
    ModelLoaded,
    ModelLoading,
    ModelSpec,
    ModelState,
    ModelStatus,
    ModelUnloaded,
    Runner,
    RunnerLogDropped,
    RuntimeInfo,
    UnloadReason,
)
from llama_host.variants import embedding_variants

if TYPE_CHECKING:
    from llama_host.host import Host

log = logging.getLogger(__name__)

#: the plugin name of the core's own ``resolve_model`` (the last one asked: :meth:`Scheduler.default_resolve`)
CORE_RESOLVER = "llama_host.core"


def estimate_memory(spec: ModelSpec, runtime: RuntimeInfo | None = None, host: Host | None = None) -> int:
    """``memory:`` when configured; else the runtime's estimate (llama-server's: weights + KV cache at the context
    the runner runs with), else the files' size; 0 for a runtime that occupies no local memory (see
    :mod:`llama_host.facts`)."""
    return model_facts(spec, runtime, host).memory


#: The lifecycle of a model's runner; any other change is a bug, raised as InvalidTransition.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    "unloaded": frozenset({"loading"}),
    "loading": frozenset({"loaded", "failed"}),
    "loaded": frozenset({"stopping", "failed"}),  # failed: the runner crashed
    "stopping": frozenset({"unloaded"}),
    "failed": frozenset({"loading", "unloaded"}),  # unloaded: the host stops
}


class InvalidTransition(RuntimeError):
    """A model's state was asked to change in a way its lifecycle does not allow."""


class Entry:
    """The scheduler's bookkeeping for one model."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.state: ModelState = "unloaded"
        self.runner: Runner | None = None
        self.ready: asyncio.Task[None] | None = None
        self.stop_task: asyncio.Task[None] | None = None  # set while stopping
        self.watcher: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.last_used: float | None = None
        self.expires_at: float | None = None
        self.loaded_at: float | None = None
        self.load_seconds: float | None = None
        self.ttl_override: float | None = None
        self.active_params: dict[str, Any] = {}
        self.facts = ModelFacts()  # the spec's facts (configured), see llama_host.facts
        self.running_facts: ModelFacts | None = None  # the facts of the runner started (with its load params)
        self.error: str | None = None
        self.log_tail: list[str] = []
        self.failures = 0
        self.failed_at = 0.0
        self.pending = 0  # requests waiting for this model's start to finish
        self.memory = 0  # estimated bytes, see estimate_memory
        self.drainers = 0  # requests waiting for this model's in-flight requests to end before evicting it
        self.idle: Deadline | None = None  # when the model, idle, is unloaded (see _schedule_idle)
        self.logs = LogBuffer()
        #: the spec the current runner was started with (before load parameters)
        self.started_spec: ModelSpec | None = None
        #: the runner runs an older spec (a reload changed a field it was started with): it takes no new requests
        self.stale = False

    def move(self, to: ModelState) -> None:
        """Change the state along the lifecycle (``TRANSITIONS``); anything else raises InvalidTransition."""
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"model '{self.spec.name}': {self.state} -> {to} is not a transition")
        self.state = to

    @property
    def stopping(self) -> bool:
        return self.state == "stopping"

    @property
    def loaded(self) -> bool:
        return self.state == "loaded"

    @property
    def occupies(self) -> bool:
        """Holds a runner (loading or loaded); whether that takes local memory is its runtime's ``local``."""
        return self.state in ("loading", "loaded") and self.runner is not None


class Lease:
    """One request's hold on a running model; ``release()`` (or leaving ``async with``) ends it."""

    def __init__(self, scheduler: Scheduler, entry: Entry, queue_wait: float, load_seconds: float,
                 ttl: float | None) -> None:
        self._scheduler = scheduler
        self._entry = entry
        self.model = entry.spec
        self.runner: Runner = entry.runner  # type: ignore[assignment]
        self.queue_wait = queue_wait
        self.load_seconds = load_seconds
        self._ttl = ttl
        self._released = False

    @property
    def ttl(self) -> float | None:
        return self._ttl

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self._entry, self._ttl)

    def move_to(self, fresh: Lease) -> None:
        """Continue on ``fresh``'s runner (a new runner of the same model, after this lease's failed): this lease,
        already released, takes over ``fresh``'s hold, and the time ``fresh`` waited counts for this request too."""
        if not self._released or fresh._released:
            raise RuntimeError("move_to: this lease must be released and the new one held")
        self._entry, self.runner = fresh._entry, fresh.runner
        self.queue_wait += fresh.queue_wait
        self.load_seconds += fresh.load_seconds
        self._released, fresh._released = False, True

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Scheduler:
    def __init__(self, host: Host, settings: SchedulerSettings, runtimes: Mapping[str, RuntimeInfo]) -> None:
        self.host = host
        self.settings = settings
        self.runtimes = runtimes
        self._resolvers = live_hookimpls(host.pm.hook.resolve_model)
        self.memory_budget, self.limits = _limits(settings)
        self.entries: dict[str, Entry] = {}
        #: models gone from the catalogue whose runner still stops (after its in-flight requests)
        self._retiring: set[Entry] = set()
        #: restarts and retirements under way (a reload's runner changes)
        self._changes: set[asyncio.Task[None]] = set()
        self._names = NameIndex()
        self._changed = asyncio.Event()
        self._watching = 0  # tasks in _change()
        self._stops: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._closed = False

    # --- the catalogue ------------------------------------------------------------------------------------------

    @property
    def models(self) -> dict[str, ModelSpec]:
        return {name: e.spec for name, e in self.entries.items()}

    def set_models(self, configured: Mapping[str, ModelSpec], discovered: list[ModelSpec]) -> None:
        """Take the merged models (llama_host.models), applying the difference: a model whose runner was started
        with a field that changed (``llama_host.reload.RUNNER_FIELDS``) restarts once its in-flight requests are done
        (new requests wait for the new runner); other changes (aliases, ttl, pinned, priority...) apply at once and
        the runner stays; a model gone from the catalogue leaves the name index now and its runner stops after its
        in-flight requests."""
        merged = merge(configured, discovered)
        merged.update(embedding_variants(merged, self.runtimes, self.host))  # <name>@embed: see llama_host.variants
        for name, spec in merged.items():
            entry = self.entries.get(name)
            if entry is None:
                entry = self.entries[name] = Entry(spec)
            elif entry.spec is not spec:
                self._respec(entry, spec)
            entry.facts = model_facts(spec, self.runtimes.get(spec.runtime), self.host)  # once per catalogue change
            entry.memory = entry.facts.memory
        for name in [n for n in self.entries if n not in merged]:
            entry = self.entries.pop(name)
            if entry.state in ("loading", "loaded", "stopping"):
                self._retire(entry)
        self._names = NameIndex(e.spec for e in self.entries.values())

    def _respec(self, entry: Entry, spec: ModelSpec) -> None:
        """A model's spec changed: restart its runner when the runner depends on what changed, else apply live."""
        old, entry.spec = entry.spec, spec
        restart, live = model_diff(old, spec)
        if restart:
            entry.failures = 0  # a changed spec is a new try: no backoff from the old one's failures
        started = entry.started_spec
        if entry.state == "loading" and entry.stale and started is not None and not runner_changed(started, spec):
            entry.stale = False  # changed back before the runner was up: it runs what is wanted
        if entry.state in ("loading", "loaded") and started is not None and runner_changed(started, spec):
            if not entry.stale:
                entry.stale = True
                log.info("model %s: its runner restarts with the new settings once its requests are done",
                         spec.name)
                if entry.state == "loaded":
                    self._begin_unload(entry, "reload")  # at once: no new request gets the old runner
                self._track(self._restart(entry))
        elif live and (old.ttl, old.pinned) != (spec.ttl, spec.pinned) and entry.state == "loaded" \
                and not entry.in_flight:
            self._schedule_idle(entry)  # the idle timer with the new ttl

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    async def _stop_runner(self, entry: Entry, reason: UnloadReason, *, only_stale: bool = False) -> bool:
        """Stop ``entry``'s runner once its in-flight requests are done (a start under way finishes first); True
        when a runner was running (``only_stale``: and still runs an older spec)."""
        if entry.state == "loading" and entry.ready is not None:
            await asyncio.wait([entry.ready])  # its failure is the start's to report
        if entry.state == "loaded" and (entry.stale or not only_stale):
            await asyncio.shield(self._begin_unload(entry, reason))
            return True
        if entry.state == "stopping" and entry.stop_task is not None:
            await asyncio.shield(entry.stop_task)
            return True
        return False

    async def _restart(self, entry: Entry) -> None:
        """A reload changed what ``entry``'s runner was started with: stop it after its requests, start the new one."""
        try:
            if not await self._stop_runner(entry, "reload", only_stale=True) or self._closed:
                return
            if self.entries.get(entry.spec.name) is not entry or entry.state not in ("unloaded", "failed"):
                return  # removed meanwhile, or a request started the new runner already
            await self.load(entry.spec.name)
        except HostError as exc:
            log.error("model %s: restart with the new settings failed: %s", entry.spec.name, exc.detail())
        except Exception:
            log.exception("model %s: restart with the new settings failed", entry.spec.name)

    def _retire(self, entry: Entry) -> None:
        """A model left the catalogue while its runner runs: no new request finds it; the runner stops after the
        requests in flight."""
        self._retiring.add(entry)
        log.info("model %s was removed: its runner stops once its requests are done", entry.spec.name)

        async def retire() -> None:
            try:
                await self._stop_runner(entry, "reload")
            except Exception:
                log.exception("model %s: stopping the removed model's runner failed", entry.spec.name)
            finally:
                self._retiring.discard(entry)

        self._track(retire())

    def update_settings(self, settings: SchedulerSettings) -> None:
        """New ``scheduler`` settings (a reload): limits and timeouts apply to the next decision, idle timers are set
        again with the new ``ttl``; running models are not stopped to fit tighter limits."""
        self.settings = settings
        self.memory_budget, self.limits = _limits(settings)
        for entry in self.entries.values():
            if entry.state == "loaded" and not entry.in_flight:
                self._schedule_idle(entry)
        self._notify()

    def resolve(self, requested: str, surface: str = "") -> ModelSpec | None:
        hook = self.host.pm.hook.resolve_model
        impls = self._resolvers if self._resolvers is not None else hook.get_hookimpls()
        if len(impls) == 1 and impls[0].plugin_name == CORE_RESOLVER and not self.host.hooks_traced:
            # no plugin resolves names: the core's answer, without a pluggy call per request (~16k instructions)
            return self.default_resolve(requested)
        spec: ModelSpec | None = hook(host=self.host, requested=requested, surface=surface)
        return spec

    def default_resolve(self, requested: str) -> ModelSpec | None:
        """Exact name, then case-insensitive name or alias, then without an Ollama ``:latest`` tag."""
        name = self._names.lookup(requested)
        return self.entries[name].spec if name is not None else None

    def get(self, requested: str, surface: str = "") -> ModelSpec:
        spec = self.resolve(requested, surface)
        if spec is None:
            raise ModelNotFound(requested)
        return spec

    # --- leases -------------------------------------------------------------------------------------------------

    async def acquire(self, name: str, *, ttl: float | None = None,
                      load_params: Mapping[str, Any] | None = None) -> Lease:
        entry = self.entries.get(name) or self._entry(name)  # a name, then an alias
        if load_params:
            load_params = applicable_load_params(self.runtimes.get(entry.spec.runtime), load_params)
        started = time.monotonic()
        self._check_alive(entry)
        ready = (entry.state == "loaded" and not entry.drainers and not entry.stale
                 and (not load_params or self._params_match(entry, load_params))
                 and can_admit(entry.in_flight, entry.spec.max_concurrent))
        loaded_at = entry.loaded_at
        if not ready:
            if self._waiting >= self.settings.max_queue:
                raise QueueFull(f"too many requests waiting for models ({self._waiting})", retry_after=5)
            self._waiting += 1
            try:
                # the wait runs in this task, so nothing can take the admitted place before in_flight counts it
                async with asyncio.timeout(self.settings.queue_timeout):
                    await self._wait_admitted(entry, dict(load_params or {}))
            except TimeoutError:
                raise QueueTimeout(f"model '{entry.spec.name}' was not ready within {self.settings.queue_timeout:g}s",
                                   retry_after=10) from None
            finally:
                self._waiting -= 1
        entry.in_flight += 1
        entry.last_used = time.time()
        entry.expires_at = None
        if entry.idle is not None:
            entry.idle.drop()  # its timer stays: the release sets the deadline again
        waited = time.monotonic() - started
        return Lease(self, entry, waited, waited if entry.loaded_at != loaded_at else 0.0, ttl)

    async def _wait_admitted(self, entry: Entry, load_params: dict[str, Any]) -> None:
        """Until the model is loaded (with these load parameters) and below its ``max_concurrent``."""
        while True:
            await self._ensure_loaded(entry, load_params)
            if can_admit(entry.in_flight, entry.spec.max_concurrent):
                return
            await self._change()

    def lease(self, name: str, *, ttl: float | None = None,
              load_params: Mapping[str, Any] | None = None) -> contextlib.AbstractAsyncContextManager[Lease]:
        @contextlib.asynccontextmanager
        async def hold() -> AsyncIterator[Lease]:
            lease = await self.acquire(name, ttl=ttl, load_params=load_params)
            try:
                yield lease
            finally:
                lease.release()

        return hold()

    async def load(self, name: str, ttl: float | None = None) -> float:
        lease = await self.acquire(name, ttl=ttl)
        lease.release()
        return lease.load_seconds

    async def preload(self, names: list[str]) -> None:
        """Start ``names`` one after another (``scheduler.preload``); a model that fails is logged and skipped."""
        for name in names:
            try:
                await self.load(name)
            except HostError as exc:
                log.error("preload: %s", exc.detail())

    async def unload(self, name: str, reason: UnloadReason = "requested") -> bool:
        """Unload a model once its in-flight requests have finished; False when it was not loaded."""
        entry = self._entry(name)
        if entry.state == "loading" and entry.ready:
            with contextlib.suppress(Exception):
                await asyncio.shield(entry.ready)
        if entry.stopping:
            assert entry.stop_task is not None
            await asyncio.shield(entry.stop_task)
            return True
        if entry.state != "loaded":
            return False
        await asyncio.shield(self._begin_unload(entry, reason))
        return True

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            spec = self.default_resolve(name)
            if spec is None:
                raise ModelNotFound(name)
            entry = self.entries[spec.name]
        return entry

    def _params_match(self, entry: Entry, load_params: Mapping[str, Any]) -> bool:
        return params_match(entry.running_facts or entry.facts, load_params)

    async def _ensure_loaded(self, entry: Entry, load_params: dict[str, Any]) -> None:
        while True:
            if self._closed:
                raise HostError("the host is shutting down")
            if entry.stopping:
                assert entry.stop_task is not None
                await asyncio.shield(entry.stop_task)
                continue
            if entry.state == "loading":
                assert entry.ready is not None
                entry.pending += 1  # joined this start: counts as busy, so nobody evicts it before we lease it
                try:
                    await asyncio.shield(entry.ready)
                finally:
                    entry.pending -= 1
                if entry.loaded and not entry.stale and (  # the property: mypy keeps entry.state narrowed
                        not load_params or self._params_match(entry, load_params)):
                    return
                continue
            if entry.state == "loaded" and entry.drainers:
                await self._change()  # a swap waits for this model to drain: queue behind it
                continue
            if entry.state == "loaded":
                if not entry.stale and (not load_params or self._params_match(entry, load_params)):
                    return
                self._begin_unload(entry, "reload")
                continue
            if entry.state == "failed" and entry.failures >= 2:
                wait = backoff_left(entry.failures, time.monotonic() - entry.failed_at)
                if wait > 0:
                    raise RunnerStartError(f"model '{entry.spec.name}' failed to start {entry.failures} times in a "
                                           f"row; next try in {wait:.0f}s. Last error: {entry.error}",
                                           retry_after=wait, log_tail=entry.log_tail)
            spec = with_load_params(entry.spec, load_params)
            facts = model_facts(spec, self.runtimes.get(spec.runtime), self.host) if load_params else entry.facts
            entry.memory = facts.memory  # the room this start needs: at the context it will run with
            entry.runner = self._make_runner(spec)
            entry.started_spec, entry.stale = entry.spec, False
            drain = self._plan_room(entry)
            if drain is None:
                entry.move("loading")
                entry.active_params = load_params
                entry.running_facts = facts
                entry.ready = asyncio.create_task(self._start(entry))
                entry.ready.add_done_callback(lambda t: t.cancelled() or t.exception())
                continue
            # Wait for the chosen busy models to finish their in-flight requests; meanwhile they take no new ones,
            # so a steady stream of requests for them cannot starve this one.
            for e in drain:
                e.drainers += 1
            try:
                await self._change()
            finally:
                for e in drain:
                    e.drainers -= 1

    def _make_runner(self, spec: ModelSpec) -> Runner:
        info = self.runtimes.get(spec.runtime)
        if info is None:
            raise RunnerStartError(f"model '{spec.name}': unknown runtime '{spec.runtime}'")
        runner = info.factory(spec, self.host)
        if isinstance(runner.logs, LogBuffer):
            runner.logs.on_dropped = lambda n: self.host.emit(RunnerLogDropped(model=spec.name, lines=n))
        return runner

    def _plan_room(self, entry: Entry) -> list[Entry] | None:
        """Apply the placement policy (llama_host.placement) for starting ``entry`` now: unload the idle models it
        chooses. ``None`` = start now; else the models to wait for (busy ones draining, or a start in progress).
        Raises when the model can never fit."""
        running = [_slot(e, self._local(e)) for e in self.entries.values() if e is not entry and e.occupies]
        decision = plan(_slot(entry, self._local(entry)), running, self.limits)
        if decision.action == "refuse":
            raise ModelTooLarge(decision.reason)
        if decision.action == "wait":
            return []
        if decision.action == "drain":
            return [self.entries[name] for name in decision.drain]
        for name in decision.evict:
            self._begin_unload(self.entries[name], "evicted")
        return None

    def _local(self, entry: Entry) -> bool:
        """Whether ``entry``'s runners occupy local memory, as its runtime registered (``register(..., local=)``)."""
        info = self.runtimes.get(entry.spec.runtime)
        return info is None or info.local

    async def _start(self, entry: Entry) -> None:
        runner = entry.runner
        assert runner is not None  # made before the start is planned
        entry.logs = runner.logs
        if self._stops:
            await asyncio.gather(*[asyncio.shield(t) for t in list(self._stops)], return_exceptions=True)
        self.host.emit(ModelLoading(model=entry.spec.name))
        t0 = time.monotonic()
        try:
            await runner.start(self.settings.startup_timeout)
        except BaseException as exc:
            error = exc if isinstance(exc, HostError) else RunnerStartError(
                f"model '{entry.spec.name}': {type(exc).__name__}: {exc}", log_tail=runner.logs.tail())
            entry.move("failed")
            entry.error, entry.log_tail = error.message, error.log_tail
            entry.failures += 1
            entry.failed_at = time.monotonic()
            if entry.failures >= 2 and isinstance(error, RunnerStartError):  # say when the next start may happen
                wait = backoff_seconds(entry.failures)
                error = RunnerStartError(f"{error.message} (failed {entry.failures} times in a row; next try in "
                                         f"{wait:.0f}s)", retry_after=wait, log_tail=error.log_tail)
            with contextlib.suppress(Exception):
                await runner.stop(1.0)
            self.host.emit(ModelFailed(model=entry.spec.name, error=error.message, log_tail=error.log_tail))
            log.error("%s", error.detail())
            self._notify()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise error from None
        entry.load_seconds = time.monotonic() - t0
        entry.loaded_at = time.time()
        entry.last_used = entry.last_used or entry.loaded_at
        entry.move("loaded")
        entry.error, entry.log_tail, entry.failures = None, [], 0
        entry.watcher = asyncio.create_task(self._watch(entry, runner))
        log.info("model %s loaded in %.2fs (pid %s, %s)", entry.spec.name, entry.load_seconds, runner.pid,
                 "/".join(runner.base_url.split("/")[:3]))  # a path on it may be a secret (whisper-server's)
        self.host.emit(ModelLoaded(model=entry.spec.name, load_seconds=entry.load_seconds, pid=runner.pid))
        self._schedule_idle(entry)
        self._notify()

    async def _watch(self, entry: Entry, runner: Runner) -> None:
        code = await runner.wait()
        if entry.runner is not runner or entry.state != "loaded" or self._closed:
            return
        self._crashed(entry, runner, code, runner.exit_reason)

    def _check_alive(self, entry: Entry) -> None:
        """A loaded runner whose process has already ended (the watcher may not have run yet) is marked crashed, so
        the request asking now starts a new one instead of failing against a dead port."""
        runner = entry.runner
        if entry.state == "loaded" and not self._closed and runner is not None and runner.exited():
            self._crashed(entry, runner, runner.exit_status())

    async def reacquire(self, lease: Lease, why: str) -> None:
        """The lease's runner failed before serving anything (it refuses connections, or it has exited). Mark it
        crashed, stop it, and move the lease to a new runner of the same model."""
        entry, runner = lease._entry, lease.runner
        if entry.runner is runner and entry.state == "loaded":
            self._crashed(entry, runner, runner.exit_status(), why)
            await runner.stop(1.0)
        lease.release()
        lease.move_to(await self.acquire(entry.spec.name, ttl=lease.ttl))

    async def runner_exit_status(self, runner: Runner, within: float = 0.0) -> int | None:
        """How a local runner's process ended (exit code, or minus the signal), waiting up to ``within`` seconds for
        it to end; ``None`` if it still runs (or cannot tell). A SIGKILLed runner closes its sockets a moment before
        the kernel reports it gone, so a refused or reset connection can come first."""
        if not runner.local:
            return None
        deadline = time.monotonic() + within
        while (code := runner.exit_status()) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.005)
        return code

    def _crashed(self, entry: Entry, runner: Runner, code: int | None, why: str | None = None) -> None:
        tail = runner.logs.tail()
        entry.move("failed")
        entry.log_tail = tail
        entry.error = f"model '{entry.spec.name}': runner {why or f'exited unexpectedly (code {code})'}"
        entry.failures += 1
        entry.failed_at = time.monotonic()
        self._cancel_timer(entry)
        log.error("%s\n%s", entry.error, "\n".join(tail))
        self.host.emit(ModelUnloaded(model=entry.spec.name, reason="crashed"))
        self.host.emit(ModelFailed(model=entry.spec.name, error=entry.error, log_tail=tail))
        self._notify()

    def _begin_unload(self, entry: Entry, reason: UnloadReason) -> asyncio.Task[None]:
        if entry.stopping:
            assert entry.stop_task is not None
            return entry.stop_task
        entry.move("stopping")
        entry.stop_task = asyncio.create_task(self._unload(entry, reason))
        self._stops.add(entry.stop_task)
        entry.stop_task.add_done_callback(self._stops.discard)
        return entry.stop_task

    async def _unload(self, entry: Entry, reason: UnloadReason) -> None:
        while entry.in_flight > 0:  # never cut an in-flight request
            await self._change()
        self._cancel_timer(entry)
        runner = entry.runner
        if runner is not None:
            await runner.stop(self.settings.stop_grace)
        if entry.watcher:
            entry.watcher.cancel()
        entry.move("unloaded")
        entry.expires_at, entry.active_params, entry.running_facts = None, {}, None
        entry.memory = entry.facts.memory
        entry.ttl_override = None
        log.info("model %s unloaded (%s)", entry.spec.name, reason)
        self.host.emit(ModelUnloaded(model=entry.spec.name, reason=reason))
        self._notify()

    # --- idle unload --------------------------------------------------------------------------------------------

    def _release(self, entry: Entry, ttl: float | None) -> None:
        entry.in_flight -= 1
        entry.last_used = time.time()
        if ttl is not None:
            entry.ttl_override = ttl
        if entry.in_flight == 0:
            self._schedule_idle(entry)
        self._notify()

    def _idle_for(self, entry: Entry) -> float | None:
        if entry.ttl_override is not None:
            return idle_seconds(entry.ttl_override)
        if entry.spec.pinned:
            return None
        ttl = entry.spec.ttl if entry.spec.ttl is not None else self.settings.ttl
        return None if ttl <= 0 else float(ttl)

    def _schedule_idle(self, entry: Entry) -> None:
        if entry.in_flight or entry.state != "loaded" or self._closed:
            self._cancel_timer(entry)
            return
        seconds = self._idle_for(entry)
        if seconds is None:
            self._cancel_timer(entry)
            entry.expires_at = None
            return
        entry.expires_at = time.time() + seconds
        if seconds == 0:
            self._cancel_timer(entry)
            entry.ttl_override = None
            self._begin_unload(entry, "ttl")
            return
        if entry.idle is None:  # one timer per idle model, moved by each release (not a new one per request)
            entry.idle = Deadline(asyncio.get_running_loop(), functools.partial(self._expire, entry))
        entry.idle.after(seconds)

    def _expire(self, entry: Entry) -> None:
        if entry.state == "loaded" and entry.in_flight == 0:
            self._begin_unload(entry, "ttl")

    @staticmethod
    def _cancel_timer(entry: Entry) -> None:
        if entry.idle is not None:
            entry.idle.cancel()
            entry.idle = None

    async def _change(self) -> None:
        """Until the next change of a model's state or load (:meth:`_notify`)."""
        self._watching += 1
        try:
            await self._changed.wait()
        finally:
            self._watching -= 1

    def _notify(self) -> None:
        if self._watching:  # a new event only when a task waits: each release notifies, and mostly none does
            self._changed.set()
            self._changed = asyncio.Event()

    # --- views and shutdown -------------------------------------------------------------------------------------

    def status(self, name: str) -> ModelStatus:
        e = self._entry(name)
        s = e.spec
        runner = e.runner if e.state in ("loading", "loaded") else None
        return ModelStatus(
            name=s.name, state=e.state, runtime=s.runtime, source=s.source, aliases=list(s.aliases),
            memory=e.memory, in_flight=e.in_flight, pinned=s.pinned, unlisted=s.unlisted, missing=s.missing,
            ttl=self._idle_for(e), last_used=e.last_used, expires_at=e.expires_at,
            loaded_at=e.loaded_at if e.state == "loaded" else None, load_seconds=e.load_seconds,
            pid=runner.pid if runner else None, error=e.error, path=s.path, metadata=dict(s.metadata),
            priority=s.priority, max_concurrent=s.max_concurrent,
            group=getattr(self.limits.group_of(s.name), "name", None),
            facts=self.facts(name), details=dict(runner.details) if runner else {})

    def facts(self, name: str) -> ModelFacts:
        """What the model runs with now (its runner's facts, load parameters included), else what it would."""
        e = self._entry(name)
        if e.running_facts is not None and e.state in ("loading", "loaded"):
            return e.running_facts
        return e.facts

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in sorted(self.entries)]

    def logs(self, name: str) -> LogBuffer:
        return self._entry(name).logs

    async def shutdown(self) -> None:
        self._closed = True
        self._notify()
        tasks: list[Awaitable[None]] = [asyncio.shield(t) for t in self._stops]  # stops under way finish first
        for task in list(self._changes):
            task.cancel()
        for entry in [*self.entries.values(), *self._retiring]:
            self._cancel_timer(entry)
            if entry.ready and not entry.ready.done():
                entry.ready.cancel()
            if entry.runner is not None and entry.state in ("loading", "loaded"):
                tasks.append(self._shutdown_one(entry))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown_one(self, entry: Entry) -> None:
        was_loaded = entry.state == "loaded"
        if was_loaded:
            entry.move("stopping")
        assert entry.runner is not None
        await entry.runner.stop(self.settings.stop_grace)
        if entry.watcher:
            entry.watcher.cancel()
        if entry.ready is not None:
            await asyncio.wait([entry.ready])  # a start cancelled above ends as failed
        if entry.state in ("stopping", "failed"):
            entry.move("unloaded")
        if was_loaded:
            self.host.emit(ModelUnloaded(model=entry.spec.name, reason="shutdown"))

    def kill_all(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL every local runner still alive."""
        for entry in [*self.entries.values(), *self._retiring]:
            if entry.runner is not None:
                entry.runner.kill_now()


def _limits(settings: SchedulerSettings) -> tuple[int | None, Limits]:
    """The memory budget in bytes and the placement limits of ``settings``."""
    budget = parse_size(settings.memory_budget) if settings.memory_budget is not None else None
    return budget, Limits(max_loaded=settings.max_loaded, memory_budget=budget,
                          groups=[Group(name, frozenset(g.members), swap=g.swap, exclusive=g.exclusive,
                                        persistent=g.persistent) for name, g in settings.groups.items()])


def _slot(e: Entry, local: bool) -> Slot:
    """An entry as the placement policy sees it (``local``: its runtime occupies local memory)."""
    return Slot(e.spec.name, memory=e.memory, state="loading" if e.state == "loading" else "loaded",
                in_flight=e.in_flight, pending=e.pending, last_used=e.last_used or 0.0, priority=e.spec.priority,
                pinned=e.spec.pinned,
                local=local)
