"""Sign in to a Manifold virtual server with the MCP Python SDK's OAuth client, as an
application would: discovery from the 401, dynamic client registration, authorization code
with PKCE and `resource`, then list tools and call one, in the era asked for.

    python oauth_client.py URL USER PASSWORD TOOL [--era legacy|modern] [--client-metadata-url URL]
                                                  [--provider NAME]

With `--client-metadata-url` the client identifies itself by that URL (a client ID metadata
document, which must list this script's redirect URI) instead of registering, when the
gateway's metadata says it accepts them.

The "browser" is httpx2 with a cookie jar: it follows the redirects, fills in the sign-in
form (or, with `--provider`, follows the sign-in page's link to that identity provider, whose
own sign-in is scripted, and comes back) and allows access on the consent page, and stops at the client's redirect URI,
whose `code`, `state` and `iss` go back to the SDK. Requires `mcp==2.3.0`.

Output: `tools: [...]` and `call: TEXT`; exit status 0 on success.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import urllib.parse

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT = "http://127.0.0.1:9/callback"


class Memory:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def hidden(page: str) -> dict[str, str]:
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {html.unescape(k): html.unescape(v) for k, v in found}


async def browse(url: str, user: str, password: str, provider: str | None) -> AuthorizationCodeResult:
    """Follow the authorization URL to the redirect URI, signing in and allowing on the way."""
    base = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(url))
    async with httpx2.AsyncClient(follow_redirects=False) as b:
        cur = url
        r = await b.get(url)
        for _ in range(20):
            if r.status_code in (302, 303):
                loc = r.headers["location"]
                if loc.startswith(REDIRECT):
                    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))
                    if "code" not in q:
                        raise SystemExit(f"the authorization failed: {q}")
                    return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))
                cur = urllib.parse.urljoin(cur, loc)
                r = await b.get(cur)
                continue
            page = r.text
            form = hidden(page)
            link = provider and re.search(rf'href="(/oauth/sso/{re.escape(provider)}\?[^"]*)"', page)
            if link:
                cur = base + html.unescape(link.group(1))
                r = await b.get(cur)
            elif 'action="/oauth/login"' in page:
                form.update(username=user, password=password)
                r = await b.post(base + "/oauth/login", data=form)
            elif 'action="/oauth/consent"' in page:
                form["decision"] = "allow"
                r = await b.post(base + "/oauth/consent", data=form)
            else:
                raise SystemExit(f"an unexpected page ({r.status_code}): {page[:300]}")
    raise SystemExit("too many steps")


async def run(
    url: str, user: str, password: str, tool: str, era: str, metadata_url: str | None, sso: str | None
) -> None:
    result: dict[str, AuthorizationCodeResult] = {}

    async def redirect_handler(auth_url: str) -> None:
        result["code"] = await browse(auth_url, user, password, sso)

    async def callback_handler() -> AuthorizationCodeResult:
        return result["code"]

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK test client",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=Memory(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=metadata_url,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="legacy" if era == "legacy" else "auto", cache=None) as c:
            tools = await c.list_tools()
            names = [t.name for t in tools.tools]
            print(f"tools: {names}", flush=True)
            r = await c.call_tool(tool, {"message": "from python"})
            text = " ".join(getattr(x, "text", "") for x in r.content)
            print(f"call: {text}", flush=True)
    client = provider.context.client_info
    print(f"client_id: {client.client_id if client else None}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("tool")
    p.add_argument("--era", choices=["legacy", "modern"], default="legacy")
    p.add_argument("--client-metadata-url")
    p.add_argument("--provider")
    a = p.parse_args()
    anyio.run(run, a.url, a.user, a.password, a.tool, a.era, a.client_metadata_url, a.provider)


if __name__ == "__main__":
    sys.exit(main())
