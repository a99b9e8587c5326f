// Browser tests of the web dashboard: playwright-core driving Debian's Chromium
// (/usr/bin/chromium; no browser is ever downloaded) against a running forwarder.
//
//   node web/tests/dashboard.mjs <admin-url> <proxy-url>
//
// The forwarder must have at least two groups (one endpoint each is enough) in front of a mock
// upstream, usage tracking on, and the admin API open on loopback. `tests/tests/dashboard.rs`
// starts exactly that and runs this script. Screenshots go to $CCF_SCREENSHOT_DIR (default
// target/dashboard-screenshots). Exit code 0 = every check passed.

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const [admin, proxy] = process.argv.slice(2).map((u) => u?.replace(/\/$/, ""));
if (!admin || !proxy) {
  console.error("usage: node dashboard.mjs <admin-url> <proxy-url>");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const shots = resolve(process.env.CCF_SCREENSHOT_DIR ?? join(here, "../../target/dashboard-screenshots"));
mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const results = [];
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`  ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    results.push({ name, ok: false, error });
    console.log(`  FAIL ${name}: ${error?.stack ?? error}`);
  }
}
function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function api(path, init) {
  const response = await fetch(`${admin}${path}`, init);
  const text = await response.text();
  if (!response.ok) throw new Error(`${init?.method ?? "GET"} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** One Messages API request through the proxy; returns its request id. */
async function sendThroughProxy(content) {
  const response = await fetch(`${proxy}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "test" },
    body: JSON.stringify({ model: "claude-sonnet-4-20250514", max_tokens: 32, messages: [{ role: "user", content }] }),
  });
  await response.arrayBuffer();
  assert(response.status === 200, `proxy answered ${response.status}`);
  const id = response.headers.get("x-ccf-request-id");
  assert(id, "the proxy's answer has no x-ccf-request-id");
  return id;
}

async function groupsByPriority() {
  const body = await api("/api/v1/groups");
  return [...(body.groups ?? [])].sort((a, b) => a.priority - b.priority);
}

const profile = mkdtempSync(join(tmpdir(), "ccf-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  acceptDownloads: true,
  viewport: { width: 1360, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const consoleErrors = [];
const page = context.pages()[0] ?? (await context.newPage());
page.on("console", (message) => {
  if (message.type() === "error") consoleErrors.push(`${message.text()} @ ${message.location()?.url ?? ""}`);
});
page.on("pageerror", (error) => consoleErrors.push(`page error: ${error.message}`));
page.on("response", (response) => {
  if (response.status() >= 400) consoleErrors.push(`HTTP ${response.status()} ${response.url()}`);
});

const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
const nav = async (name) => {
  await page.click(`[data-testid="nav-${name}"]`);
  await page.waitForLoadState("networkidle").catch(() => {});
};

let requestId = null;
let secondGroup = null;
try {
  console.log(`dashboard tests: admin ${admin}, proxy ${proxy}, chromium ${executablePath}`);

  await check("the dashboard loads without console errors", async () => {
    await page.goto(`${admin}/`, { waitUntil: "networkidle" });
    await page.waitForSelector('[data-testid="stream-state"].open', { timeout: 5000 });
    await page.waitForSelector('[data-testid="stat-active-group"]');
    const pages = ["endpoints", "groups", "requests", "usage", "config", "logs", "overview"];
    for (const name of pages) {
      await nav(name);
      await page.waitForTimeout(300);
    }
    assert(consoleErrors.length === 0, `console errors:\n${consoleErrors.join("\n")}`);
  });

  await check("a request sent through the proxy appears in the Requests page within a second", async () => {
    await nav("requests");
    await page.waitForSelector('[data-testid="stream-state"].open');
    const sent = Date.now();
    requestId = await sendThroughProxy("hello from the dashboard test");
    await page.waitForSelector(`tr[data-request-id="${requestId}"]`, { timeout: 1000 });
    console.log(`       row shown ${Date.now() - sent} ms after the request was sent`);
    // The detail view with its lifecycle and attempts.
    await page.waitForTimeout(500);
    await page.click(`tr[data-request-id="${requestId}"]`);
    await page.waitForSelector('[data-testid="request-detail"]');
    await page.waitForTimeout(500);
    await shot("requests-detail");
    await page.click('[data-testid="request-detail"] button');
  });

  await check("pausing a group in the UI moves traffic to the next group", async () => {
    const groups = await groupsByPriority();
    assert(groups.length >= 2, `need two groups, the API lists ${groups.length}`);
    const [first, second] = groups;
    secondGroup = second.name;
    await nav("groups");
    await page.click(`[data-testid="pause-${first.name}"]`);
    await page.waitForSelector(`[data-testid="resume-${first.name}"]`, { timeout: 3000 });
    await page.waitForFunction(
      (name) => document.querySelector(`[data-testid="group-${name}"]`)?.classList.contains("active-card"),
      second.name,
      { timeout: 3000 },
    );
    await shot("groups-paused");
    const id = await sendThroughProxy("after the pause");
    await nav("requests");
    const row = page.locator(`tr[data-request-id="${id}"]`);
    await row.waitFor({ timeout: 2000 });
    await page.waitForFunction(
      ([id, group, endpoints]) => {
        const text = document.querySelector(`tr[data-request-id="${id}"]`)?.textContent ?? "";
        return text.includes(group) || endpoints.some((e) => text.includes(e));
      },
      [id, second.name, await endpointsOf(second.name)],
      { timeout: 5000 },
    );
    const detail = await api(`/api/v1/usage/requests?limit=1000`);
    const stored = (detail.data ?? []).find((r) => r.request_id === id);
    assert(!stored || !stored.group_name || stored.group_name === second.name, `request went to ${stored?.group_name}, expected ${second.name}`);
    // Resume through the UI so the rest of the run sees the original routing.
    await nav("groups");
    await page.click(`[data-testid="resume-${first.name}"]`);
    await page.waitForSelector(`[data-testid="pause-${first.name}"]`, { timeout: 3000 });
  });

  await check("export downloads a CSV with that request", async () => {
    assert(requestId, "no request was sent");
    await nav("usage");
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 5000 }), page.click('[data-testid="export-csv"]')]);
    const file = await download.path();
    const csv = readFileSync(file, "utf8");
    assert(download.suggestedFilename().endsWith(".csv"), `download is named ${download.suggestedFilename()}`);
    assert(csv.includes(requestId), `the CSV does not contain ${requestId}:\n${csv.slice(0, 500)}`);
  });

  await check("routing insight: affinity, quota and relay honesty render from the API", async () => {
    await nav("routing");
    await page.waitForSelector('[data-testid="affinity-stats"]', { timeout: 5000 });
    await page.waitForSelector('[data-testid="quota-card"]', { timeout: 5000 });
    const affinity = await api("/api/v1/routing/affinity");
    assert(affinity.totals !== undefined, `affinity answer: ${JSON.stringify(affinity).slice(0, 300)}`);
    await nav("endpoints");
    await page.waitForSelector('[data-testid="honesty-card"]', { timeout: 5000 });
    assert(consoleErrors.length === 0, `console errors:\n${consoleErrors.join("\n")}`);
  });

  await check("screenshots of every page (light, dark, Chinese, narrow)", async () => {
    for (const name of ["overview", "endpoints", "groups", "routing", "requests", "usage", "config", "logs"]) {
      await nav(name);
      await page.waitForTimeout(600);
      await shot(name);
    }
    await page.click('[data-testid="theme-toggle"]');
    await nav("overview");
    await page.waitForTimeout(600);
    await shot("overview-dark");
    await nav("requests");
    await page.waitForTimeout(400);
    await shot("requests-dark");
    await page.click('[data-testid="lang-toggle"]');
    await nav("groups");
    await page.waitForTimeout(400);
    await shot("groups-dark-zh");
    await page.click('[data-testid="theme-toggle"]');
    await nav("usage");
    await page.waitForTimeout(600);
    await shot("usage-zh");
    await page.click('[data-testid="lang-toggle"]');
    await page.setViewportSize({ width: 390, height: 844 });
    await nav("overview");
    await page.waitForTimeout(600);
    await shot("overview-mobile");
    assert(consoleErrors.length === 0, `console errors:\n${consoleErrors.join("\n")}`);
  });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

async function endpointsOf(group) {
  const body = await api("/api/v1/endpoints");
  return (body.endpoints ?? []).filter((e) => e.group === group).map((e) => e.name);
}

const failed = results.filter((r) => !r.ok);
console.log(`dashboard tests: ${results.length - failed.length} passed, ${failed.length} failed; screenshots in ${shots}`);
process.exit(failed.length ? 1 : 0);
