"""The catalogue (discovered.yaml): defaults, user edits kept across rescans, missing files, names, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from llama_host_discovery_gguf.catalogue import Catalogue, StateFileError, backups_of, unique_name
from llama_host_discovery_gguf.scan import Scanner

pytest.importorskip("gguf")


def scan_into(catalogue, folder, **kw):
    catalogue.load()
    changes = catalogue.merge(Scanner().scan([folder]).models, **kw)
    catalogue.save()
    return changes


def read_state(path):
    return yaml.safe_load(path.read_text())["models"]


def test_new_models_get_default_params_and_a_state_file(tmp_path, gguf_files):
    models = tmp_path / "models"
    gguf_files.model(models / "a.gguf")
    state = tmp_path / "discovered.yaml"
    cat = Catalogue(state, default_params={"ctx_size": 4096})
    changes = scan_into(cat, models)
    assert changes.added == ["a"] and not changes.changed and not changes.missing
    text = state.read_text()
    assert text.startswith("# llama-host: models found by the discovery_gguf plugin")
    entry = read_state(state)["a"]
    assert entry["path"] == str(models / "a.gguf")
    assert entry["params"] == {"ctx_size": 4096}
    assert entry["architecture"] == "llama" and entry["missing"] is False
    spec = cat.spec_dicts({}, "discovery_gguf")[0]
    assert spec["name"] == "a" and spec["params"] == {"ctx_size": 4096} and spec["source"] == "discovery_gguf"


def test_rescan_keeps_user_edits(tmp_path, gguf_files):
    models = tmp_path / "models"
    gguf_files.model(models / "a.gguf")
    gguf_files.model(models / "b.gguf")
    state = tmp_path / "discovered.yaml"
    scan_into(Catalogue(state, default_params={"ctx_size": 4096}), models)

    # The user renames a model, changes its params, adds aliases, hides another, and adds a comment-free key.
    data = yaml.safe_load(state.read_text())
    entry = data["models"].pop("a")
    entry["params"] = {"ctx_size": 16000, "n_gpu_layers": 99}
    entry["aliases"] = ["my-a"]
    entry["ttl"] = 60
    data["models"]["my-model"] = entry
    data["models"]["b"]["ignore"] = True
    state.write_text(yaml.safe_dump(data, sort_keys=False))

    gguf_files.model(models / "c.gguf")
    cat = Catalogue(state, default_params={"ctx_size": 2048})  # a restarted host, new defaults
    changes = scan_into(cat, models)
    assert changes.added == ["c"] and not changes.changed and not changes.missing
    after = read_state(state)
    assert set(after) == {"my-model", "b", "c"}
    assert after["my-model"]["params"] == {"ctx_size": 16000, "n_gpu_layers": 99}
    assert after["my-model"]["aliases"] == ["my-a"] and after["my-model"]["ttl"] == 60
    assert after["b"]["ignore"] is True
    assert after["c"]["params"] == {"ctx_size": 2048}
    specs = {s["name"]: s for s in cat.spec_dicts({}, "discovery_gguf")}
    assert set(specs) == {"my-model", "c"}
    assert specs["my-model"]["aliases"] == ["my-a"] and specs["my-model"]["ttl"] == 60


def test_vanished_files_are_marked_missing_then_come_back(tmp_path, gguf_files):
    models = tmp_path / "models"
    a = gguf_files.model(models / "a.gguf")
    state = tmp_path / "discovered.yaml"
    cat = Catalogue(state)
    scan_into(cat, models)
    moved = tmp_path / "a.gguf.away"
    os.rename(a, moved)
    changes = scan_into(cat, models)
    assert changes.missing == ["a"]
    entry = read_state(state)["a"]
    assert entry["missing"] is True and entry["missing_since"]
    assert cat.spec_dicts({}, "x")[0]["missing"] is True
    assert scan_into(cat, models).missing == []  # reported once

    os.rename(moved, a)
    changes = scan_into(cat, models)
    assert changes.added == ["a"]
    assert read_state(state)["a"]["missing"] is False


def test_changed_file_is_reported(tmp_path, gguf_files):
    models = tmp_path / "models"
    a = gguf_files.model(models / "a.gguf")
    cat = Catalogue(tmp_path / "d.yaml")
    scan_into(cat, models)
    gguf_files.model(a, n_vocab_words=50)
    assert scan_into(cat, models).changed == ["a"]


def test_name_clashes_get_stable_suffixes(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "m" / "bartowski" / "model-q4.gguf")
    gguf_files.model(tmp_path / "m" / "unsloth" / "model-q4.gguf")
    gguf_files.model(tmp_path / "m" / "qwen.gguf")
    cat = Catalogue(None)
    changes = scan_into(cat, tmp_path / "m", reserved={"qwen"})
    assert sorted(changes.added) == ["model-q4", "model-q4-unsloth", "qwen-m"]
    assert cat.entries["model-q4"]["path"].endswith("bartowski/model-q4.gguf")
    assert unique_name("x", "/a/b/x.gguf", {"x", "x-b"}) == unique_name("x", "/a/b/x.gguf", {"x", "x-b"})
    assert unique_name("x", "/a/b/x.gguf", {"x", "x-b"}).startswith("x-")


def test_backups_are_bounded_and_identical_scans_write_nothing(tmp_path, gguf_files):
    models = tmp_path / "models"
    state = tmp_path / "discovered.yaml"
    cat = Catalogue(state, backups=3)
    for i in range(6):
        gguf_files.model(models / f"m{i}.gguf")
        scan_into(cat, models)
    backups = backups_of(state)
    assert len(backups) == 3
    assert len(read_state(backups[-1])) == 5  # the version before the last write
    mtime = state.stat().st_mtime_ns
    scan_into(cat, models)
    assert state.stat().st_mtime_ns == mtime and len(backups_of(state)) == 3


def test_a_failed_write_leaves_the_old_file(tmp_path, gguf_files, monkeypatch):
    models = tmp_path / "models"
    state = tmp_path / "discovered.yaml"
    cat = Catalogue(state)
    gguf_files.model(models / "a.gguf")
    scan_into(cat, models)
    before = state.read_bytes()

    gguf_files.model(models / "b.gguf")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # the new version cannot be made durable: it must not replace the old
    with pytest.raises(OSError, match="disk full"):
        scan_into(cat, models)
    monkeypatch.undo()
    assert state.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_crash_mid_write_leaves_the_old_file(tmp_path):
    # A writer process killed (os._exit) halfway through writing the new catalogue.
    state = tmp_path / "discovered.yaml"
    state.write_text("version: 1\nmodels:\n  a: {path: /models/a.gguf}\n")
    before = state.read_bytes()
    script = textwrap.dedent(f"""
        import os
        from llama_host_discovery_gguf.catalogue import Catalogue
        real_fdopen = os.fdopen
        class Dying:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.f.close()
            def write(self, text):
                self.f.write(text[: len(text) // 2])
                self.f.flush()
                os._exit(9)
        os.fdopen = lambda *a, **k: Dying(real_fdopen(*a, **k))
        cat = Catalogue({str(state)!r})
        cat.load()
        cat.entries["b"] = {{"path": "/models/b.gguf"}}
        cat.save()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 9, proc.stderr
    assert state.read_bytes() == before
    cat = Catalogue(state)
    cat.load()
    assert list(cat.entries) == ["a"]


def test_a_broken_state_file_is_never_overwritten(tmp_path, gguf_files):
    models = tmp_path / "models"
    state = tmp_path / "discovered.yaml"
    cat = Catalogue(state)
    gguf_files.model(models / "a.gguf")
    scan_into(cat, models)
    state.write_text("models: [this is: not valid")
    broken = state.read_bytes()
    gguf_files.model(models / "b.gguf")
    with pytest.raises(StateFileError):
        cat.load()
    cat.merge(Scanner().scan([models]).models)
    assert cat.save() is False
    assert state.read_bytes() == broken
    assert {s["name"] for s in cat.spec_dicts({}, "x")} == {"a", "b"}  # still served from memory

    state.write_text(yaml.safe_dump({"version": 1, "models": {"a": {"path": str(models / "a.gguf"),
                                                                      "params": {"ctx_size": 1}}}}))
    changes = scan_into(cat, models)
    assert changes.added == ["b"]
    assert read_state(state)["a"]["params"] == {"ctx_size": 1}
