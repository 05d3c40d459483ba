#!/usr/bin/env python3
"""List the tools of a virtual server and call one tool several times, with the official Python
MCP SDK, in one era; what policy tests need to see what a member is shown and may call.

Usage:
    python calls.py URL TOOL ARGS_JSON [ARGS_JSON ...] [--era legacy|modern]

Output: `tools: NAME,NAME,...` (sorted), then for each ARGS_JSON one line: `ok TEXT` (the
call's text content), `tool-error TEXT` (a result with isError) or `error CODE MESSAGE` (a
JSON-RPC error). Exit status 0 unless the client itself failed. Requires `mcp==2.3.0`.
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import mcp_types as types
from mcp import Client, MCPError

ERAS = {"legacy": "legacy", "modern": "auto"}


def text_of(r: types.CallToolResult) -> str:
    return " ".join(c.text for c in r.content if isinstance(c, types.TextContent))


async def run(url: str, era: str, tool: str, calls: list[dict]) -> None:
    with anyio.fail_after(60):
        await calls_in(url, era, tool, calls)


async def calls_in(url: str, era: str, tool: str, calls: list[dict]) -> None:
    async with Client(url, mode=ERAS[era], cache=None, read_timeout_seconds=20) as c:
        names: list[str] = []
        cursor = None
        while True:
            page = await c.list_tools(cursor=cursor)
            names.extend(t.name for t in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        print("tools: " + ",".join(sorted(names)), flush=True)
        for args in calls:
            try:
                r = await c.call_tool(tool, args)
            except MCPError as e:
                print(f"error {e.code} {e}", flush=True)
                continue
            print(("tool-error " if r.is_error else "ok ") + text_of(r), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("tool")
    ap.add_argument("calls", nargs="+", help="each call's arguments, a JSON object")
    ap.add_argument("--era", choices=sorted(ERAS), default="legacy")
    a = ap.parse_args()
    anyio.run(run, a.url, a.era, a.tool, [json.loads(x) for x in a.calls])
    return 0


if __name__ == "__main__":
    sys.exit(main())
