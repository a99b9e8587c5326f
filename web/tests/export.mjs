// Browser test of the Usage page's export with an admin token: playwright-core driving Debian's
// Chromium (/usr/bin/chromium; no browser is ever downloaded) against a running forwarder.
//
//   node web/tests/export.mjs <admin-url> <admin-token> <expected-rows-json>
//
// The forwarder's admin API needs <admin-token> (web.auth_token) and its usage database holds
// rows spread over time; <expected-rows-json> maps each period of the Usage page to the exact
// number of rows it covers, e.g. {"1h":3,"1d":7}. For each period the script selects it, clicks
// "Export CSV" and checks that the downloaded file has exactly that many rows, and that it came
// through a single-use download ticket link (never the token in a URL, never a blob: URL).
// `tests/tests/it/dashboard.rs` seeds the rows and runs this script. Exit code 0 = all passed.
//
// Every wait is for the event itself with a bound (HANG) that only turns a hang into a failure.

import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [adminArg, token, expectedArg] = process.argv.slice(2);
const admin = adminArg?.replace(/\/$/, "");
if (!admin || !token || !expectedArg) {
  console.error("usage: node export.mjs <admin-url> <admin-token> <expected-rows-json>");
  process.exit(2);
}
const expected = JSON.parse(expectedArg);
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const HANG = 60_000;

const results = [];
async function check(name, fn) {
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`  ok   ${name}`);
  } catch (error) {
    results.push({ name, ok: false, error });
    console.log(`  FAIL ${name}: ${error?.stack ?? error}`);
  }
}
function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Data rows of a CSV export (the header and a trailing newline are not rows). */
function csvRows(text) {
  return text.split("\n").filter((line) => line.trim() !== "").length - 1;
}

const profile = mkdtempSync(join(tmpdir(), "ccf-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  acceptDownloads: true,
  viewport: { width: 1360, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
});
const page = context.pages()[0] ?? (await context.newPage());
const requests = [];
const problems = [];
let signedIn = false;
const downloadUrls = [];
page.on("request", (request) => requests.push({ method: request.method(), url: request.url() }));
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
page.on("response", (response) => {
  // Before the token is entered the dashboard's calls are refused: that is how it asks for it.
  if (signedIn && response.status() >= 400) problems.push(`HTTP ${response.status()} ${response.url()}`);
});

try {
  await check("the dashboard asks for the token and works with it", async () => {
    await page.goto(`${admin}/`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector('[data-testid="token-dialog"]', { timeout: HANG });
    await page.fill('[data-testid="token-dialog"] input', token);
    await page.click('[data-testid="token-dialog"] button[type="submit"]');
    await page.waitForSelector('[data-testid="token-dialog"]', { state: "detached", timeout: HANG });
    signedIn = true;
    await page.click('[data-testid="nav-usage"]');
    await page.waitForSelector('[data-testid="nav-usage"].active', { timeout: HANG });
  });

  for (const [period, rows] of Object.entries(expected)) {
    await check(`export with period ${period} downloads exactly its ${rows} rows through a ticket`, async () => {
      await page.click(`[data-testid="period-${period}"]`);
      await page.waitForSelector(`[data-testid="period-${period}"].on`, { timeout: HANG });
      const before = requests.length;
      const [download] = await Promise.all([
        page.waitForEvent("download", { timeout: HANG }),
        page.click('[data-testid="export-csv"]'),
      ]);
      const url = download.url();
      downloadUrls.push(url);
      assert(url.startsWith(`${admin}/api/v1/usage/export?`), `downloaded from ${url}, not the export link`);
      const query = new URL(url).searchParams;
      assert(/^[0-9a-f]{64}$/.test(query.get("ticket") ?? ""), `the link has no ticket: ${url}`);
      assert(!url.includes(token) && !query.has("access_token"), `the token is in the link: ${url}`);
      const span = Date.parse(query.get("end_date")) - Date.parse(query.get("start_date"));
      const seconds = { "1h": 3600, "1d": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400, "90d": 90 * 86_400 }[period];
      assert(span === seconds * 1000, `the link covers ${span} ms, not ${period}: ${url}`);
      const issued = requests.slice(before).filter((r) => r.method === "POST" && r.url.includes("/api/v1/usage/export/ticket?"));
      assert(issued.length === 1, `expected one ticket request, saw ${JSON.stringify(requests.slice(before))}`);
      const file = await download.path();
      const text = readFileSync(file, "utf8");
      assert(download.suggestedFilename().endsWith(".csv"), `download is named ${download.suggestedFilename()}`);
      assert(csvRows(text) === rows, `period ${period}: ${csvRows(text)} rows, expected ${rows}:\n${text.slice(0, 800)}`);
    });
  }

  await check("the used ticket link is refused a second time", async () => {
    const used = downloadUrls.at(-1);
    assert(used, "no export link was followed");
    const response = await fetch(used);
    const body = await response.json();
    assert(response.status === 401 && body?.error?.code === "invalid_ticket", `second use answered ${response.status} ${JSON.stringify(body)}`);
  });

  await check("no blob: download and no errors", async () => {
    assert(!requests.some((r) => r.url.startsWith("blob:")), "a blob: URL was requested");
    assert(downloadUrls.length === Object.keys(expected).length, `downloads: ${downloadUrls.join(", ")}`);
    assert(problems.length === 0, `problems:\n${problems.join("\n")}`);
  });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

const failed = results.filter((r) => !r.ok);
console.log(`export browser tests: ${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
