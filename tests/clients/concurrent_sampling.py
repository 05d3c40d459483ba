#!/usr/bin/env python3
"""Several official Python SDK clients call a sampling tool at the same time through one gateway.

Usage:
    python concurrent_sampling.py URL TOOL [--era legacy|modern] [--clients N] [--calls M]

Each of N clients (each its own session, or its own stateless requests in modern mode) makes M
concurrent calls of TOOL (a tool that asks its client for sampling, e.g. server-everything's
`trigger-sampling-request`) with a prompt naming the client and the call. Every client answers
sampling with a reply naming itself. A call passes when it succeeds and its result carries its
own client's reply; a client fails when its sampling callback is asked about another client's
prompt. Requires `mcp==2.3.0`.

Output: `ok client C call K` or `FAIL client C call K: REASON` per call, then `N passed, M failed`.
Exit status 0 if everything passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

ERAS = {"legacy": "legacy", "modern": "auto"}


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def run_client(url: str, era: str, tool: str, me: int, calls: int, results: list[str]) -> None:
    asked: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sent = " ".join(m.content.text for m in params.messages if isinstance(m.content, types.TextContent))
        asked.append(sent)
        # A little delay, so that the clients' questions overlap.
        await anyio.sleep(0.05)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"reply from client-{me}"),
            model="manifold-test-model",
            stop_reason="endTurn",
        )

    client = Client(url, mode=ERAS[era], cache=None, read_timeout_seconds=60, sampling_callback=sampling)
    async with client:

        async def one(k: int) -> None:
            name = f"client {me} call {k}"
            try:
                r = await client.call_tool(tool, {"prompt": f"from client-{me} call-{k}", "maxTokens": 8})
                t = text_of(r)
                if r.is_error:
                    results.append(f"FAIL {name}: tool error {t!r}")
                elif f"reply from client-{me}" not in t:
                    results.append(f"FAIL {name}: result {t!r} is not this client's reply")
                else:
                    results.append(f"ok {name}")
            except Exception as e:  # noqa: BLE001 - reported, not raised
                results.append(f"FAIL {name}: {type(e).__name__}: {e}")

        async with anyio.create_task_group() as tg:
            for k in range(calls):
                tg.start_soon(one, k)
    foreign = [a for a in asked if f"from client-{me} " not in a]
    if foreign:
        results.append(f"FAIL client {me} questions: it was asked about other clients' calls: {foreign}")


async def run(url: str, era: str, tool: str, clients: int, calls: int) -> list[str]:
    results: list[str] = []
    with anyio.fail_after(240):
        async with anyio.create_task_group() as tg:
            for me in range(clients):
                tg.start_soon(run_client, url, era, tool, me, calls, results)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("tool")
    ap.add_argument("--era", choices=sorted(ERAS), default="legacy")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    results = anyio.run(run, args.url, args.era, args.tool, args.clients, args.calls)
    for line in results:
        print(line)
    failed = sum(1 for r in results if r.startswith("FAIL"))
    print(f"{len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
