// Serves page.html and the nats.ws bundle on 127.0.0.1:<port>, opens the page in
// headless Chromium twice — from the allowed origin (http://127.0.0.1:<port>) and from
// another one (http://localhost:<port>) — and prints what each run reported as JSON.
//
//   node run.mjs <ws-url> <http-port>
//
// With an account's seed file as a third argument it plays the backend of operator
// mode instead: `/creds` mints a browser user (nats-jwt's encodeUser and fmtCreds,
// signed with the account key, WebSocket only, an hour to live), and the page logs in
// with credsAuthenticator; a second run comes without creds.
import { encodeUser, fmtCreds } from "nats-jwt";
import { createUser, fromSeed } from "nkeys.js";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const [wsUrl, port, accountSeedFile] = process.argv.slice(2);
if (!wsUrl || !port) {
  console.error("usage: node run.mjs <ws-url> <http-port>");
  process.exit(2);
}
const files = {
  "/": ["page.html", "text/html"],
  "/nats.js": ["node_modules/nats.ws/esm/nats.js", "text/javascript"],
};
const mintCreds = async () => {
  const account = fromSeed(new TextEncoder().encode(fs.readFileSync(accountSeedFile, "utf8").trim()));
  const user = createUser();
  const jwt = await encodeUser("browser-user", user, account, {
    pub: { allow: ["chat.>", "$JS.API.>", "_INBOX.>"] },
    sub: { allow: ["chat.>", "_INBOX.>"] },
    allowed_connection_types: ["WEBSOCKET"],
  }, { exp: Math.floor(Date.now() / 1000) + 3600 });
  return fmtCreds(jwt, user);
};
const server = http.createServer(async (req, res) => {
  const where = new URL(req.url, "http://x").pathname;
  if (where === "/creds" && accountSeedFile) {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(await mintCreds());
    return;
  }
  const file = files[where];
  if (!file) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": file[1] });
  res.end(fs.readFileSync(path.join(here, file[0])));
});
await new Promise((ok) => server.listen(Number(port), "127.0.0.1", ok));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const run = async (origin, mode) => {
  const page = await browser.newPage();
  const log = [];
  page.on("console", (m) => log.push(m.text()));
  await page.goto(`${origin}/?ws=${encodeURIComponent(wsUrl)}&mode=${mode}`);
  await page.waitForFunction(() => window.result !== undefined, null, { timeout: 60000 });
  const result = await page.evaluate(() => window.result);
  result.console = log;
  await page.close();
  return result;
};
let out;
try {
  out = accountSeedFile ? {
    creds: await run(`http://127.0.0.1:${port}`, "creds"),
    nocreds: await run(`http://127.0.0.1:${port}`, "refused"),
  } : {
    allowed: await run(`http://127.0.0.1:${port}`, "full"),
    refused: await run(`http://localhost:${port}`, "refused"),
  };
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(out));
