// The page (web/www/) in headless Chromium: serves web/ on localhost, waits
// for the page's self-check and benchmark, reads its results back, saves a
// screenshot, and exits non-zero unless every check passed and every row ran.
// Chromium's WebGPU needs --enable-unsafe-webgpu for a software adapter
// (SwiftShader, which Debian's chromium ships); Dawn refuses lavapipe.
//
// node tests/browser.mjs [--screenshot FILE] [--json FILE]
import { createServer } from "node:http";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = fileURLToPath(new URL("..", import.meta.url));
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const screenshot = arg("--screenshot", join(root, "out", "page.png"));
const json = arg("--json", join(root, "out", "page.json"));
await mkdir(dirname(screenshot), { recursive: true });
await mkdir(dirname(json), { recursive: true });
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://localhost").pathname));
  try {
    const body = await readFile(join(root, path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://localhost:${server.address().port}/www/index.html`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  // Without the background-networking flags Chromium keeps dialing out on a closed network.
  args: ["--enable-unsafe-webgpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-domain-reliability", "--no-pings"],
});
let code = 1;
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 760 } });
  const console_ = [];
  page.on("console", (m) => console_.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`[pageerror] ${e}`));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("result").textContent !== "pending", null, { timeout: 240_000 });
  const result = JSON.parse(await page.textContent("#result"));
  await page.screenshot({ path: screenshot, fullPage: true });
  await writeFile(json, JSON.stringify({ ...result, console: console_ }, null, 2));
  console.log(`adapter: ${result.adapter}`);
  console.log(`self-check: ${result.checks} checks, ${result.failed} failed (${result.checkSeconds?.toFixed(1)} s)`);
  for (const row of result.rows) console.log(`${row.op.padEnd(24)} ${row.shape.padEnd(30)} ${row.ms.toFixed(3).padStart(9)} ms ${row.gbps.toFixed(2).padStart(7)} GB/s (${row.timer})`);
  const problems = [];
  if (result.error) problems.push(`the page failed: ${result.error}`);
  if (result.checks !== 315 || result.failed !== 0) problems.push(`self-check: ${result.failed} of ${result.checks} failed: ${result.failures.join("; ")}`);
  if (result.rows.length !== 10 || !result.rows.every((r) => r.ms > 0)) problems.push(`benchmark: ${result.rows.length} rows`);
  for (const p of problems) console.error(`FAILED: ${p}`);
  if (problems.length) console.error(console_.join("\n"));
  console.log(`screenshot: ${screenshot}`);
  code = problems.length ? 1 : 0;
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
