#!/usr/bin/env python3
"""Call one tool with the official Python MCP SDK in one era, answering the gateway's request to
confirm the call (an elicitation) as told; what tests of `ask` rules need.

Usage:
    python confirm.py URL TOOL ARGS_JSON --era legacy|modern --answer ANSWER

ANSWER: accept, untick (accept with confirm = false), decline, cancel, late:SECONDS (accept
after SECONDS), or none (the client declares no elicitation at all).

Output: one line `asked MESSAGE` per question (its message on one line, newlines as ` | `),
then `ok TEXT`, `tool-error TEXT` or `error CODE MESSAGE`. Exit status 0 unless the client
itself failed. Requires `mcp==2.3.0`.
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


async def run(url: str, era: str, tool: str, args: dict, answer: str) -> None:
    async def elicit(context: object, params: types.ElicitRequestParams) -> types.ElicitResult:
        print("asked " + params.message.replace("\n", " | "), flush=True)
        if answer.startswith("late:"):
            await anyio.sleep(float(answer.split(":", 1)[1]))
            return types.ElicitResult(action="accept", content={"confirm": True})
        if answer == "untick":
            return types.ElicitResult(action="accept", content={"confirm": False})
        if answer in ("decline", "cancel"):
            return types.ElicitResult(action=answer)
        return types.ElicitResult(action="accept", content={"confirm": True})

    callback = None if answer == "none" else elicit
    with anyio.fail_after(60):
        async with Client(
            url, mode=ERAS[era], cache=None, read_timeout_seconds=30, elicitation_callback=callback
        ) as c:
            try:
                r = await c.call_tool(tool, args)
            except MCPError as e:
                print(f"error {e.code} {e}", flush=True)
                return
            print(("tool-error " if r.is_error else "ok ") + text_of(r), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("tool")
    ap.add_argument("args", help="the call's arguments, a JSON object")
    ap.add_argument("--era", choices=sorted(ERAS), default="legacy")
    ap.add_argument("--answer", default="accept")
    a = ap.parse_args()
    anyio.run(run, a.url, a.era, a.tool, json.loads(a.args), a.answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
