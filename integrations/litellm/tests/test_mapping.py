"""Unit tests of the pure parts: settings from the environment, and what a LiteLLM
call becomes in MirrorRequest/Answer. Run by tests/litellm.rs (`callback_unit_tests_pass`)
inside the pinned LiteLLM venv: `python -m unittest discover -s tests`."""
import json
import os
import tempfile
import types
import unittest

from untaken_litellm import mapping
from untaken_litellm.settings import Settings, SettingsError, from_env


class SettingsFromEnv(unittest.TestCase):
    def test_defaults(self):
        s = from_env({})
        self.assertEqual(s.target, "127.0.0.1:50051")
        self.assertEqual(s.timeout_ms, 1000.0)
        self.assertEqual(s.sampling_key, "call_id")
        self.assertEqual(s.route_for("fast"), "fast")

    def test_bad_values_name_the_variable(self):
        for name, value in [("TARGET", "nohost"), ("TIMEOUT_MS", "soon"), ("TIMEOUT_MS", "0"),
                            ("PAIRING", "three_phase"), ("ROUTES", "fast"), ("LABELS", "team_alias,shoe_size"),
                            ("SAMPLING_KEY", "moon"), ("MAX_PENDING", "0"), ("TOKEN_FILE", "/nonexistent/token")]:
            with self.assertRaises(SettingsError) as cm:
                from_env({"LITELLM_UNTAKEN_" + name: value})
            self.assertEqual(cm.exception.variable, "LITELLM_UNTAKEN_" + name)
            self.assertIn("LITELLM_UNTAKEN_" + name, str(cm.exception))

    def test_routes_map_and_filter_model_groups(self):
        s = from_env({"LITELLM_UNTAKEN_ROUTES": "gpt-4o-mini=fast, o3 = reasoning"})
        self.assertEqual(s.route_for("gpt-4o-mini"), "fast")
        self.assertEqual(s.route_for("o3"), "reasoning")
        self.assertIsNone(s.route_for("text-embedding-3"))

    def test_token_is_read_from_its_file_and_never_printed(self):
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("s3cret-token\n")
        try:
            s = from_env({"LITELLM_UNTAKEN_TOKEN_FILE": f.name})
        finally:
            os.unlink(f.name)
        self.assertEqual(s.token, "s3cret-token")
        self.assertNotIn("s3cret", repr(s))


def proxy_data(**over):
    """The shape of `data` in the proxy's pre-call hook."""
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "metadata": {"untaken_slice": "multi_step", "tenant": "acme"}, "user": "end-7"}
    data = dict(body)
    data.update({
        "litellm_call_id": "call-1",
        "proxy_server_request": {"url": "/v1/chat/completions", "body": dict(body),
                                 "headers": {"authorization": "Bearer sk-secret"}},
        "metadata": {"requester_metadata": body["metadata"], "tags": ["prod", "slice:ignored"],
                     "user_api_key_alias": "alias-from-md"},
        "litellm_logging_obj": object(),
    })
    data.update(over)
    return data


AUTH = types.SimpleNamespace(team_alias="search-team", team_id="t-1", key_alias="svc-key", api_key="hash-1",
                             user_id="u-9", end_user_id=None)


class FromTheProxyRequest(unittest.TestCase):
    def test_mirror_fields(self):
        f = mapping.mirror_fields(mapping.call_from_request(proxy_data(), AUTH), Settings())
        self.assertEqual(f["request_id"], "call-1")
        self.assertEqual(f["route_taken"], "fast")
        self.assertEqual(f["slice"], "multi_step")
        self.assertEqual(f["labels"], {"team": "search-team", "key": "svc-key", "tags": "prod,slice:ignored"})
        self.assertEqual(f["sampling_key"], "")  # call id: the sidecar hashes request_id
        sent = json.loads(f["request_body"])
        self.assertEqual(sent, {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                "user": "end-7"})

    def test_sampling_key_choices(self):
        call = mapping.call_from_request(proxy_data(), AUTH)
        keys = {k: mapping.sampling_key_of(call, Settings(sampling_key=k)) for k in ("user", "end_user", "team", "key")}
        self.assertEqual(keys, {"user": "u-9", "end_user": "end-7", "team": "t-1", "key": "hash-1"})

    def test_slice_from_a_tag_when_metadata_has_none(self):
        data = proxy_data(metadata={"tags": ["slice:ambiguous"]})
        data["proxy_server_request"]["body"].pop("metadata")
        call = mapping.call_from_request(data, None)
        self.assertEqual(mapping.slice_of(call, Settings()), "ambiguous")
        self.assertEqual(mapping.slice_of(call, Settings(slice_tag_prefix="")), "")

    def test_metadata_labels_and_truncation(self):
        call = mapping.call_from_request(proxy_data(), AUTH)
        call.team_alias = "t" * 1000
        labels = mapping.labels_of(call, Settings(labels=("team_alias",), label_metadata_keys=("tenant", "absent")))
        self.assertEqual(labels, {"team": "t" * mapping.MAX_LABEL_CHARS, "tenant": "acme"})

    def test_not_mirrored_without_call_id_or_outside_the_routes(self):
        self.assertIsNone(mapping.mirror_fields(mapping.call_from_request(proxy_data(litellm_call_id=None), AUTH),
                                                Settings()))
        self.assertIsNone(mapping.mirror_fields(mapping.call_from_request(proxy_data(), AUTH),
                                                Settings(routes={"o3": "reasoning"})))

    def test_an_odd_shape_gives_empty_values_not_an_exception(self):
        call = mapping.call_from_request({"metadata": "nope", "tags": 3, "proxy_server_request": []}, object())
        self.assertEqual((call.call_id, call.model_group, call.tags), ("", "", []))


class FromTheLoggingEvent(unittest.TestCase):
    def kwargs(self):
        return {
            "call_type": "acompletion",
            "litellm_call_id": "call-2",
            "model": "reasoning-model",
            "messages": [{"role": "user", "content": "hello"}],
            "optional_params": {"temperature": 0.2, "metadata": {"x": 1}},
            "litellm_params": {"metadata": {"model_group": "reasoning"}},
            "standard_logging_object": {
                "id": "call-2", "litellm_call_id": "call-2", "model_group": "reasoning", "request_tags": ["slice:math"],
                "end_user": "", "metadata": {"user_api_key_team_alias": "t", "user_api_key_alias": "k",
                                             "user_api_key_user_id": "u", "requester_metadata": {}},
            },
        }

    def test_call_from_the_standard_logging_payload(self):
        call = mapping.call_from_log(self.kwargs())
        f = mapping.mirror_fields(call, Settings())
        self.assertEqual((f["request_id"], f["route_taken"], f["slice"]), ("call-2", "reasoning", "math"))
        self.assertEqual(f["labels"], {"team": "t", "key": "k", "tags": "slice:math"})
        self.assertEqual(json.loads(f["request_body"]),
                         {"model": "reasoning-model", "messages": [{"role": "user", "content": "hello"}],
                          "temperature": 0.2})

    def test_answer_from_a_response_object(self):
        resp = types.SimpleNamespace(model_dump=lambda: {"choices": [{"message": {"content": "ok"}}]})
        a = mapping.answer_from_response(resp, 12.5)
        self.assertEqual(json.loads(a["body"])["choices"][0]["message"]["content"], "ok")
        self.assertEqual((a["status_code"], a["latency_ms"], a["error"]), (200, 12.5, ""))

    def test_answer_from_an_exception_keeps_its_status(self):
        class InternalServerError(Exception):
            status_code = 503
            message = "upstream exploded"

        a = mapping.answer_from_exception(InternalServerError("x"), 3.0)
        self.assertEqual(a["status_code"], 503)
        self.assertEqual(a["error"], "InternalServerError: upstream exploded")
        self.assertEqual(json.loads(a["body"])["error"]["message"], "upstream exploded")
        self.assertEqual(mapping.answer_from_exception(ValueError("boom"), 1.0)["status_code"], 500)


class CallbackNeverRaises(unittest.TestCase):
    def test_bad_settings_are_counted_and_logged_not_raised(self):
        import asyncio
        from unittest import mock

        from untaken_litellm.callback import UntakenLogger

        cb = UntakenLogger()
        with mock.patch.dict(os.environ, {"LITELLM_UNTAKEN_TIMEOUT_MS": "soon"}), \
                self.assertLogs("untaken_litellm", "WARNING") as logs:
            out = asyncio.run(cb.async_pre_call_hook(AUTH, None, proxy_data(), "acompletion"))
        self.assertIsNone(out)
        self.assertEqual(cb.counts(), {"pre_call/bad_settings": 1})
        self.assertIn("LITELLM_UNTAKEN_TIMEOUT_MS", logs.output[0])

    def test_an_unreachable_sidecar_is_counted_and_the_hook_returns_at_once(self):
        import asyncio

        from untaken_litellm.callback import UntakenLogger

        cb = UntakenLogger(Settings(target="127.0.0.1:9", timeout_ms=200))
        data = proxy_data()
        data["proxy_server_request"]["body"]["messages"] = [{"role": "user", "content": "zq-secret-prompt"}]

        async def scenario():
            self.assertIsNone(await cb.async_pre_call_hook(AUTH, None, data, "acompletion"))
            self.assertEqual(len(cb._pending), 1)  # Mirror in flight, the request went on
            await cb.async_post_call_failure_hook(proxy_data(), RuntimeError("upstream down"), AUTH)
            await asyncio.gather(*list(cb._tasks))

        with self.assertLogs("untaken_litellm", "WARNING") as logs:
            asyncio.run(scenario())
        self.assertEqual(cb.counts(), {"mirror/error_unavailable": 1})
        text = " ".join(logs.output)
        self.assertIn("call_id=call-1", text)
        self.assertNotIn("zq-secret-prompt", text)


if __name__ == "__main__":
    unittest.main()
