// Does the gateway's consent page refuse to be framed (clickjacking)? Checked in a real browser:
// headless Chromium driven by playwright-core.
//
//   node frame_check.mjs CHROMIUM PLAYWRIGHT_CORE_DIR AUTHORIZE_URL USER PASSWORD
//
// 1. Opens AUTHORIZE_URL, signs in as USER and reaches the consent page at the top level (it
//    must render there: "Allow access?").
// 2. Serves, from 127.0.0.1 on another port (same site, so the sign-in cookie goes along), a
//    page that frames AUTHORIZE_URL, and one that frames a harmless page of its own (the
//    control: a frame that is allowed does render, so the check can tell).
// 3. Prints one JSON line: whether each rendered at the top level and in its frame, whether
//    the consent page was served into the frame, and what the browser said.
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';

const [chromium, pwDir, authorizeUrl, user, password] = process.argv.slice(2);
const require = createRequire(path.join(pwDir, 'package.json'));
const { chromium: launcher } = require('playwright-core');

const parent = http.createServer((req, res) => {
  const target = req.url === '/control' ? '/plain' : authorizeUrl;
  if (req.url === '/plain') {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>plain</title><p id="x">framed fine</p>');
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(`<!doctype html><title>parent</title><iframe id="f" src="${target.replace(/"/g, '&quot;')}" width="800" height="600"></iframe>`);
});
await new Promise((ok) => parent.listen(0, '127.0.0.1', ok));
const origin = `http://127.0.0.1:${parent.address().port}`;

const browser = await launcher.launch({
  executablePath: chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-proxy-server'],
});
const out = { console: [] };
try {
  const page = await browser.newPage();
  page.on('console', (m) => out.console.push(m.text()));

  // 1. Top level: sign in, see the consent page.
  await page.goto(authorizeUrl);
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  out.topLevel = (await page.content()).includes('Allow access?');

  // 2. The same page in a frame of another page on the same site.
  // The frame's response passes through here, unchanged, so its body can be read.
  let servedIntoFrame = false;
  await page.route(authorizeUrl, async (route) => {
    const r = await route.fetch();
    servedIntoFrame = (await r.text()).includes('Allow access?');
    out.frameHeaders = { csp: r.headers()['content-security-policy'], xfo: r.headers()['x-frame-options'] };
    await route.fulfill({ response: r });
  });
  await page.goto(`${origin}/framed`);
  await page.waitForTimeout(1000);
  const frame = page.frames().find((f) => f !== page.mainFrame());
  out.frameUrl = frame ? frame.url() : null;
  out.framed = false;
  if (frame) {
    try {
      out.framed = await frame.evaluate(() => document.body.innerText.includes('Allow access?'));
    } catch (e) {
      out.frameError = String(e).split('\n')[0];
    }
  }
  out.servedIntoFrame = servedIntoFrame;

  // 3. The control: an allowed frame renders, and is seen to.
  await page.goto(`${origin}/control`);
  await page.waitForTimeout(500);
  const control = page.frames().find((f) => f !== page.mainFrame());
  out.controlFramed = control ? await control.evaluate(() => document.body.innerText.includes('framed fine')) : false;
} finally {
  await browser.close();
  parent.close();
}
console.log(JSON.stringify(out));
