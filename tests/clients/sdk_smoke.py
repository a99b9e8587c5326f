"""Smoke test: the official `anthropic` Python SDK, pointed at cc-forwarder.

Run by tests/clients/run.sh with the forwarder in front of ccf-mock-upstream:

    ANTHROPIC_BASE_URL=http://127.0.0.1:<port> ANTHROPIC_API_KEY=<inbound token> python sdk_smoke.py

Prints one `PASS <check>` or `FAIL <check>: <why>` line per check, then `sdk: N passed, N failed`;
exits 1 if any check failed.
"""

import os
import sys
import traceback

import anthropic

BASE_URL = os.environ["ANTHROPIC_BASE_URL"]
TOKEN = os.environ["ANTHROPIC_API_KEY"]
# The SDK falls back to these variables when api_key / auth_token are None: drop them so every
# client below sends exactly the one credential it is given.
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ.pop("ANTHROPIC_AUTH_TOKEN", None)
MODEL = os.environ.get("SMOKE_MODEL", "claude-haiku-4-5")
# The mock's text deltas start with these words (crates/ccf-testkit/src/render.rs).
EXPECTED_PREFIX = "Hello"
MESSAGES = [{"role": "user", "content": "say hello"}]

results = []


def check(name):
    """Run the decorated function as a check right away and record PASS/FAIL."""

    def decorator(function):
        try:
            detail = function()
        except Exception as problem:  # noqa: BLE001 - any failure is a FAIL line
            results.append(False)
            print(f"FAIL {name}: {type(problem).__name__}: {problem}", flush=True)
            if os.environ.get("SMOKE_VERBOSE"):
                traceback.print_exc()
            return function
        results.append(True)
        suffix = f" ({detail})" if detail else ""
        print(f"PASS {name}{suffix}", flush=True)
        return function

    return decorator


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


def check_usage(usage, where):
    expect(usage is not None, f"{where}: no usage")
    expect(usage.input_tokens > 0, f"{where}: input_tokens={usage.input_tokens}")
    expect(usage.output_tokens > 0, f"{where}: output_tokens={usage.output_tokens}")


# max_retries=0: a failure must show up here, not be hidden by the SDK retrying.
client = anthropic.Anthropic(base_url=BASE_URL, api_key=TOKEN, max_retries=0, timeout=30)


@check("messages.create (non-streaming, x-api-key)")
def _create():
    message = client.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES)
    text = text_of(message)
    expect(message.type == "message", f"type={message.type!r}")
    expect(message.role == "assistant", f"role={message.role!r}")
    expect(text.startswith(EXPECTED_PREFIX), f"text={text!r}")
    expect(message.stop_reason == "end_turn", f"stop_reason={message.stop_reason!r}")
    check_usage(message.usage, "usage")
    return f"text={text!r}, usage in/out={message.usage.input_tokens}/{message.usage.output_tokens}"


@check("messages.stream (SSE helper)")
def _stream():
    deltas = []
    with client.messages.stream(model=MODEL, max_tokens=32, messages=MESSAGES) as stream:
        for text in stream.text_stream:
            deltas.append(text)
        final = stream.get_final_message()
    expect(len(deltas) > 0, "no text deltas")
    joined = "".join(deltas)
    expect(joined.startswith(EXPECTED_PREFIX), f"deltas={deltas!r}")
    expect(text_of(final) == joined, f"final text {text_of(final)!r} != deltas {joined!r}")
    expect(final.stop_reason == "end_turn", f"stop_reason={final.stop_reason!r}")
    check_usage(final.usage, "final usage")
    return f"{len(deltas)} deltas, usage in/out={final.usage.input_tokens}/{final.usage.output_tokens}"


@check("messages.create(stream=True) (raw events)")
def _create_stream():
    events = client.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES, stream=True)
    kinds = []
    text = ""
    output_tokens = None
    input_tokens = None
    for event in events:
        kinds.append(event.type)
        if event.type == "message_start":
            input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
        elif event.type == "message_delta":
            output_tokens = event.usage.output_tokens
    expect(kinds[:1] == ["message_start"], f"first event {kinds[:1]}")
    expect(kinds[-1:] == ["message_stop"], f"last event {kinds[-1:]}")
    expect("message_delta" in kinds, f"no message_delta in {kinds}")
    expect(text.startswith(EXPECTED_PREFIX), f"text={text!r}")
    expect(input_tokens and input_tokens > 0, f"message_start input_tokens={input_tokens}")
    expect(output_tokens and output_tokens > 0, f"message_delta output_tokens={output_tokens}")
    return f"{len(kinds)} events"


@check("messages.count_tokens")
def _count_tokens():
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    expect(isinstance(counted.input_tokens, int), f"input_tokens={counted.input_tokens!r}")
    expect(counted.input_tokens > 0, f"input_tokens={counted.input_tokens}")
    return f"input_tokens={counted.input_tokens}"


@check("models.list")
def _models():
    models = client.models.list()
    ids = [model.id for model in models.data]
    expect(len(ids) > 0, "no models")
    return f"{len(ids)} models"


@check("wrong key -> anthropic.AuthenticationError (401)")
def _wrong_key():
    bad = anthropic.Anthropic(base_url=BASE_URL, api_key="wrong-" + TOKEN, max_retries=0, timeout=30)
    try:
        bad.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES)
    except anthropic.AuthenticationError as error:
        expect(error.status_code == 401, f"status={error.status_code}")
        body = error.body if isinstance(error.body, dict) else {}
        expect(body.get("type") == "error", f"body={error.body!r}")
        expect(
            body.get("error", {}).get("type") == "authentication_error",
            f"body={error.body!r}",
        )
        return f"message={body['error'].get('message')!r}"
    raise AssertionError("request with a wrong key succeeded")


@check("auth_token= (Authorization: Bearer) create + stream")
def _bearer():
    bearer = anthropic.Anthropic(
        base_url=BASE_URL, api_key=None, auth_token=TOKEN, max_retries=0, timeout=30
    )
    message = bearer.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES)
    expect(text_of(message).startswith(EXPECTED_PREFIX), f"text={text_of(message)!r}")
    check_usage(message.usage, "usage")
    with bearer.messages.stream(model=MODEL, max_tokens=32, messages=MESSAGES) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    expect(streamed.startswith(EXPECTED_PREFIX), f"streamed={streamed!r}")
    check_usage(final.usage, "final usage")
    return None


@check("wrong bearer token -> anthropic.AuthenticationError (401)")
def _wrong_bearer():
    bad = anthropic.Anthropic(
        base_url=BASE_URL, api_key=None, auth_token="wrong", max_retries=0, timeout=30
    )
    try:
        bad.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES)
    except anthropic.AuthenticationError as error:
        expect(error.status_code == 401, f"status={error.status_code}")
        return None
    raise AssertionError("request with a wrong bearer token succeeded")


passed = results.count(True)
failed = results.count(False)
print(f"sdk: {passed} passed, {failed} failed (anthropic {anthropic.__version__})", flush=True)
sys.exit(1 if failed else 0)
