import dataclasses

import pytest

from claude_net import ConfigError
from claude_net.config import load_settings, starter_config


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.core.port == 8765 and s.core.host == "127.0.0.1"
    assert s.core.database_url == f"sqlite+aiosqlite:///{tmp_path / 'claude-net.db'}"


def test_file_and_env_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 9000\nadmins = ["chasclaude"]\n[messaging]\nmax_bytes = 10\n')
    s = load_settings(cfg, environ={"CLAUDE_NET_PORT": "9100", "CLAUDE_NET_MESSAGING__MAX_WAIT": "5",
                                    "CLAUDE_NET_DATABASE_URL": "sqlite+aiosqlite:////x.db",
                                    "CLAUDE_NET_TOKEN": "ignored-client-var"})
    assert s.core.port == 9100 and s.core.admins == ["chasclaude"]
    assert s.messaging.max_bytes == 10 and s.messaging.max_wait == 5.0
    assert s.core.database_url == "sqlite+aiosqlite:////x.db"
    # the default database lives next to the config file
    assert load_settings(cfg, environ={}).core.database_url.endswith(str(tmp_path / "claude-net.db"))


def test_env_list_as_commas(tmp_path):
    s = load_settings(environ={"CLAUDE_NET_ADMINS": "a,b"})
    assert s.core.admins == ["a", "b"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ("port = 'x'\n", "port must be an integer"),
        ("[messaging]\nmax_bytez = 1\n", "unknown key 'messaging.max_bytez'"),
        ("[limits]\nexec_timeout = true\n", "limits.exec_timeout must be a number"),
        ("port = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, fragment):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert fragment in str(err.value) and str(cfg) in str(err.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="CLAUDE_NET_PORT"):
        load_settings(environ={"CLAUDE_NET_PORT": "eighty"})


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


@dataclasses.dataclass
class Node:
    host: str
    port: int = 22


@dataclasses.dataclass
class Section:
    timeout: float = 5.0
    shell: str | None = None
    nodes: dict[str, Node] = dataclasses.field(default_factory=dict)


def test_plugin_sections_validate_nested_tables(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[demo]\ntimeout = 2\n[demo.nodes.ser-8]\nhost = "10.0.0.8"\n[typo]\nx = 1\n')
    s = load_settings(cfg, environ={})
    problems = s.bind_sections({"demo": Section}, strict=False)
    assert s.section("demo").nodes["ser-8"] == Node("10.0.0.8", 22)
    assert len(problems) == 1 and "unknown section [typo]" in problems[0]
    cfg.write_text('[demo.nodes.ser-8]\nport = 22\n')
    with pytest.raises(ConfigError, match="host"):
        load_settings(cfg, environ={}).bind_sections({"demo": Section}, strict=True)


def test_starter_config_round_trips(tmp_path):
    import re

    text = starter_config({"demo": Section})
    assert "# port = 8765" in text and "[demo.nodes.NAME]" in text and "# shell: not set by default" in text
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    load_settings(cfg, environ={}).bind_sections({"demo": Section}, strict=True)
    # uncommenting every key and section line gives a valid config equal to the defaults
    lines, in_example = [], False
    for line in text.splitlines():
        in_example = ("NAME" in line) or (in_example and line.strip() != "")
        if in_example:
            continue
        if re.match(r"^# ([a-z_]+ = |\[[a-z.]+\]$)", line):
            line = line[2:]
        lines.append(line)
    cfg.write_text("\n".join(lines))
    s = load_settings(cfg, environ={})
    s.bind_sections({"demo": Section}, strict=True)
    assert s.core.port == 8765 and s.limits.exec_concurrency == 64 and s.section("demo") == Section()
