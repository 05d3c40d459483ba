#!/usr/bin/env python3
"""Real-client conformance check for a Manifold virtual server, built on the official Python MCP SDK.

Usage:
    python python_client.py URL [--era legacy] [--timeout SECONDS]

URL is a virtual server endpoint, e.g. http://127.0.0.1:PORT/mcp/all. The virtual server is
expected to aggregate three prefixed stdio connectors named `everything`
(@modelcontextprotocol/server-everything 2026.8.31), `time` (PyPI mcp-server-time) and `memory`
(@modelcontextprotocol/server-memory).

Requires `mcp==2.3.0`. The SDK's Streamable HTTP client is used through `mcp.Client(URL, mode=...)`:
`--era legacy` (the default) maps to `mode="legacy"`, which forces the `initialize` handshake
(offering protocol 2025-11-25); `--era modern` maps to the SDK's `"auto"` mode, which probes
`server/discover` and then speaks 2026-07-28 (stateless requests; sampling and elicitation
arrive as `input_required` rounds, which the SDK answers through the same callbacks).

Output: one line per check on stdout, `ok NAME` or `FAIL NAME: REASON`, then a final line
`N passed, M failed`. Exit status 0 if everything passed, 1 otherwise (2 for usage errors).
Diagnostics from the SDK (e.g. its logging warnings) go to stderr.

Several instances may run against one gateway at once: the gateway attributes every
server->client request to the client whose call asked it (see concurrent_sampling.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, MCPError
from mcp_types.version import LATEST_HANDSHAKE_VERSION

# --- names of things behind the gateway -------------------------------------------------------

EVERYTHING = "everything"
TIME = "time"
MEMORY = "memory"
CONNECTORS = (EVERYTHING, TIME, MEMORY)
SEP = "__"  # tool / prompt namespacing: {connector}__{name}
URI_SEP = "+"  # resource namespacing: {connector}+{original-uri}


def tool(connector: str, name: str) -> str:
    return f"{connector}{SEP}{name}"


T_ECHO = tool(EVERYTHING, "echo")
T_IMAGE = tool(EVERYTHING, "get-tiny-image")
T_EMBEDDED = tool(EVERYTHING, "get-resource-reference")
T_LINKS = tool(EVERYTHING, "get-resource-links")
T_LONG = tool(EVERYTHING, "trigger-long-running-operation")
T_SAMPLING = tool(EVERYTHING, "trigger-sampling-request")
T_ELICIT = tool(EVERYTHING, "trigger-elicitation-request")
T_NOW = tool(TIME, "get_current_time")
T_CONVERT = tool(TIME, "convert_time")
T_CREATE = tool(MEMORY, "create_entities")
T_READ_GRAPH = tool(MEMORY, "read_graph")
T_DELETE = tool(MEMORY, "delete_entities")

EXPECTED_TOOLS = (
    T_ECHO,
    T_IMAGE,
    T_EMBEDDED,
    T_LINKS,
    T_LONG,
    T_SAMPLING,  # registered upstream only if the gateway forwarded the sampling capability
    T_ELICIT,  # registered upstream only if the gateway forwarded the elicitation capability
    T_NOW,
    T_CONVERT,
    T_CREATE,
    T_READ_GRAPH,
    T_DELETE,
)

P_ARGS = tool(EVERYTHING, "args-prompt")
P_COMPLETABLE = tool(EVERYTHING, "completable-prompt")
TEXT_TEMPLATE = f"{EVERYTHING}{URI_SEP}demo://resource/dynamic/text/{{resourceId}}"

# `modern` lets the SDK probe `server/discover` and adopt 2026-07-28 (stateless requests; the
# sampling and elicitation checks then go through the gateway's MRTR bridge).
ERAS = {"legacy": "legacy", "modern": "auto"}
MODERN_VERSION = "2026-07-28"

RUN_ID = uuid.uuid4().hex[:12]
SAMPLING_REPLY = f"manifold-sampled-{RUN_ID}"
ELICIT_NAME = f"Manifold Tester {RUN_ID}"


class CheckFailed(Exception):
    pass


def require(cond: Any, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def texts(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def short(s: str, n: int = 160) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def describe(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {short(str(e), 300)}"


def require_ok(result: types.CallToolResult, what: str) -> None:
    require(not result.is_error, f"{what} returned isError: {short(texts(result))}")


async def paginate(fetch: Callable[[str | None], Awaitable[Any]], attr: str, cap: int = 50) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(cap):
        page = await fetch(cursor)
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if cursor is None:
            return items
    raise CheckFailed(f"pagination did not end after {cap} pages")


# --- client-side callbacks --------------------------------------------------------------------

callback_log: dict[str, list[Any]] = {"sampling": [], "elicitation": []}


async def sampling_callback(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult | types.ErrorData:
    callback_log["sampling"].append(params)
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLING_REPLY),
        model="manifold-test-model",
        stop_reason="endTurn",
    )


def value_for(name: str, prop: dict[str, Any]) -> Any:
    """A value that satisfies one property of a (flat) elicitation schema."""
    if "default" in prop:
        return prop["default"]
    typ = prop.get("type")
    if typ == "string":
        if prop.get("enum"):
            return prop["enum"][0]
        if prop.get("oneOf"):
            return prop["oneOf"][0]["const"]
        fmt = prop.get("format")
        if fmt == "email":
            return "tester@example.com"
        if fmt == "uri":
            return "https://example.com/"
        if fmt == "date":
            return "2000-01-02"
        if fmt == "date-time":
            return "2000-01-02T03:04:05Z"
        return f"value of {name}"
    if typ == "boolean":
        return True
    if typ in ("integer", "number"):
        lo = prop.get("minimum", 1)
        return int(lo) if typ == "integer" else float(lo)
    if typ == "array":
        items = prop.get("items", {})
        choices = items.get("enum") or [c["const"] for c in items.get("anyOf", []) if "const" in c]
        return choices[: max(1, prop.get("minItems", 1))]
    return None


async def elicitation_callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
    callback_log["elicitation"].append(params)
    if not isinstance(params, types.ElicitRequestFormParams):
        return types.ElicitResult(action="decline")
    props: dict[str, Any] = params.requested_schema.get("properties", {})
    content = {k: v for k, p in props.items() if (v := value_for(k, p)) is not None}
    if "name" in props:
        content["name"] = ELICIT_NAME
    if "check" in props:
        content["check"] = True
    if "integer" in props:
        content["integer"] = 7
    return types.ElicitResult(action="accept", content=content)


# --- checks -----------------------------------------------------------------------------------


async def check_tools_list(c: Client) -> None:
    tools = await paginate(lambda cur: c.list_tools(cursor=cur), "tools")
    names = [t.name for t in tools]
    missing = [n for n in EXPECTED_TOOLS if n not in names]
    require(not missing, f"missing tools {missing}; got {names}")
    for conn in CONNECTORS:
        require(any(n.startswith(conn + SEP) for n in names), f"no tools from connector {conn!r}")
    too_long = [n for n in names if len(n) > 64]
    require(not too_long, f"names longer than 64 chars: {too_long}")
    dups = sorted({n for n in names if names.count(n) > 1})
    require(not dups, f"duplicate tool names: {dups}")
    # The test bundle may add more connectors (e.g. everything over HTTP); each is prefixed.
    unprefixed = [n for n in names if SEP not in n]
    require(not unprefixed, f"tools without a connector prefix: {unprefixed}")
    for t in tools:
        require(isinstance(t.input_schema, dict) and t.input_schema.get("type") == "object", f"{t.name}: bad inputSchema")


async def check_echo(c: Client) -> None:
    msg = f"hello from the python client {RUN_ID}"
    r = await c.call_tool(T_ECHO, {"message": msg})
    require_ok(r, T_ECHO)
    require(msg in texts(r), f"echo text {short(texts(r))!r} lacks the message")


async def check_image(c: Client) -> None:
    r = await c.call_tool(T_IMAGE, {})
    require_ok(r, T_IMAGE)
    images = [x for x in r.content if x.type == "image"]
    require(images, f"no image content; types {[x.type for x in r.content]}")
    img = images[0]
    require(img.mime_type == "image/png", f"mimeType {img.mime_type!r}")
    raw = base64.b64decode(img.data, validate=True)
    require(raw.startswith(b"\x89PNG\r\n\x1a\n"), "image data is not a PNG")


async def check_embedded_resource(c: Client) -> None:
    r = await c.call_tool(T_EMBEDDED, {"resourceType": "Text", "resourceId": 3})
    require_ok(r, T_EMBEDDED)
    embedded = [x for x in r.content if x.type == "resource"]
    require(embedded, f"no embedded resource; types {[x.type for x in r.content]}")
    res = embedded[0].resource
    require(str(res.uri).endswith("demo://resource/dynamic/text/3"), f"embedded resource uri {res.uri!r}")
    require(isinstance(res, types.TextResourceContents) and "Resource 3" in res.text, f"embedded text {res!r}")


async def check_resource_links(c: Client) -> None:
    r = await c.call_tool(T_LINKS, {"count": 3})
    require_ok(r, T_LINKS)
    links = [x for x in r.content if x.type == "resource_link"]
    require(len(links) == 3, f"expected 3 resource_link items, got types {[x.type for x in r.content]}")
    require(all(str(x.uri).startswith(("demo://", f"{EVERYTHING}{URI_SEP}demo://")) for x in links), "odd link URIs")


async def check_time(c: Client) -> None:
    r = await c.call_tool(T_NOW, {"timezone": "UTC"})
    require_ok(r, T_NOW)
    try:
        data = json.loads(texts(r))
    except ValueError as e:
        raise CheckFailed(f"not JSON: {short(texts(r))!r}") from e
    require(data.get("timezone") == "UTC", f"timezone {data.get('timezone')!r}")
    dt = datetime.fromisoformat(data["datetime"])
    require(dt.utcoffset() is not None and dt.utcoffset().total_seconds() == 0, f"datetime {data['datetime']!r}")
    require(abs(dt.timestamp() - time.time()) < 600, f"datetime {data['datetime']!r} is not now")


async def check_memory(c: Client) -> None:
    name = f"manifold-entity-{RUN_ID}"
    obs = f"observed by python client {RUN_ID}"
    r = await c.call_tool(T_CREATE, {"entities": [{"name": name, "entityType": "test", "observations": [obs]}]})
    require_ok(r, T_CREATE)
    try:
        r = await c.call_tool(T_READ_GRAPH, {})
        require_ok(r, T_READ_GRAPH)
        graph = r.structured_content or json.loads(texts(r))
        found = [e for e in graph.get("entities", []) if e.get("name") == name]
        require(found, f"entity {name} not in read_graph result")
        require(obs in found[0].get("observations", []), f"observations {found[0].get('observations')!r}")
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await c.call_tool(T_DELETE, {"entityNames": [name]})


async def check_prompts(c: Client) -> None:
    prompts = await paginate(lambda cur: c.list_prompts(cursor=cur), "prompts")
    by_name = {p.name: p for p in prompts}
    require(P_ARGS in by_name, f"{P_ARGS} not listed; got {sorted(by_name)}")
    require(P_COMPLETABLE in by_name, f"{P_COMPLETABLE} not listed")
    args = {a.name: a for a in by_name[P_ARGS].arguments or []}
    require("city" in args and args["city"].required, f"{P_ARGS} arguments {list(args)}")
    got = await c.get_prompt(P_ARGS, {"city": "Springfield", "state": f"ST-{RUN_ID}"})
    require(got.messages, "no messages")
    msg = got.messages[0].content
    require(isinstance(msg, types.TextContent), f"first message content is {msg.type}")
    require(f"Springfield, ST-{RUN_ID}" in msg.text, f"prompt text {msg.text!r}")


async def check_resources(c: Client) -> None:
    resources = await paginate(lambda cur: c.list_resources(cursor=cur), "resources")
    ours = [r for r in resources if r.uri.startswith(f"{EVERYTHING}{URI_SEP}demo://")]
    require(ours, f"no {EVERYTHING}{URI_SEP}demo:// resources; got {[r.uri for r in resources][:10]}")
    templates = await paginate(lambda cur: c.list_resource_templates(cursor=cur), "resource_templates")
    require(
        TEXT_TEMPLATE in [t.uri_template for t in templates],
        f"{TEXT_TEMPLATE} not in templates {[t.uri_template for t in templates]}",
    )
    # One listed (static) resource ...
    uri = ours[0].uri
    got = await c.read_resource(uri)
    require(got.contents, "no contents")
    require(got.contents[0].uri == uri, f"read {uri!r} returned contents uri {got.contents[0].uri!r}")
    # ... and one expanded from a template.
    uri = TEXT_TEMPLATE.replace("{resourceId}", "7")
    got = await c.read_resource(uri)
    require(got.contents and got.contents[0].uri == uri, f"read {uri!r} returned {got.contents!r}")
    require("Resource 7" in getattr(got.contents[0], "text", ""), f"template resource text {got.contents[0]!r}")


async def check_completion_prompt(c: Client) -> None:
    ref = types.PromptReference(type="ref/prompt", name=P_COMPLETABLE)
    r = await c.complete(ref, {"name": "department", "value": "Eng"})
    require("Engineering" in r.completion.values, f"department completions {r.completion.values}")
    # Context-dependent argument: the context must reach the upstream too.
    r = await c.complete(ref, {"name": "name", "value": ""}, context_arguments={"department": "Sales"})
    require(set(r.completion.values) == {"David", "Eve", "Frank"}, f"name completions {r.completion.values}")


async def check_completion_template(c: Client) -> None:
    ref = types.ResourceTemplateReference(type="ref/resource", uri=TEXT_TEMPLATE)
    r = await c.complete(ref, {"name": "resourceId", "value": "42"})
    require(r.completion.values == ["42"], f"resourceId completions {r.completion.values}")


async def check_progress(c: Client) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    r = await c.call_tool(T_LONG, {"duration": 1.5, "steps": 3}, progress_callback=on_progress)
    require_ok(r, T_LONG)
    require("completed" in texts(r), f"result {short(texts(r))!r}")
    await anyio.sleep(0.1)  # a notification racing the response is still delivered
    values = [p for p, _ in seen]
    require(len(values) >= 2, f"only {len(values)} progress notifications: {seen}")
    require(all(a < b for a, b in zip(values, values[1:])), f"progress not increasing: {values}")
    require(all(t == 3 for _, t in seen), f"progress totals {seen}")


async def check_sampling(c: Client) -> None:
    before = len(callback_log["sampling"])
    prompt = f"sample please {RUN_ID}"
    r = await c.call_tool(T_SAMPLING, {"prompt": prompt, "maxTokens": 32})
    require_ok(r, T_SAMPLING)
    require(len(callback_log["sampling"]) == before + 1, "sampling callback was not called exactly once")
    req = callback_log["sampling"][-1]
    sent = " ".join(m.content.text for m in req.messages if isinstance(m.content, types.TextContent))
    require(prompt in sent, f"sampling request messages {short(sent)!r} lack the prompt")
    require(SAMPLING_REPLY in texts(r), f"tool result {short(texts(r))!r} lacks the sampled text")


async def check_elicitation(c: Client) -> None:
    before = len(callback_log["elicitation"])
    r = await c.call_tool(T_ELICIT, {})
    require_ok(r, T_ELICIT)
    require(len(callback_log["elicitation"]) == before + 1, "elicitation callback was not called exactly once")
    out = texts(r)
    require("provided the requested information" in out, f"result {short(out)!r}")
    require(f"Name: {ELICIT_NAME}" in out, f"result lacks the elicited name: {short(out)!r}")
    require("Favorite Integer: 7" in out, f"result lacks the elicited integer: {short(out)!r}")


async def check_cancellation(c: Client, era: str) -> None:
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    result: list[types.CallToolResult] = []

    async def long_call() -> None:
        result.append(await c.call_tool(T_LONG, {"duration": 60, "steps": 120}, progress_callback=on_progress))

    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(long_call)
        with anyio.fail_after(10):
            await started.wait()  # the upstream is really working on it
        tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled for the abandoned request
    require(not result, "long call completed although it was cancelled")
    require(time.monotonic() - t0 < 15, "cancelling took too long")

    # The session must still be usable, and promptly.
    with anyio.fail_after(5):
        if era == "legacy":
            await c.session.send_ping()
        msg = f"after cancel {RUN_ID}"
        r = await c.call_tool(T_ECHO, {"message": msg})
    require_ok(r, T_ECHO)
    require(msg in texts(r), "echo after cancel returned the wrong text")


async def check_unknown_tool(c: Client) -> None:
    for name in (tool(EVERYTHING, f"no-such-tool-{RUN_ID}"), tool(f"nosuchconnector{RUN_ID}", "echo"), "unnamespaced"):
        try:
            r = await c.call_tool(name, {})
        except MCPError:
            continue
        require(r.is_error, f"calling unknown tool {name!r} succeeded: {short(texts(r))!r}")


# --- runner -----------------------------------------------------------------------------------


COUNTS = {"passed": 0, "failed": 0}


def report(name: str, err: str | None) -> None:
    if err is None:
        COUNTS["passed"] += 1
        print(f"ok {name}", flush=True)
    else:
        COUNTS["failed"] += 1
        print(f"FAIL {name}: {err}", flush=True)


CHECKS: list[tuple[str, Callable[[Client, str], Awaitable[None]]]] = [
    ("tools-list", lambda c, era: check_tools_list(c)),
    ("call-echo", lambda c, era: check_echo(c)),
    ("call-image", lambda c, era: check_image(c)),
    ("call-embedded-resource", lambda c, era: check_embedded_resource(c)),
    ("call-resource-links", lambda c, era: check_resource_links(c)),
    ("time-get-current-time", lambda c, era: check_time(c)),
    ("memory-round-trip", lambda c, era: check_memory(c)),
    ("prompts", lambda c, era: check_prompts(c)),
    ("resources", lambda c, era: check_resources(c)),
    ("completion-prompt", lambda c, era: check_completion_prompt(c)),
    ("completion-resource-template", lambda c, era: check_completion_template(c)),
    ("progress", lambda c, era: check_progress(c)),
    ("sampling", lambda c, era: check_sampling(c)),
    ("elicitation", lambda c, era: check_elicitation(c)),
    ("cancellation", check_cancellation),
    ("unknown-tool", lambda c, era: check_unknown_tool(c)),
]


async def run_check(client: Client, era: str, name: str, fn: Callable[[Client, str], Awaitable[None]], timeout: float) -> None:
    try:
        with anyio.fail_after(timeout):
            await fn(client, era)
    except CheckFailed as e:
        report(name, str(e))
    except TimeoutError:
        report(name, f"timed out after {timeout}s")
    except MCPError as e:
        report(name, f"MCP error {e.code}: {short(str(e), 300)}")
    except Exception as e:  # noqa: BLE001 - any other error fails this check only
        report(name, f"{type(e).__name__}: {short(str(e), 300)}")
    else:
        report(name, None)


async def check_handshake(c: Client, era: str) -> None:
    want = MODERN_VERSION if era == "modern" else LATEST_HANDSHAKE_VERSION
    require(c.protocol_version == want, f"negotiated {c.protocol_version}, expected {want}")
    caps = c.server_capabilities
    missing = [k for k in ("tools", "prompts", "resources", "completions") if getattr(caps, k) is None]
    require(not missing, f"server capabilities lack {missing}")


async def run(url: str, era: str, timeout: float) -> None:
    client = Client(
        url,
        mode=ERAS[era],
        cache=None,  # every list call must reach the gateway
        read_timeout_seconds=timeout,  # also bounds the initialize request
        sampling_callback=sampling_callback,
        elicitation_callback=elicitation_callback,
        client_info=types.Implementation(name="manifold-python-client", version="0.1.0"),
    )
    # A cancel scope must not be exited while the client entered inside it is still open (anyio scope
    # nesting), so the handshake is bounded by read_timeout_seconds and the whole run, including the
    # session DELETE on the way out, by an outer deadline.
    with anyio.fail_after(timeout * (len(CHECKS) + 2)):
        async with client:
            await run_check(client, era, "initialize", check_handshake, timeout)
            for name, fn in CHECKS:
                await run_check(client, era, name, fn, timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="virtual server URL, e.g. http://127.0.0.1:PORT/mcp/all")
    ap.add_argument("--era", choices=sorted(ERAS), default="legacy", help="protocol era (default: legacy)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-check timeout in seconds (default: 30)")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        anyio.run(run, args.url, args.era, args.timeout)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - connection failure, or an ExceptionGroup escaping the transport
        report("client" if COUNTS["passed"] + COUNTS["failed"] else "initialize", describe(e))
    print(f"# elapsed {time.monotonic() - t0:.1f}s", file=sys.stderr)
    print(f"{COUNTS['passed']} passed, {COUNTS['failed']} failed", flush=True)
    return 1 if COUNTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
