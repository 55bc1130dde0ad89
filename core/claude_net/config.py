"""Configuration: one TOML file plus ``CLAUDE_NET_*`` environment overrides.

Sections are dataclasses. The core's live here; plugins declare theirs with the
``config_sections`` hook. Validation names the file (or environment variable) and the key.

Environment overrides: ``CLAUDE_NET_<KEY>`` for a top-level key (``CLAUDE_NET_DATABASE_URL``),
``CLAUDE_NET_<SECTION>__<KEY>`` for a key in a section (``CLAUDE_NET_LXD__SHELL``); values are
read as TOML literals when they parse as one (``8765``, ``true``, ``["a", "b"]``), else as
strings; a comma-separated string is accepted for a list of strings.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger("claude_net.config")

ENV_PREFIX = "CLAUDE_NET_"
#: client-side variables that are not settings
RESERVED_ENV = {"CLAUDE_NET_CONFIG", "CLAUDE_NET_URL", "CLAUDE_NET_TOKEN", "CLAUDE_NET_CLI_ACTOR",
                "CLAUDE_NET_TEST_DB", "CLAUDE_NET_TEST_PG"}
DEFAULT_CONFIG = "claude-net.toml"
MiB = 1024 * 1024


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:  # noqa: A002
    """``dataclasses.field`` with a help text for the starter config and docs: the way to declare a
    setting (it is ``field(metadata={"help": ...})`` underneath; a mutable default is copied)."""
    if isinstance(default, (list, dict, set)):
        factory = type(default)
        value = default
        return field(default_factory=lambda: factory(value), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class CoreSettings:
    database_url: str = help_field(
        "",
        "Database URL. Empty: SQLite file claude-net.db next to this config. "
        "PostgreSQL: postgresql+asyncpg://user@/db?host=/var/run/postgresql",
    )
    host: str = help_field("127.0.0.1", "Address `claude-net serve` binds to.")
    port: int = help_field(8765, "Port `claude-net serve` binds to.")
    admins: list[str] = help_field([], "Node names with admin rights (in addition to tokens created with --admin).")
    log_level: str = help_field("info", "debug, info, warning or error.")


@dataclass
class PluginsSettings:
    allow: list[str] = help_field([], "Entry-point plugins to load (empty: all installed).")
    deny: list[str] = help_field([], "Entry-point or built-in plugins never to load.")
    trace: bool = help_field(False, "Log every hook call (debugging).")


@dataclass
class MessagingSettings:
    max_bytes: int = help_field(64 * 1024, "Largest message body in bytes (UTF-8).")
    max_wait: float = help_field(60.0, "Longest long-poll (`GET /api/inbox?wait=N`) in seconds.")
    allow_unauthenticated: bool = help_field(
        False,
        "Accept v1 messaging requests that carry only a `from` field and no token. Never applies "
        "to exec, files or admin actions; such messages are marked unauthenticated.",
    )


@dataclass
class LimitsSettings:
    max_body_bytes: int = help_field(MiB, "Largest JSON request body for ordinary endpoints.")
    json_max_depth: int = help_field(
        32, "Deepest nesting of arrays and objects a JSON request body may have, checked before parsing: "
            "400 too_deep.")
    json_max_items: int = help_field(
        10000, "Most values (array items and object members) a JSON request body may hold, counted before "
               "parsing: 413 too_many_items.")
    file_max_bytes: int = help_field(64 * MiB, "Largest file read or written through the hub.")
    exec_timeout: float = help_field(60.0, "Default exec timeout in seconds.")
    exec_timeout_max: float = help_field(3600.0, "Largest exec timeout a caller may ask for.")
    exec_max_output: int = help_field(MiB, "Cap on stdout and on stderr of one exec, in bytes.")
    exec_concurrency: int = help_field(64, "Execs running at once across the hub; more wait their turn.")
    exec_concurrency_per_source: int = help_field(
        8, "Execs one agent may have running at once (within exec_concurrency); its further ones wait in its own "
           "queue, and free slots go first to the agent holding the fewest. Admins count only against the total. "
           "0: no per-agent bound.")
    exec_concurrency_per_target: int = help_field(
        32, "Execs of agents running at once on one node (within exec_concurrency). 0: no per-node bound.")
    exec_queue_per_source: int = help_field(
        64, "Execs one agent may have waiting for a slot; past that its execs are refused with 429 queue_full "
            "(admins are not bounded). 0: unbounded.")
    rate_per_minute: float = help_field(
        60000.0,
        "Requests per minute each authenticated node may make (a token bucket; the public endpoints "
        "are exempt). Beyond it: 429 rate_limited with Retry-After. 0 turns limiting off.",
    )
    rate_burst: int = help_field(2000, "Requests a node may make at once before rate_per_minute applies.")
    body_timeout: float = help_field(
        30.0, "Seconds a client has to send a whole request body; a slower client gets 408 and is dropped. "
              "For the streamed PUT /api/file/raw: the longest pause between two pieces of the body.")


@dataclass
class NodesSettings:
    cache_seconds: float = help_field(2.0, "How long node listings from backends are cached.")


CORE_SECTIONS: dict[str, type] = {
    "": CoreSettings,
    "plugins": PluginsSettings,
    "messaging": MessagingSettings,
    "limits": LimitsSettings,
    "nodes": NodesSettings,
}


class Settings:
    """Validated configuration. ``settings.core`` etc. for the core, ``section(name)`` for plugins."""

    def __init__(self, raw: dict[str, Any], *, path: Path | None, env_keys: Mapping[tuple[str, ...], str],
                 file_raw: Mapping[str, Any] | None = None):
        self.raw = raw
        self.path = path
        self._env_keys = dict(env_keys)
        #: what the file itself holds (before environment overrides), to tell which set a table
        self._file_raw = file_raw if file_raw is not None else raw
        self._sections: dict[str, Any] = {}
        for name, cls in CORE_SECTIONS.items():
            self._sections[name] = self._parse_section(name, cls)
        self.core: CoreSettings = self._sections[""]
        self.plugins: PluginsSettings = self._sections["plugins"]
        self.messaging: MessagingSettings = self._sections["messaging"]
        self.limits: LimitsSettings = self._sections["limits"]
        self.nodes: NodesSettings = self._sections["nodes"]
        if not self.core.database_url:
            base = path.parent if path is not None else Path.cwd()
            self.core.database_url = f"sqlite+aiosqlite:///{(base / 'claude-net.db').resolve()}"

    # -- plugin sections -----------------------------------------------------------------------

    def bind_sections(self, sections: Mapping[str, type], *, strict: bool) -> list[str]:
        """Validate plugin sections. Returns problems (raises the first when ``strict``)."""
        problems: list[str] = []
        for name, cls in sections.items():
            try:
                self._sections[name] = self._parse_section(name, cls)
            except ConfigError as exc:
                if strict:
                    raise
                problems.append(str(exc))
                self._sections[name] = cls()
        known_tables = {n.split(".")[0] for n in list(self._sections) + list(sections) if n}
        for key, value in self.raw.items():
            if isinstance(value, dict) and key not in known_tables:
                msg = f"{self._where((key,))}: unknown section [{key}] (no loaded plugin declares it)"
                if strict:
                    raise ConfigError(msg)
                problems.append(msg)
        return problems

    def section(self, name: str) -> Any:
        try:
            return self._sections[name]
        except KeyError:
            raise KeyError(f"no configuration section {name!r} is declared") from None

    # -- internals -----------------------------------------------------------------------------

    def problem(self, key: str, message: str) -> str:
        """``message`` about the dotted setting ``key``, prefixed with where that key was set."""
        keys = tuple(key.split(".")) if key else ()
        return f"{self._where(keys)}: {key or 'configuration'}: {message}"

    def _where(self, keys: tuple[str, ...]) -> str:
        # the variable that set this key or a table holding it (a list item, a node's table)
        for end in range(len(keys), 0, -1):
            if keys[:end] in self._env_keys:
                return f"environment variable {self._env_keys[keys[:end]]}"
        table: Any = self._file_raw
        for key in keys:  # a table the file does not have was made by variables setting keys inside it
            if not isinstance(table, Mapping) or key not in table:
                names = sorted(name for k, name in self._env_keys.items() if k[:len(keys)] == keys)
                if names:
                    return "environment variable" + ("s " if len(names) > 1 else " ") + ", ".join(names)
                break
            table = table[key]
        return str(self.path) if self.path else "configuration"

    def _parse_section(self, name: str, cls: type) -> Any:
        keys = tuple(name.split(".")) if name else ()
        table: Any = self.raw
        for key in keys:
            table = table.get(key, {}) if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            raise ConfigError(f"{self._where(keys)}: [{name}] must be a table")
        if not name:  # the root table: only scalar keys belong to CoreSettings
            table = {k: v for k, v in table.items() if not isinstance(v, dict)}
        return _build(cls, table, keys, self._where)


def _build(cls: type, table: Mapping[str, Any], keys: tuple[str, ...], where) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            dotted = ".".join(keys + (key,))
            allowed = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{where(keys + (key,))}: unknown key {dotted!r} (known keys: {allowed})")
        kwargs[key] = _coerce(value, hints[key], keys + (key,), where)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where(keys)}: [{'.'.join(keys)}] {exc}") from None


def _coerce(value: Any, tp: Any, keys: tuple[str, ...], where) -> Any:  # noqa: C901
    dotted = ".".join(keys)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where(keys)}: {dotted} must be {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, keys, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else bad("set")
    if origin is typing.Literal:
        if value in args:
            return value
        raise bad("one of " + ", ".join(repr(a) for a in args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise bad("a list")
        item = args[0] if args else Any
        return [_coerce(v, item, keys + (str(i),), where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad("a table")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, item, keys + (str(k),), where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad("a table")
        return _build(tp, value, keys, where)
    raise ConfigError(f"{dotted}: unsupported setting type {tp!r}")  # a plugin bug, not user error


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("CLAUDE_NET_CONFIG") or DEFAULT_CONFIG)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if it exists), apply environment and explicit overrides, validate core sections.

    ``overrides`` is a nested dict merged last (used by tests and ``create_app``).
    """
    environ = os.environ if environ is None else environ
    file = config_path(path)
    raw: dict[str, Any] = {}
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
        file = file.resolve()
    elif path is not None or "CLAUDE_NET_CONFIG" in environ:
        raise ConfigError(f"{file}: configuration file not found (create one with `claude-net init`)")
    else:
        file = None  # defaults only

    file_raw = copy.deepcopy(raw)
    env_keys: dict[tuple[str, ...], str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if not all(parts):
            log.warning("ignoring malformed environment variable %s", name)
            continue
        keys = tuple(parts)
        env_keys[keys] = name
        _set_nested(raw, keys, _env_value(text))
    if overrides:
        _merge(raw, overrides)
    return Settings(raw, path=file, env_keys=env_keys, file_raw=file_raw)


def _set_nested(raw: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    table = raw
    for key in keys[:-1]:
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{ENV_PREFIX}{'__'.join(keys).upper()}: {key} is not a table")
    table[keys[-1]] = value


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


# ---------------------------------------------------------------------------------------------
# Starter config
# ---------------------------------------------------------------------------------------------


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _section_lines(cls: type, header: str | None, commented_header: bool) -> list[str]:
    lines: list[str] = []
    if header is not None:
        lines.append(("# " if commented_header else "") + f"[{header}]")
    instance = None
    try:
        instance = cls()
    except TypeError:
        pass  # required fields: show as a commented example
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        tp = hints[f.name]
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            sub = typing.get_args(tp)[1]
            lines.append("")
            if help_text:
                lines.append(f"# {help_text}")
            lines.extend("# " + line if line and not line.startswith("#") else line
                         for line in _section_lines(sub, f"{header}.{f.name}.NAME", False))
            continue
        if help_text:
            lines.append(f"# {help_text}")
        if instance is not None and getattr(instance, f.name) is None:
            lines.append(f"# {f.name}: not set by default")  # TOML has no null: nothing to uncomment
        elif instance is not None:
            lines.append(f"# {f.name} = {_toml_literal(getattr(instance, f.name))}")
        else:
            default = f.default if f.default is not dataclasses.MISSING else "..."
            lines.append(f"# {f.name} = {_toml_literal(default) if default != '...' else '...'}")
    return lines


def starter_config(plugin_sections: Mapping[str, type]) -> str:
    out = [
        "# claude-net configuration. Every key shows its default; uncomment to change.",
        "# Every key can also be set by environment: CLAUDE_NET_<KEY> for top-level keys,",
        "# CLAUDE_NET_<SECTION>__<KEY> inside a section (e.g. CLAUDE_NET_LXD__SHELL).",
        "",
    ]
    out += _section_lines(CoreSettings, None, False)
    for name, cls in list(CORE_SECTIONS.items())[1:] + sorted(plugin_sections.items()):
        out.append("")
        out += _section_lines(cls, name, True)
    return "\n".join(out) + "\n"
