"""The LiteLLM ``CustomLogger`` that mirrors proxy calls to the untaken sidecar.

Owns: the hooks LiteLLM calls, the table of calls between ``Mirror`` and
``Complete`` (two-phase pairing), one gRPC channel per event loop reused across
calls, and the callback's counters.

Pairing. In a proxy, ``async_pre_call_hook`` runs before the model is called:
the call is mirrored there without its answer, so the sidecar's shadow call runs
concurrently with the primary, and the answer follows with ``Complete`` from
``async_log_success_event`` (streams arrive there assembled) or
``async_post_call_failure_hook`` (the proxy's final error, after any retries and
fallbacks). Where no pre-call hook runs (the LiteLLM SDK, or
``LITELLM_UNTAKEN_PAIRING=one_phase``), the call is mirrored once with its answer
from the success or failure event.

Must never: slow or break a request. Nothing here is awaited on the request
path except putting a task on the loop; every RPC has a short deadline; every
error is caught, counted and logged (rate-limited), never raised into LiteLLM.
Logs carry call ids, model groups, outcomes and gRPC codes, never prompt or
answer text.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import grpc
from litellm.integrations.custom_logger import CustomLogger

from . import mapping
from .settings import Settings, SettingsError, from_env

log = logging.getLogger("untaken_litellm")

#: LiteLLM call types that are chat completions (the only ones untaken pairs).
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})
#: Seconds between two log lines about the same kind of error.
LOG_EVERY_S = 10.0


def _stubs():
    # Generated at install time from proto/ (see setup.py); imported lazily so a
    # broken install is reported once, as a counted error, not at proxy start.
    from ._pb.untaken.v1 import mirror_pb2, mirror_pb2_grpc

    return mirror_pb2, mirror_pb2_grpc


class _Metrics:
    """Counters by (event, outcome): kept in a dict (``UntakenLogger.counts()``),
    and exported as ``untaken_litellm_events_total`` when prometheus_client is installed."""

    _prom = None

    def __init__(self) -> None:
        self.counts: Dict[tuple, int] = collections.Counter()
        if _Metrics._prom is None:
            try:
                from prometheus_client import Counter

                _Metrics._prom = Counter(
                    "untaken_litellm_events", "Calls the untaken callback handled, by event and outcome",
                    ["event", "outcome"],
                )
            except Exception:  # noqa: BLE001 - no prometheus_client, or already registered
                _Metrics._prom = False

    def inc(self, event: str, outcome: str) -> None:
        self.counts[(event, outcome)] += 1
        if _Metrics._prom:
            _Metrics._prom.labels(event, outcome).inc()


@dataclass
class _Pending:
    """A call mirrored without its answer: the Mirror RPC's task and when the call began."""

    mirror: "asyncio.Task[Any]"
    started: float


class UntakenLogger(CustomLogger):
    """Load it from the proxy's config.yaml: ``litellm_settings: {callbacks: ["untaken_litellm.handler"]}``."""

    def __init__(self, settings: Optional[Settings] = None) -> None:
        super().__init__()
        self._settings = settings
        self._channels: Dict[Any, tuple] = {}
        self._pending: "collections.OrderedDict[str, _Pending]" = collections.OrderedDict()
        self._done: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._tasks: set = set()
        self._last_log: Dict[tuple, float] = {}
        self._suppressed: Dict[tuple, int] = collections.Counter()
        self._metrics = _Metrics()

    # ---- LiteLLM hooks -------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):  # noqa: D401
        try:
            s = self.settings()
            if s.pairing != "auto" or call_type not in CHAT_CALL_TYPES:
                return None
            call = mapping.call_from_request(data, user_api_key_dict)
            fields = mapping.mirror_fields(call, s)
            if fields is None:
                self._metrics.inc("pre_call", "not_mirrored")
                return None
            if call.call_id in self._pending or call.call_id in self._done:
                return None
            self._pending[call.call_id] = _Pending(self._spawn(self._mirror(fields, None)), time.monotonic())
            while len(self._pending) > s.max_pending:
                old, _ = self._pending.popitem(last=False)
                self._metrics.inc("pre_call", "pending_evicted")
                self._log_error("pending_evicted", "table full", call_id=old)
        except Exception as e:  # noqa: BLE001 - never break the request
            self._internal_error("pre_call", e)
        return None

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        try:
            if not self._is_chat(kwargs):
                return
            call = mapping.call_from_log(kwargs)
            latency = _ms(start_time, end_time)
            self._finish(call, lambda: mapping.answer_from_response(response_obj, latency), "success")
        except Exception as e:  # noqa: BLE001
            self._internal_error("success", e)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        try:
            if not self._is_chat(kwargs):
                return
            call = mapping.call_from_log(kwargs)
            if call.call_id in self._pending:
                # Mirrored before the call: the proxy's post-call failure hook reports
                # the request's final outcome (a retry or a fallback may still answer).
                return
            exc, latency = kwargs.get("exception") or response_obj, _ms(start_time, end_time)
            self._finish(call, lambda: mapping.answer_from_exception(exc, latency), "failure")
        except Exception as e:  # noqa: BLE001
            self._internal_error("failure", e)

    async def async_post_call_failure_hook(self, request_data, original_exception, user_api_key_dict,
                                           traceback_str=None):
        try:
            call_id = request_data.get("litellm_call_id") if isinstance(request_data, dict) else None
            pending = self._pending.get(call_id) if call_id else None
            if pending is not None:
                latency = (time.monotonic() - pending.started) * 1000.0
                call = mapping.Call(call_id=call_id)
                self._finish(call, lambda: mapping.answer_from_exception(original_exception, latency), "failure")
        except Exception as e:  # noqa: BLE001
            self._internal_error("failure", e)
        return None

    # ---- pairing -------------------------------------------------------------------------

    def _finish(self, call: mapping.Call, answer: Callable[[], Dict[str, Any]], event: str) -> None:
        """Hands the call's answer to the sidecar: Complete after a two-phase Mirror,
        else a one-phase Mirror. Each call id is reported at most once. ``answer``
        builds the Answer fields; a two-phase call builds them only if it was sampled."""
        if not call.call_id or call.call_id in self._done:
            return
        pending = self._pending.pop(call.call_id, None)
        if pending is not None:
            self._mark_done(call.call_id)
            self._spawn(self._complete(pending.mirror, call.call_id, answer, event))
            return
        fields = mapping.mirror_fields(call, self.settings())
        if fields is None:
            self._metrics.inc(event, "not_mirrored")
            return
        self._mark_done(call.call_id)
        self._spawn(self._mirror(fields, answer(), event))

    def _mark_done(self, call_id: str) -> None:
        self._done[call_id] = None
        while len(self._done) > self.settings().max_pending:
            self._done.popitem(last=False)

    async def _mirror(self, fields: Dict[str, Any], answer: Optional[Dict[str, Any]], event: str = "pre_call"):
        pb, _ = _stubs()
        req = pb.MirrorRequest(**fields)
        if answer is not None:
            req.primary.CopyFrom(pb.Answer(**answer))
        try:
            resp = await self._stub().Mirror(req, timeout=self._timeout(), metadata=self._auth())
        except grpc.RpcError as e:
            self._rpc_error("mirror", e, fields["request_id"])
            return None
        self._metrics.inc("mirror", "sampled" if resp.sampled else (resp.reason or "not_sampled"))
        log.debug("mirrored", extra={"call_id": fields["request_id"], "route": fields["route_taken"],
                                     "sampled": resp.sampled, "reason": resp.reason, "event": event})
        return resp

    async def _complete(self, mirror: "asyncio.Task[Any]", call_id: str, answer: Callable[[], Dict[str, Any]],
                        event: str):
        resp = await mirror  # done long before the model answered; bounded by its deadline otherwise
        if resp is None or not resp.sampled:
            return
        pb, _ = _stubs()
        try:
            await self._stub().Complete(pb.CompleteRequest(request_id=call_id, primary=pb.Answer(**answer())),
                                        timeout=self._timeout(), metadata=self._auth())
        except grpc.RpcError as e:
            self._rpc_error("complete", e, call_id)
            return
        self._metrics.inc("complete", event)

    # ---- plumbing ------------------------------------------------------------------------

    def settings(self) -> Settings:
        # Read on first use, not at import: the proxy applies its config's
        # `environment_variables:` around the time it imports callbacks.
        if self._settings is None:
            self._settings = from_env()
            log.info("untaken callback ready", extra={"target": self._settings.target,
                                                      "pairing": self._settings.pairing})
        return self._settings

    def counts(self) -> Dict[str, int]:
        """Events so far, as ``{"event/outcome": n}``."""
        return {f"{e}/{o}": n for (e, o), n in self._metrics.counts.items()}

    def _stub(self):
        """The Mirror stub on this event loop's channel (a grpc.aio channel belongs to one loop)."""
        loop = asyncio.get_running_loop()
        entry = self._channels.get(loop)
        if entry is None:
            for old in [lp for lp in self._channels if lp.is_closed()]:
                del self._channels[old]  # a finished loop's channel died with it
            _, pb_grpc = _stubs()
            channel = grpc.aio.insecure_channel(self.settings().target, options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.enable_retries", 0),
            ])
            entry = (channel, pb_grpc.MirrorStub(channel))
            self._channels[loop] = entry
        return entry[1]

    def _timeout(self) -> float:
        return self.settings().timeout_ms / 1000.0

    def _auth(self):
        token = self.settings().token
        return (("authorization", f"Bearer {token}"),) if token else None

    def _spawn(self, coro) -> "asyncio.Task[Any]":
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._internal_error("task", task.exception())

    @staticmethod
    def _is_chat(kwargs: Dict[str, Any]) -> bool:
        slo = kwargs.get("standard_logging_object") or {}
        call_type = kwargs.get("call_type") or slo.get("call_type")
        return call_type in CHAT_CALL_TYPES

    def _rpc_error(self, rpc: str, e: "grpc.RpcError", call_id: str) -> None:
        code = e.code().name if hasattr(e, "code") and e.code() is not None else "UNKNOWN"
        self._metrics.inc(rpc, f"error_{code.lower()}")
        # The sidecar's error details name fields and limits, never request content.
        details = e.details() if hasattr(e, "details") else ""
        self._log_error(f"{rpc}_{code}", details or code, call_id=call_id, rpc=rpc, code=code)

    def _internal_error(self, where: str, e: BaseException) -> None:
        if isinstance(e, SettingsError):
            # Names the variable and its bad value: the operator's input, not a request's.
            self._metrics.inc(where, "bad_settings")
            self._log_error("bad_settings", str(e))
            return
        self._metrics.inc(where, "internal_error")
        # The exception's type only: its message could quote request content.
        self._log_error(f"internal_{where}", type(e).__name__, where=where)

    def _log_error(self, kind: str, message: str, **fields: Any) -> None:
        key = (kind,)
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            self._suppressed[key] += 1
            return
        self._last_log[key] = now
        suppressed = self._suppressed.pop(key, 0)
        # Fields in the text too (a plain handler drops `extra`): ids and codes only.
        where = " ".join(f"{k}={v}" for k, v in fields.items())
        log.warning("untaken callback: %s (%s; %d similar suppressed) %s", kind, message, suppressed, where,
                    extra={"untaken_" + k: v for k, v in fields.items()})


def _ms(start: Any, end: Any) -> float:
    try:
        return max((end - start).total_seconds() * 1000.0, 0.0)
    except Exception:  # noqa: BLE001 - floats or missing times
        try:
            return max((float(end) - float(start)) * 1000.0, 0.0)
        except Exception:  # noqa: BLE001
            return 0.0
