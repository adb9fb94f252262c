// What the browser scenarios share: Debian's Chromium under playwright-core,
// one browser context per user (so each has its own storage), logging in
// through the page's form, a contact's row, a trail of steps on stderr,
// and the one JSON line a scenario ends with on stdout.
//
// A scenario is run as  node SCENARIO.mjs JOB.json  by tests/test_webpage.py;
// JOB.json holds at least {url, websocket, acceptCertificate, chromium},
// acceptCertificate letting the browser take the server's self-signed
// certificate (https and wss).

import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

export const job = JSON.parse(readFileSync(process.argv[2], "utf-8"));

const began = Date.now();
// Errors the pages logged; a scenario fails on any it did not expect.
const problems = [];
const expected = [];

// A trail on stderr, which the test shows when it fails.
export function step(what) {
  process.stderr.write(`${((Date.now() - began) / 1000).toFixed(2)}s ${what}\n`);
}

// Console errors matching `pattern` are part of the scenario (a server
// going away), not problems.
export function expectConsoleErrors(pattern) {
  expected.push(pattern);
}

// The selector of a contact's row (keyed by sip: URI), in `status` if given.
export function row(aor, status) {
  const uri = aor.startsWith("sip:") ? aor : `sip:${aor}`;
  return `#contacts li[data-aor="${uri}"]${status ? `[data-status="${status}"]` : ""}`;
}

// Load the page in a fresh context and log in as `user` ({aor, password});
// resolves once registered.  With `wrongPasswordFirst`, a first attempt
// with a wrong password must end on the form with its error.
export async function logIn(browser, user, { wrongPasswordFirst = false } = {}) {
  const context = await browser.newContext({
    viewport: { width: 1040, height: 620 },
    deviceScaleFactor: 1,
    ignoreHTTPSErrors: Boolean(job.acceptCertificate),
  });
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`${user.aor}: page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !expected.some((pattern) => pattern.test(message.text()))) {
      problems.push(`${user.aor}: console error: ${message.text()}`);
    }
  });
  await page.goto(job.url);
  step(`${user.aor}: page loaded`);
  // The SIP WebSocket field defaults to the server the page came from.
  await page.waitForFunction(() => document.getElementById("login-ws").value !== "");
  const offered = await page.inputValue("#login-ws");
  if (offered !== job.websocket) {
    throw new Error(`the page offers ${offered}, not ${job.websocket}`);
  }
  await page.fill("#login-aor", user.aor);
  if (wrongPasswordFirst) {
    await page.fill("#login-password", `${user.password}-wrong`);
    await page.click("#login-submit");
    await page.waitForSelector("#login-error:not([hidden])", { timeout: 10000 });
    const error = await page.textContent("#login-error");
    if (error !== "Wrong SIP address or password.") {
      throw new Error(`a wrong password shows ${JSON.stringify(error)}`);
    }
    step(`${user.aor}: a wrong password refused`);
  }
  await page.fill("#login-password", user.password);
  await page.click("#login-submit");
  await page.waitForSelector('#connection[data-state="registered"]', { timeout: 10000 });
  step(`${user.aor}: registered`);
  return page;
}

export async function addContact(page, aor) {
  await page.fill("#add-aor", aor);
  await page.click("#add-form button[type=submit]");
  await page.waitForSelector(row(aor));
}

// Run `scenario(browser)` in a fresh Chromium; print its result as one
// JSON line and exit 0, or print {problems} and exit 1.
export async function run(scenario) {
  const browser = await chromium.launch({ executablePath: job.chromium });
  step("Chromium started");
  let result;
  try {
    result = await scenario(browser);
  } catch (e) {
    problems.unshift(e.message);
  } finally {
    await browser.close();
  }
  if (problems.length) {
    console.log(JSON.stringify({ problems }));
    process.exit(1);
  }
  console.log(JSON.stringify(result));
}
