"""The site files of docs/deployment.md are valid site files (every node of the three-node example)."""

import re
from pathlib import Path

import yaml

from llama_host.host import Host

DOC = Path(__file__).parents[2] / "docs" / "deployment.md"


def site_files() -> dict[str, dict]:
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"### Node (\w) — `/etc/llama-host/site.yaml`\s*```yaml\n(.*?)```", text, re.S)
    return {node: yaml.safe_load(body) for node, body in found}


def test_every_node_of_the_example_is_a_valid_site(tmp_path):
    files = site_files()
    assert sorted(files) == ["A", "B", "C"]
    env = {"LLAMA_HOST_KEY": "k1", "CLIENT_KEY": "k2"}
    hosts = {node: Host.from_config(data={**data, "log_dir": str(tmp_path / node)}, env=env)
             for node, data in files.items()}
    a = hosts["A"]
    assert [p.url for p in a.site.peers] == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    assert a.site.models["llama-3.3-70b"].rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert "peer" in a.runtimes  # the peer pool is in A's plugin manager
    assert set(hosts["B"].site.models) & set(hosts["C"].site.models) == {"qwen2.5-7b"}  # the replica
