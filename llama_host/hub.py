"""Hugging Face model names and the choice of files in a repository: pure functions, no network.

Accepted names (``quant`` is matched case-insensitively against the GGUF file names of the repository)::

    hf.co/{user}/{repo}[:{quant}]          Ollama's form (``huggingface.co/...`` too)
    https://huggingface.co/{user}/{repo}   LM Studio's form (the host is only a name: files come from HF_ENDPOINT)
    {user}/{repo}[:{quant}]

Anything else is refused before a byte moves: ``..``, absolute paths, other URLs, backslashes, control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llama_host.errors import BadRequest

#: Quantizations tried in this order when a name gives none and the repository has more than one model file.
DEFAULT_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q8_0")

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")
_HOSTS = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")
SPLIT = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


class BadModelName(BadRequest):
    """A model name that is not a Hugging Face repository name (or a path or URL in disguise)."""

    code = "invalid_model_name"


@dataclass(frozen=True)
class HubRef:
    """A model on the hub: ``repo`` is ``user/name``; ``quant`` ``None`` means "the default one"."""

    repo: str
    quant: str | None = None
    revision: str = "main"

    @property
    def name(self) -> str:
        """The Ollama-style name: ``hf.co/user/repo:QUANT`` (the name a pulled model answers to)."""
        return f"hf.co/{self.repo}" + (f":{self.quant}" if self.quant else "")

    @property
    def key(self) -> str:
        return self.name.lower()


def parse_ref(text: str) -> HubRef:
    """Read a model name; raise :class:`BadModelName` saying why it is refused."""
    if not isinstance(text, str) or not text.strip():
        raise BadModelName("a model name is required (hf.co/{user}/{repo}:{quant} or {user}/{repo}:{quant})",
                           param="model")
    raw = text.strip()
    if any(ord(c) < 32 or c in "\\\x7f" for c in raw) or ".." in raw:
        raise BadModelName(f"invalid model name {raw!r}: '..', backslashes and control characters are not allowed",
                           param="model")
    name = raw
    lowered = raw.lower()
    for prefix in _HOSTS:
        if lowered.startswith(prefix):
            name = raw[len(prefix):]
            break
    else:
        if "://" in raw or raw.startswith(("/", "~")) or lowered.startswith(("http:", "https:", "file:")):
            raise BadModelName(f"invalid model name {raw!r}: only Hugging Face names are pulled "
                               "(hf.co/{user}/{repo}:{quant}), not paths or other URLs", param="model")
    name = name.rstrip("/")
    quant: str | None = None
    if ":" in name:
        name, quant = name.rsplit(":", 1)
        if quant.lower() == "latest" or not quant:
            quant = None
        elif not _QUANT.match(quant):
            raise BadModelName(f"invalid quantization {quant!r} in {raw!r}", param="model")
    parts = name.split("/")
    if len(parts) != 2 or not all(_PART.match(p) for p in parts) or any("--" in p for p in parts):
        raise BadModelName(f"invalid model name {raw!r}: expected {{user}}/{{repo}} (letters, digits, '-', '_', '.'), "
                           "optionally hf.co/ before it and :{quant} after it", param="model")
    return HubRef(repo=name, quant=quant)


@dataclass
class HubFile:
    """One file of a repository as ``/api/models/{repo}?blobs=true`` lists it."""

    path: str
    size: int | None = None
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob id (sha1) of small files

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"sha1:{self.blob_id or ''}"


@dataclass
class Plan:
    """What one pull fetches: the model's files (split parts in order) and its projector, if the repo has one."""

    ref: HubRef
    commit: str
    model: list[HubFile]
    mmproj: HubFile | None = None
    quant: str | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[HubFile]:
        return [*self.model, *([self.mmproj] if self.mmproj else [])]

    @property
    def total(self) -> int:
        return sum(f.size or 0 for f in self.files)


def _quant_re(quant: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)


def _is_projector(path: str) -> bool:
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


def _groups(files: list[HubFile]) -> dict[str, list[HubFile]]:
    """Model files by model: a split model's parts under one key (ordered), a single file under its own path."""
    groups: dict[str, list[HubFile]] = {}
    for f in files:
        m = SPLIT.match(f.path)
        key = f"{m.group('base')}-of-{m.group('count')}".lower() if m else f.path.lower()
        groups.setdefault(key, []).append(f)
    for parts in groups.values():
        parts.sort(key=lambda f: f.path)
    return groups


def quant_of(path: str) -> str | None:
    """The quantization named in a file name (``...-Q4_K_M.gguf`` → ``Q4_K_M``), for messages and listings."""
    m = re.search(r"(?<![A-Za-z0-9])(I?Q[0-9][A-Za-z0-9_]*?|F16|BF16|F32)(?=[-.]|$)",
                  SPLIT.sub(lambda m: m.group("base") + ".gguf", path.rsplit("/", 1)[-1]), re.IGNORECASE)
    return m.group(1).upper() if m else None


def choose_files(ref: HubRef, siblings: list[HubFile], commit: str = "") -> Plan:
    """Pick the GGUF files of ``ref`` among a repository's files; raise :class:`BadRequest` naming the choices."""
    ggufs = [f for f in siblings if f.path.lower().endswith(".gguf")]
    models = [f for f in ggufs if not _is_projector(f.path)]
    projectors = sorted((f for f in ggufs if _is_projector(f.path)), key=lambda f: f.path)
    if not models:
        raise BadRequest(f"'{ref.repo}' has no GGUF model file", param="model")
    groups = _groups(models)
    available = sorted({q for q in (quant_of(g[0].path) for g in groups.values()) if q})
    chosen: list[HubFile] | None = None
    quant = ref.quant
    if quant:
        matches = [g for g in groups.values() if _quant_re(quant).search(g[0].path)]
        if not matches:
            raise BadRequest(f"'{ref.repo}' has no GGUF file for quantization '{quant}' "
                             f"(available: {', '.join(available) or 'none named'})", param="model")
        if len(matches) > 1:
            raise BadRequest(f"'{quant}' matches several models in '{ref.repo}': "
                             f"{', '.join(g[0].path for g in matches)}", param="model")
        chosen = matches[0]
    elif len(groups) == 1:
        chosen = next(iter(groups.values()))
    else:
        for q in DEFAULT_QUANTS:
            matches = [g for g in groups.values() if _quant_re(q).search(g[0].path)]
            if len(matches) == 1:
                chosen, quant = matches[0], q
                break
        if chosen is None:
            raise BadRequest(f"'{ref.repo}' has several GGUF models: name one with :QUANT "
                             f"(available: {', '.join(available) or ', '.join(g[0].path for g in groups.values())})",
                             param="model")
    m = SPLIT.match(chosen[0].path)
    if m and len(chosen) != int(m.group("count")):
        raise BadRequest(f"'{ref.repo}': split model {chosen[0].path} lists {len(chosen)} of "
                         f"{int(m.group('count'))} parts", param="model")
    mmproj = None
    if projectors:
        folder = chosen[0].path.rpartition("/")[0]
        near = [p for p in projectors if p.path.rpartition("/")[0] == folder] or projectors
        preferred = [p for p in near if re.search(r"f16", p.name, re.IGNORECASE)]
        mmproj = (preferred or near)[0]
    return Plan(ref=ref, commit=commit, model=chosen, mmproj=mmproj, quant=quant_of(chosen[0].path) or quant)
