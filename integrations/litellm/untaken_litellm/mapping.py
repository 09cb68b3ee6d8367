"""What untaken is told about a LiteLLM call: pure functions, no I/O.

Owns: turning what LiteLLM hands a callback (the proxy's request ``data`` and
caller identity in the pre-call hook; ``kwargs["standard_logging_object"]`` in
the logging events) into one ``Call``, and a ``Call`` into the fields of
``MirrorRequest`` (route, slice, labels, sampling key, the request as sent) and
an answer into the fields of ``Answer``.

Must never: raise on a shape LiteLLM did not promise (missing keys give empty
values), or return prompt or answer text anywhere but the request and answer
bodies (ids and labels only: they are what gets logged).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .settings import Settings

#: Keys the proxy adds to a request body for itself; they never reach the model.
_INTERNAL_KEYS = frozenset(
    {"metadata", "litellm_metadata", "tags", "proxy_server_request", "secret_fields", "user_api_key_dict",
     "guardrails", "mock_response", "mock_testing_fallbacks", "fallbacks", "num_retries", "api_key", "api_base"}
)
#: The sidecar's bound on one label value (`server.max_label_bytes` defaults to 1024).
MAX_LABEL_CHARS = 256


@dataclass
class Call:
    """One proxy call, as far as untaken cares."""

    call_id: str = ""
    #: The model group LiteLLM routed the call to (the `model` the client asked for).
    model_group: str = ""
    #: The chat-completions request as the client sent it.
    body: Dict[str, Any] = field(default_factory=dict)
    #: The client's own request metadata (`metadata` in the request body).
    metadata: Dict[str, Any] = field(default_factory=dict)
    tags: List[str] = field(default_factory=list)
    team_alias: str = ""
    team_id: str = ""
    key_alias: str = ""
    #: Hash of the virtual key (LiteLLM never keeps the key itself).
    key_hash: str = ""
    user: str = ""
    end_user: str = ""


def _dict(v: Any) -> Dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _tags(*sources: Any) -> List[str]:
    for s in sources:
        if isinstance(s, (list, tuple)) and s:
            return [t for t in s if isinstance(t, str)]
    return []


def call_from_request(data: Mapping[str, Any], auth: Any) -> Call:
    """From the proxy's pre-call hook (or post-call failure hook): the request
    ``data`` and the ``UserAPIKeyAuth`` of the caller."""
    md = _dict(data.get("metadata")) or _dict(data.get("litellm_metadata"))
    body = _dict(_dict(data.get("proxy_server_request")).get("body")) or dict(data)
    client_md = _dict(md.get("requester_metadata")) or _dict(body.get("metadata"))
    return Call(
        call_id=_str(data.get("litellm_call_id")),
        model_group=_str(data.get("model")),
        body=body,
        metadata=client_md,
        tags=_tags(data.get("tags"), md.get("tags"), body.get("tags"), client_md.get("tags")),
        team_alias=_str(getattr(auth, "team_alias", None)) or _str(md.get("user_api_key_team_alias")),
        team_id=_str(getattr(auth, "team_id", None)) or _str(md.get("user_api_key_team_id")),
        key_alias=_str(getattr(auth, "key_alias", None)) or _str(md.get("user_api_key_alias")),
        key_hash=_str(getattr(auth, "api_key", None)) or _str(md.get("user_api_key_hash")),
        user=_str(getattr(auth, "user_id", None)) or _str(md.get("user_api_key_user_id")),
        end_user=_str(getattr(auth, "end_user_id", None)) or _str(body.get("user")),
    )


def call_from_log(kwargs: Mapping[str, Any]) -> Call:
    """From a logging event (``async_log_success_event`` / ``async_log_failure_event``)."""
    slo = _dict(kwargs.get("standard_logging_object"))
    md = _dict(slo.get("metadata"))
    params = _dict(kwargs.get("litellm_params"))
    params_md = _dict(params.get("metadata")) or _dict(params.get("litellm_metadata"))
    psr = _dict(kwargs.get("proxy_server_request")) or _dict(params.get("proxy_server_request"))
    body = _dict(psr.get("body"))
    if not body:
        body = {"model": kwargs.get("model"), "messages": kwargs.get("messages") or []}
        body.update({k: v for k, v in _dict(kwargs.get("optional_params")).items() if k not in _INTERNAL_KEYS})
    client_md = _dict(md.get("requester_metadata")) or _dict(params_md.get("requester_metadata")) or _dict(body.get("metadata"))
    return Call(
        call_id=_str(slo.get("litellm_call_id")) or _str(kwargs.get("litellm_call_id")) or _str(slo.get("id")),
        model_group=_str(slo.get("model_group")) or _str(params_md.get("model_group")) or _str(body.get("model")),
        body=body,
        metadata=client_md,
        tags=_tags(slo.get("request_tags"), params_md.get("tags"), body.get("tags"), client_md.get("tags")),
        team_alias=_str(md.get("user_api_key_team_alias")) or _str(md.get("team_alias")),
        team_id=_str(md.get("user_api_key_team_id")) or _str(md.get("team_id")),
        key_alias=_str(md.get("user_api_key_alias")),
        key_hash=_str(md.get("user_api_key_hash")),
        user=_str(md.get("user_api_key_user_id")),
        end_user=_str(slo.get("end_user")) or _str(md.get("user_api_key_end_user_id")) or _str(body.get("user")),
    )


def request_body(body: Mapping[str, Any]) -> bytes:
    """The request as the model sees it: the client's body without the proxy's own keys."""
    clean = {k: v for k, v in body.items() if k not in _INTERNAL_KEYS and not k.startswith(("litellm_", "_"))}
    return json.dumps(clean, default=str, separators=(",", ":")).encode()


def slice_of(call: Call, s: Settings) -> str:
    v = call.metadata.get(s.slice_key)
    if isinstance(v, str) and v:
        return v
    if s.slice_tag_prefix:
        for t in call.tags:
            if t.startswith(s.slice_tag_prefix) and len(t) > len(s.slice_tag_prefix):
                return t[len(s.slice_tag_prefix):]
    return ""


def labels_of(call: Call, s: Settings) -> Dict[str, str]:
    source = {
        "team_alias": ("team", call.team_alias),
        "key_alias": ("key", call.key_alias),
        "user": ("user", call.user),
        "end_user": ("end_user", call.end_user),
        "tags": ("tags", ",".join(call.tags)),
    }
    out = {}
    for name in s.labels:
        label, value = source[name]
        if value:
            out[label] = value[:MAX_LABEL_CHARS]
    for k in s.label_metadata_keys:
        v = call.metadata.get(k)
        if isinstance(v, (str, int, float, bool)) and str(v):
            out[k] = str(v)[:MAX_LABEL_CHARS]
    return out


def sampling_key_of(call: Call, s: Settings) -> str:
    """The key the sidecar hashes; empty (= request_id) when the chosen attribute is unknown."""
    value = {
        "call_id": "",
        "user": call.user,
        "end_user": call.end_user,
        "team": call.team_id or call.team_alias,
        "key": call.key_hash or call.key_alias,
    }[s.sampling_key]
    return value


def mirror_fields(call: Call, s: Settings) -> Optional[Dict[str, Any]]:
    """The ``MirrorRequest`` fields for ``call``, or None when it is not mirrored
    (no call id, or a model group outside ``settings.routes``)."""
    route = s.route_for(call.model_group)
    if not call.call_id or route is None:
        return None
    return {
        "request_id": call.call_id,
        "sampling_key": sampling_key_of(call, s),
        "route_taken": route,
        "request_body": request_body(call.body),
        "slice": slice_of(call, s),
        "labels": labels_of(call, s),
    }


def _to_dict(response: Any) -> Any:
    for attr in ("model_dump", "dict", "json"):
        fn = getattr(response, attr, None)
        if callable(fn):
            try:
                out = fn()
                return json.loads(out) if isinstance(out, str) else out
            except Exception:  # noqa: BLE001 - try the next representation
                continue
    return response


def answer_from_response(response: Any, latency_ms: float) -> Dict[str, Any]:
    """``Answer`` fields for what the proxy returned (a streamed answer arrives assembled)."""
    try:
        body = json.dumps(_to_dict(response), default=str, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        body = b""
    return {"body": body, "status_code": 200, "latency_ms": latency_ms, "error": ""}


def answer_from_exception(exc: Any, latency_ms: float) -> Dict[str, Any]:
    """``Answer`` fields for a failed call: the status and the OpenAI-style error body the client got."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(exc, "code", None)
    status = status if isinstance(status, int) and 100 <= status < 600 else 500
    message = _str(getattr(exc, "message", None)) or str(exc)
    kind = type(exc).__name__
    body = {"error": {"message": message, "type": kind, "code": str(status)}}
    return {"body": json.dumps(body, default=str).encode(), "status_code": status, "latency_ms": latency_ms,
            "error": f"{kind}: {message}"[:1000]}


def describe(call: Call) -> Tuple[str, str]:
    """What may be logged about a call: its id and model group, nothing else."""
    return call.call_id, call.model_group
