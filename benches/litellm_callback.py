"""The untaken callback's own cost per request, without the rest of the proxy.

Run by benches/litellm.sh (inside the LiteLLM venv) against a running `untaken serve`:

    python benches/litellm_callback.py GRPC_ADDR REQUESTS CONCURRENCY

Drives the hooks a LiteLLM proxy calls for one chat request (``async_pre_call_hook``,
then ``async_log_success_event`` with a LiteLLM ``ModelResponse``), for REQUESTS
requests, CONCURRENCY at a time, on one event loop as in the proxy, and waits for
every Mirror/Complete RPC to finish. The same loop over a bare ``CustomLogger`` (the
hooks LiteLLM would call anyway) is the baseline. Prints one JSON line per logger:
process CPU (all threads, so gRPC's own included) per request, and the p50/p99 time
spent in the pre-call hook, the only one the proxy awaits before calling the model
(the success event runs after the response has gone out).
"""
import asyncio
import datetime
import json
import sys
import time

from litellm import ModelResponse
from litellm.integrations.custom_logger import CustomLogger

from untaken_litellm import Settings, UntakenLogger

target, total, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fast-model",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "The return window is 30 days."},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129}}


def request(i):
    body = {"model": "fast", "messages": [{"role": "system", "content": "You are a careful assistant. " * 20},
                                          {"role": "user", "content": f"Benchmark question {i}: the return window?"}]}
    data = dict(body, litellm_call_id=f"cb-bench-{time.time_ns()}-{i}",
                proxy_server_request={"url": "/v1/chat/completions", "body": dict(body)},
                metadata={"user_api_key_alias": "bench-key", "tags": ["bench"]})
    kwargs = {"call_type": "acompletion", "litellm_call_id": data["litellm_call_id"], "model": "fast-model",
              "messages": body["messages"], "litellm_params": {"metadata": {"model_group": "fast"}},
              "standard_logging_object": {"litellm_call_id": data["litellm_call_id"], "model_group": "fast",
                                          "metadata": {"user_api_key_alias": "bench-key"}, "request_tags": ["bench"]}}
    return data, kwargs


async def one(logger, i, inside):
    data, kwargs = request(i)
    t0 = time.perf_counter()
    await logger.async_pre_call_hook(None, None, data, "acompletion")
    t1 = time.perf_counter()
    start = datetime.datetime.now()
    await asyncio.sleep(0)  # the model call would be here
    await logger.async_log_success_event(kwargs, ModelResponse(**ANSWER), start, datetime.datetime.now())
    inside.append(t1 - t0)


async def run(logger, n):
    inside = []
    for base in range(0, n, conc):
        await asyncio.gather(*(one(logger, i, inside) for i in range(base, min(base + conc, n))))
    # Every Mirror/Complete the callback put on the loop, finished.
    while getattr(logger, "_tasks", None):
        await asyncio.gather(*list(logger._tasks))
    return inside


async def main():
    for name, logger in (("no callback (bare CustomLogger)", CustomLogger()),
                         ("untaken callback", UntakenLogger(Settings(target=target)))):
        await run(logger, min(200, total))  # warm-up: channel, imports
        c0, w0 = time.process_time(), time.perf_counter()
        inside = sorted(await run(logger, total))
        cpu_us = (time.process_time() - c0) / total * 1e6
        print(json.dumps({"logger": name, "requests": total, "cpu_us_per_request": round(cpu_us, 1),
                          "pre_call_p50_us": round(inside[len(inside) // 2] * 1e6, 1),
                          "pre_call_p99_us": round(inside[int(len(inside) * 0.99) - 1] * 1e6, 1),
                          "seconds": round(time.perf_counter() - w0, 2),
                          "counts": logger.counts() if hasattr(logger, "counts") else {}}))


asyncio.run(main())
