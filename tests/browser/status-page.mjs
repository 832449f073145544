// Drives headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM)
// through the admin status page: node status-page.mjs URL SCREENSHOT_PATH
//
// Protocol with tests/it/status_page.rs, one line each on stdout:
//   first N       the page loaded and shows N decisions
//   (then waits for a line on stdin: the test has published requests)
//   second M      the page's counter moved to M > N by itself (it polls)
//   screenshot P  the full page, as PNG
// Exits 1 with the reason on stderr on any failure (page errors included).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [url, shot] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node status-page.mjs URL SCREENSHOT_PATH");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(join(tmpdir(), "clearance-chromium-"));
const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once("line", resolve));

let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 900 },
    // Without the background-networking flags Chromium reaches for
    // Google's services, which this machine's closed network refuses.
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  await page.goto(url, { waitUntil: "load", timeout: 30_000 });
  // The first poll has rendered.
  await page.waitForFunction(() => document.getElementById("updated").textContent !== "never", null, { timeout: 30_000 });
  const title = await page.title();
  if (!title.startsWith("clearance")) throw new Error(`unexpected title ${JSON.stringify(title)}`);
  const policy = await page.textContent("#policy");
  if (!policy || policy.includes("?")) throw new Error(`no active policy shown: ${policy}`);
  const count = () => page.$eval("#total-decisions", (e) => Number(e.dataset.value));
  const first = await count();
  console.log(`first ${first}`);

  await nextLine();
  await page.waitForFunction(
    (n) => Number(document.getElementById("total-decisions").dataset.value) > n,
    first,
    { timeout: 60_000, polling: 250 },
  );
  const second = await count();
  console.log(`second ${second}`);
  // The poll that saw the new decisions computed their rate.
  const rates = await page.$eval("#allow-rate", (a) => [a.textContent, document.getElementById("deny-rate").textContent]);
  if (!rates.some((r) => Number(r.replace(/,/g, "")) > 0)) throw new Error(`decision rates did not move: ${rates}`);
  const denials = await page.$$eval("#denials tbody tr td:not(.empty)", (tds) => tds.length);
  if (denials === 0) throw new Error("no recent denial shown");
  if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot ${shot}`);
} catch (e) {
  console.error(`status-page.mjs: ${e?.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await context?.close().catch(() => {});
  stdin.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
