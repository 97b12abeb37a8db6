// Serves page.html and the nats.ws bundle on 127.0.0.1:<port>, opens the page in
// headless Chromium twice — from the allowed origin (http://127.0.0.1:<port>) and from
// another one (http://localhost:<port>) — and prints what each run reported as JSON.
//
//   node run.mjs <ws-url> <http-port>
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const [wsUrl, port] = process.argv.slice(2);
if (!wsUrl || !port) {
  console.error("usage: node run.mjs <ws-url> <http-port>");
  process.exit(2);
}
const files = {
  "/": ["page.html", "text/html"],
  "/nats.js": ["node_modules/nats.ws/esm/nats.js", "text/javascript"],
};
const server = http.createServer((req, res) => {
  const file = files[new URL(req.url, "http://x").pathname];
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
  out = {
    allowed: await run(`http://127.0.0.1:${port}`, "full"),
    refused: await run(`http://localhost:${port}`, "refused"),
  };
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(out));
