"""The callback's settings, read from ``LITELLM_UNTAKEN_*`` environment variables.

Owns: parsing and validating the variables into one frozen ``Settings``. A LiteLLM
proxy builds callbacks from a dotted name, with no arguments, so the environment
(or the ``environment_variables:`` section of the proxy's config.yaml) is where
their settings live. The prefix is not ``UNTAKEN_`` on purpose: the sidecar reads
``UNTAKEN_*`` as its own config and rejects keys it does not know.

Must never: do I/O other than reading the token file it is pointed at, or let a
bad value pass silently (``SettingsError`` names the variable).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

PREFIX = "LITELLM_UNTAKEN_"

#: Sources a label can come from; the label is named after the source
#: (``team_alias`` -> label ``team``...), see ``mapping.labels``.
LABEL_SOURCES = ("team_alias", "key_alias", "user", "end_user", "tags")
#: What the sampling decision can be keyed on.
SAMPLING_KEYS = ("call_id", "user", "end_user", "team", "key")
PAIRING_MODES = ("auto", "one_phase")


class SettingsError(ValueError):
    """A ``LITELLM_UNTAKEN_*`` variable has a value the callback cannot use."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{PREFIX}{name}: {message}")
        self.variable = PREFIX + name


def default_target() -> str:
    return "127.0.0.1:50051"


def default_timeout_ms() -> float:
    # Mirror answers in microseconds, but the RPCs run as tasks on the proxy's busy
    # event loop, never on the request path: a second bounds how long a task lives
    # when the sidecar hangs, without dropping calls on a loaded host (250 ms lost
    # 4 % of Completes at load average 20 in benches/litellm.sh).
    return 1000.0


def default_labels() -> Tuple[str, ...]:
    return ("team_alias", "key_alias", "tags")


@dataclass(frozen=True)
class Settings:
    #: host:port of the untaken sidecar's gRPC listener (plaintext, normally loopback in the same pod).
    target: str = field(default_factory=default_target)
    #: Deadline of each Mirror/Complete call, in milliseconds.
    timeout_ms: float = field(default_factory=default_timeout_ms)
    #: Bearer token for a sidecar with `auth_token_file` set (read from TOKEN_FILE, never logged).
    token: Optional[str] = field(default=None, repr=False)
    #: "auto": two-phase (Mirror before the call, Complete after) where the proxy's
    #: pre-call hook runs, else one-phase; "one_phase": always Mirror after the answer.
    pairing: str = "auto"
    #: LiteLLM model group -> untaken route. Empty: the model group name is the route.
    #: When set, only the listed model groups are mirrored.
    routes: Mapping[str, str] = field(default_factory=dict)
    #: Request metadata key whose value is the slice.
    slice_key: str = "untaken_slice"
    #: Tag prefix that also names the slice (tag "slice:multi_step" -> "multi_step").
    slice_tag_prefix: str = "slice:"
    #: Which caller attributes become labels, from LABEL_SOURCES.
    labels: Tuple[str, ...] = field(default_factory=default_labels)
    #: Request metadata keys copied into labels as-is.
    label_metadata_keys: Tuple[str, ...] = ()
    #: What the sampling decision is keyed on, from SAMPLING_KEYS ("call_id": every request on its own).
    sampling_key: str = "call_id"
    #: Bound on requests waiting between Mirror and Complete (two-phase); the oldest is dropped past it.
    max_pending: int = 10000

    def route_for(self, model_group: Optional[str]) -> Optional[str]:
        """The untaken route for a model group, or None when it is not mirrored."""
        if not model_group:
            return None
        if not self.routes:
            return model_group
        return self.routes.get(model_group)


def _csv(value: str) -> Tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _number(name: str, raw: str, cast, low, high, low_open: bool = False):
    """``raw`` as a number in [low, high] (or (low, high] when ``low_open``)."""
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not {'an integer' if cast is int else 'a number'}") from None
    if value > high or value < low or (low_open and value == low):
        raise SettingsError(name, f"{raw} is not in {'(' if low_open else '['}{low}, {high}]")
    return value


def from_env(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Reads the settings from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env

    def get(name: str) -> Optional[str]:
        value = env.get(PREFIX + name)
        return value.strip() if value is not None and value.strip() else None

    kw = {}
    if (v := get("TARGET")) is not None:
        if ":" not in v:
            raise SettingsError("TARGET", f"{v!r} is not host:port")
        kw["target"] = v
    if (v := get("TIMEOUT_MS")) is not None:
        kw["timeout_ms"] = _number("TIMEOUT_MS", v, float, 0.0, 60000.0, low_open=True)
    if (v := get("TOKEN_FILE")) is not None:
        try:
            with open(v, encoding="utf-8") as f:
                kw["token"] = f.read().strip()
        except OSError as e:
            raise SettingsError("TOKEN_FILE", f"cannot read {v}: {e.strerror}") from None
        if not kw["token"]:
            raise SettingsError("TOKEN_FILE", f"{v} is empty")
    if (v := get("PAIRING")) is not None:
        if v not in PAIRING_MODES:
            raise SettingsError("PAIRING", f"{v!r} is not one of {', '.join(PAIRING_MODES)}")
        kw["pairing"] = v
    if (v := get("ROUTES")) is not None:
        routes = {}
        for item in _csv(v):
            group, sep, route = (s.strip() for s in item.partition("="))
            if not sep or not group or not route:
                raise SettingsError("ROUTES", f"{item!r} is not model_group=route")
            routes[group] = route
        kw["routes"] = routes
    if (v := get("SLICE_KEY")) is not None:
        kw["slice_key"] = v
    if (v := env.get(PREFIX + "SLICE_TAG_PREFIX")) is not None:
        kw["slice_tag_prefix"] = v.strip()  # empty: tags never name the slice
    if (v := env.get(PREFIX + "LABELS")) is not None:
        labels = _csv(v)
        unknown = [x for x in labels if x not in LABEL_SOURCES]
        if unknown:
            raise SettingsError("LABELS", f"unknown source {unknown[0]!r}; known: {', '.join(LABEL_SOURCES)}")
        kw["labels"] = labels
    if (v := get("LABEL_METADATA_KEYS")) is not None:
        kw["label_metadata_keys"] = _csv(v)
    if (v := get("SAMPLING_KEY")) is not None:
        if v not in SAMPLING_KEYS:
            raise SettingsError("SAMPLING_KEY", f"{v!r} is not one of {', '.join(SAMPLING_KEYS)}")
        kw["sampling_key"] = v
    if (v := get("MAX_PENDING")) is not None:
        kw["max_pending"] = _number("MAX_PENDING", v, int, 1, 10_000_000)
    return Settings(**kw)
