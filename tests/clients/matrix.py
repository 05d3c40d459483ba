#!/usr/bin/env python3
"""Everything one member can see and do on one virtual server, with the official Python MCP SDK
in one era: the policy matrix test compares it with what `policy explain` says.

Usage:
    python matrix.py URL API_KEY PROBES_JSON [--era legacy|modern]

PROBES_JSON: {"tools": {NAME: ARGS}, "prompts": {NAME: ARGS}, "reads": [URI],
"completions": [PROMPT_NAME], "subscribe": [URI]} (subscriptions only in the legacy era).

Output: one JSON object: {"connect": "ok" | "error CODE MESSAGE"} and, once connected, the four
lists ("tools", "prompts", "resources", "templates": sorted names or URIs, all pages) and for
each probe "ok" or "error CODE MESSAGE" ("calls", "gets", "reads", "completions",
"subscriptions"). Exit status 0 unless the client itself failed. Requires `mcp==2.3.0`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

ERAS = {"legacy": "legacy", "modern": "auto"}


def mcp_error(e: BaseException) -> MCPError | None:
    """The MCP error inside `e` (itself, or within nested exception groups)."""
    if isinstance(e, MCPError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            found = mcp_error(inner)
            if found is not None:
                return found
    return None


async def pages(fetch, field: str, key: str) -> list[str]:
    out: list[str] = []
    cursor = None
    while True:
        page = await fetch(cursor=cursor)
        out.extend(getattr(x, key) for x in getattr(page, field))
        cursor = page.next_cursor
        if not cursor:
            return sorted(out)


async def outcome(call) -> str:
    try:
        r = await call
    except MCPError as e:
        return f"error {e.code} {e}"
    if isinstance(r, types.CallToolResult) and r.is_error:
        return "tool-error " + " ".join(getattr(c, "text", "") for c in r.content)
    return "ok"


async def run(url: str, key: str, era: str, probes: dict) -> dict:
    out: dict = {}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        try:
            c = await Client(transport, mode=ERAS[era], cache=None, read_timeout_seconds=20).__aenter__()
        except BaseException as e:  # noqa: BLE001 - the refusal comes wrapped in task groups
            refusal = mcp_error(e)
            if refusal is None:
                raise
            out["connect"] = f"error {refusal.code} {refusal}"
            return out
        try:
            out["connect"] = "ok"
            out["tools"] = await pages(c.list_tools, "tools", "name")
            out["prompts"] = await pages(c.list_prompts, "prompts", "name")
            out["resources"] = await pages(c.list_resources, "resources", "uri")
            out["templates"] = await pages(c.list_resource_templates, "resource_templates", "uri_template")
            out["calls"] = {n: await outcome(c.call_tool(n, a)) for n, a in probes.get("tools", {}).items()}
            out["gets"] = {n: await outcome(c.get_prompt(n, a)) for n, a in probes.get("prompts", {}).items()}
            out["reads"] = {u: await outcome(c.read_resource(u)) for u in probes.get("reads", [])}
            out["completions"] = {
                n: await outcome(c.complete(types.PromptReference(type="ref/prompt", name=n), {"name": "name", "value": "a"}))
                for n in probes.get("completions", [])
            }
            if era == "legacy":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out["subscriptions"] = {u: await outcome(c.subscribe_resource(u)) for u in probes.get("subscribe", [])}
        finally:
            await c.__aexit__(None, None, None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("key")
    ap.add_argument("probes")
    ap.add_argument("--era", choices=sorted(ERAS), default="legacy")
    a = ap.parse_args()

    async def go() -> None:
        with anyio.fail_after(90):
            print(json.dumps(await run(a.url, a.key, a.era, json.loads(a.probes))), flush=True)

    anyio.run(go)
    return 0


if __name__ == "__main__":
    sys.exit(main())
