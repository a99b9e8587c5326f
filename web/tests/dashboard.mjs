// Browser tests of the web dashboard: playwright-core driving Debian's Chromium
// (/usr/bin/chromium; no browser is ever downloaded) against a running forwarder.
//
//   node web/tests/dashboard.mjs <admin-url> <proxy-url>
//
// The forwarder must have at least two groups (one endpoint each is enough) in front of a mock
// upstream, usage tracking on, the admin API open on loopback, and a Redis link
// (`cluster.redis_url` at 127.0.0.1:6379) for the Cluster card. `tests/tests/it/dashboard.rs`
// starts exactly that and runs this script. Screenshots go to $CCF_SCREENSHOT_DIR (default
// target/dashboard-screenshots). Exit code 0 = every check passed.
//
// Every check waits for the event it is about (a row, a class, a text) with a bound (HANG) that
// only turns a hang into a failure; nothing is timed and nothing sleeps. The language and theme
// checks read what is shown (the Chinese text comes from web/src/i18n.ts, the theme from the
// `data-theme` attribute and the computed background colour).

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

// Every wait is for the event itself; this bound only turns a hang into a failure, it is never a
// claim about speed (speed belongs in the benchmarks).
const HANG = 60_000;

/** The dashboard's own strings for `key` in English and Chinese, read from web/src/i18n.ts. */
function labels(key) {
  const source = readFileSync(join(here, "../src/i18n.ts"), "utf8");
  const chineseStart = source.indexOf("const zh");
  assert(chineseStart > 0, "web/src/i18n.ts has no `const zh` dictionary");
  const pattern = new RegExp(`"${key.replace(/\./g, "\\.")}":\\s*"([^"]+)"`);
  const en = source.slice(0, chineseStart).match(pattern)?.[1];
  const zh = source.slice(chineseStart).match(pattern)?.[1];
  assert(en && zh && en !== zh, `web/src/i18n.ts: no distinct English and Chinese text for ${key} (${en}, ${zh})`);
  return { en, zh };
}

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
/** Opens a page from the sidebar and waits until it is shown with its data loaded. */
const nav = async (name) => {
  await page.click(`[data-testid="nav-${name}"]`);
  await page.waitForSelector(`[data-testid="nav-${name}"].active`, { timeout: HANG });
  await page.waitForFunction(
    () => !/Loading…|加载中…/.test(document.querySelector("main.content")?.textContent ?? ""),
    null,
    { timeout: HANG },
  );
  // One painted frame, so a screenshot shows what React just rendered.
  await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => done())));
};

/** The theme the page shows: the `data-theme` attribute and the page's computed background. */
const shownTheme = () =>
  page.evaluate(() => ({
    attribute: document.documentElement.dataset.theme ?? "",
    background: getComputedStyle(document.documentElement).backgroundColor,
  }));

/** Clicks the theme toggle and waits until the attribute is `expected` and the colours changed. */
async function switchTheme(expected) {
  const before = await shownTheme();
  assert(before.attribute !== expected, `the theme is already ${expected}`);
  await page.click('[data-testid="theme-toggle"]');
  await page.waitForFunction(
    ([expected, background]) =>
      document.documentElement.dataset.theme === expected &&
      getComputedStyle(document.documentElement).backgroundColor !== background,
    [expected, before.background],
    { timeout: HANG },
  );
}

const groupsLabel = labels("nav.groups");

/** Clicks the language toggle and waits until the sidebar's Groups item reads `lang`'s text. */
async function switchLanguage(lang) {
  await page.click('[data-testid="lang-toggle"]');
  await page.waitForFunction(
    ([text, htmlLang]) =>
      document.querySelector('[data-testid="nav-groups"] .label')?.textContent === text &&
      document.documentElement.lang === htmlLang,
    [groupsLabel[lang], lang === "zh" ? "zh-CN" : "en"],
    { timeout: HANG },
  );
}

let requestId = null;
let secondGroup = null;
try {
  console.log(`dashboard tests: admin ${admin}, proxy ${proxy}, chromium ${executablePath}`);

  await check("the dashboard loads without console errors", async () => {
    await page.goto(`${admin}/`, { waitUntil: "networkidle" });
    await page.waitForSelector('[data-testid="stream-state"].open', { timeout: HANG });
    await page.waitForSelector('[data-testid="stat-active-group"]', { timeout: HANG });
    const pages = ["endpoints", "groups", "routing", "requests", "usage", "keys", "config", "logs", "overview"];
    for (const name of pages) {
      await nav(name);
    }
    assert(consoleErrors.length === 0, `console errors:\n${consoleErrors.join("\n")}`);
  });

  await check("the overview shows the Redis link connected", async () => {
    await nav("overview");
    const card = page.locator('[data-testid="cluster-card"]');
    await card.waitFor({ timeout: HANG });
    await card.getByText("Connected", { exact: true }).waitFor({ timeout: HANG });
    const text = await card.innerText();
    assert(text.includes("redis://127.0.0.1:6379"), `the card names the Redis address:\n${text}`);
  });

  await check("a request sent through the proxy appears live in the Requests page", async () => {
    await nav("requests");
    await page.waitForSelector('[data-testid="stream-state"].open', { timeout: HANG });
    const sent = Date.now();
    requestId = await sendThroughProxy("hello from the dashboard test");
    // Shown without reloading the page: the live stream brought it.
    await page.waitForSelector(`tr[data-request-id="${requestId}"]`, { timeout: HANG });
    console.log(`       row shown ${Date.now() - sent} ms after the request was sent (information only)`);
    // The detail view with its lifecycle and its one attempt.
    await page.locator(`tr[data-request-id="${requestId}"]`).first().click({ timeout: HANG });
    await page.waitForSelector('[data-testid="request-detail"] [data-testid="lifecycle"] li', { timeout: HANG });
    await page.waitForSelector('[data-testid="request-detail"] [data-testid="attempts"] tbody tr', { timeout: HANG });
    await shot("requests-detail");
    await page.click('[data-testid="request-detail"] button');
    await page.waitForSelector('[data-testid="request-detail"]', { state: "detached", timeout: HANG });
  });

  await check("pausing a group in the UI moves traffic to the next group", async () => {
    const groups = await groupsByPriority();
    assert(groups.length >= 2, `need two groups, the API lists ${groups.length}`);
    const [first, second] = groups;
    secondGroup = second.name;
    await nav("groups");
    await page.click(`[data-testid="pause-${first.name}"]`);
    await page.waitForSelector(`[data-testid="resume-${first.name}"]`, { timeout: HANG });
    await page.waitForFunction(
      (name) => document.querySelector(`[data-testid="group-${name}"]`)?.classList.contains("active-card"),
      second.name,
      { timeout: HANG },
    );
    await shot("groups-paused");
    const secondEndpoints = await endpointsOf(second.name);
    assert(secondEndpoints.length > 0, `the API lists no endpoint in ${second.name}`);
    const id = await sendThroughProxy("after the pause");
    await nav("requests");
    await page.locator(`tr[data-request-id="${id}"]`).first().waitFor({ timeout: HANG });
    await page.waitForFunction(
      ([id, group, endpoints]) => {
        const text = document.querySelector(`tr[data-request-id="${id}"]`)?.textContent ?? "";
        return text.includes(group) || endpoints.some((e) => text.includes(e));
      },
      [id, second.name, secondEndpoints],
      { timeout: HANG },
    );
    // The stored row says where the request went; a missing row or group is a failure.
    const stored = await storedRow(id);
    assert(stored.group_name === second.name, `request went to group ${stored.group_name}, expected ${second.name}`);
    assert(
      secondEndpoints.includes(stored.endpoint_name),
      `request went to endpoint ${stored.endpoint_name}, expected one of ${secondEndpoints.join(", ")}`,
    );
    // Resume through the UI so the rest of the run sees the original routing.
    await nav("groups");
    await page.click(`[data-testid="resume-${first.name}"]`);
    await page.waitForSelector(`[data-testid="pause-${first.name}"]`, { timeout: HANG });
  });

  await check("export downloads a CSV with that request", async () => {
    assert(requestId, "no request was sent");
    await nav("usage");
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: HANG }), page.click('[data-testid="export-csv"]')]);
    const file = await download.path();
    const csv = readFileSync(file, "utf8");
    assert(download.suggestedFilename().endsWith(".csv"), `download is named ${download.suggestedFilename()}`);
    assert(csv.includes(requestId), `the CSV does not contain ${requestId}:\n${csv.slice(0, 500)}`);
  });

  await check("routing insight: affinity, quota and relay honesty render from the API", async () => {
    await nav("routing");
    await page.waitForSelector('[data-testid="affinity-stats"]', { timeout: HANG });
    await page.waitForSelector('[data-testid="quota-card"]', { timeout: HANG });
    // Routing by model and model maps (docs/models.md): the configured rule and map are listed.
    await page.waitForSelector('[data-testid="model-rules"] tr[data-rule="0"]', { timeout: HANG });
    await page.waitForSelector('[data-testid="model-maps"] tr[data-endpoint="backup-1"]', { timeout: HANG });
    const affinity = await api("/api/v1/routing/affinity");
    assert(affinity.totals !== undefined, `affinity answer: ${JSON.stringify(affinity).slice(0, 300)}`);
    await nav("endpoints");
    await page.waitForSelector('[data-testid="honesty-card"]', { timeout: HANG });
    await page.waitForSelector('[data-testid="subscription-card"]', { timeout: HANG });
    assert(consoleErrors.length === 0, `console errors:\n${consoleErrors.join("\n")}`);
  });

  await check("the language toggle shows Chinese text and back", async () => {
    await nav("groups");
    await page.waitForFunction(
      (text) => document.querySelector('[data-testid="nav-groups"] .label')?.textContent === text,
      groupsLabel.en,
      { timeout: HANG },
    );
    await switchLanguage("zh");
    // The page heading follows too.
    await page.waitForFunction((text) => document.querySelector("header.topbar h1")?.textContent === text, groupsLabel.zh, {
      timeout: HANG,
    });
    await switchLanguage("en");
    await page.waitForFunction((text) => document.querySelector("header.topbar h1")?.textContent === text, groupsLabel.en, {
      timeout: HANG,
    });
  });

  await check("the theme toggle switches to dark and back", async () => {
    const start = await shownTheme();
    const other = start.attribute === "dark" ? "light" : "dark";
    await switchTheme(other);
    await switchTheme(start.attribute || "light");
    const end = await shownTheme();
    assert(end.background === start.background, `background ${end.background} after toggling twice, was ${start.background}`);
  });

  await check("screenshots of every page (light, dark, Chinese, narrow)", async () => {
    assert((await shownTheme()).attribute === "light", "the run starts in the light theme");
    for (const name of ["overview", "endpoints", "groups", "routing", "requests", "usage", "config", "logs"]) {
      await nav(name);
      await shot(name);
    }
    await switchTheme("dark");
    await nav("overview");
    await shot("overview-dark");
    await nav("requests");
    await shot("requests-dark");
    await switchLanguage("zh");
    await nav("groups");
    await shot("groups-dark-zh");
    await switchTheme("light");
    await nav("usage");
    await shot("usage-zh");
    await switchLanguage("en");
    await page.setViewportSize({ width: 390, height: 844 });
    await nav("overview");
    await shot("overview-mobile");
    assert(consoleErrors.length === 0, `console errors:\n${consoleErrors.join("\n")}`);
  });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

/** The stored usage row of request `id`, waiting until it is written with its group. */
async function storedRow(id) {
  const deadline = Date.now() + HANG;
  for (;;) {
    const body = await api(`/api/v1/usage/requests?request_id=${encodeURIComponent(id)}`);
    const row = (body.data ?? []).find((r) => r.request_id === id);
    if (row?.group_name && row?.endpoint_name) return row;
    assert(Date.now() < deadline, `request ${id} has no stored row with a group: ${JSON.stringify(row)}`);
    await new Promise((done) => setTimeout(done, 100));
  }
}

async function endpointsOf(group) {
  const body = await api("/api/v1/endpoints");
  return (body.endpoints ?? []).filter((e) => e.group === group).map((e) => e.name);
}

const failed = results.filter((r) => !r.ok);
console.log(`dashboard tests: ${results.length - failed.length} passed, ${failed.length} failed; screenshots in ${shots}`);
process.exit(failed.length ? 1 : 0);
