// The server restarting under the page: two users logged in, the watcher
// sees the publisher online.  The scenario prints "restart" on stdout; the
// test restarts the server (same database, same ws port) and answers
// "restarted" on stdin.  Meanwhile both pages must show the connection as
// lost and the contact as unknown; then, on their own, reconnect, REGISTER,
// PUBLISH and SUBSCRIBE again, until the watcher sees the publisher online
// again, and away within the limit of a click.
//
// Run by tests/test_webpage.py (see session.mjs); JOB.json also holds
// {artifacts, prefix, limitMs, users: [{aor, password}, {aor, password}]}.

import { createInterface } from "node:readline";
import { join } from "node:path";
import { addContact, expectConsoleErrors, job, logIn, row, run, step } from "./session.mjs";

const [alice, bob] = job.users;
const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
// What Chromium and SIP.js log while the server is down.
expectConsoleErrors(/WebSocket connection to .* failed|WebSocket error occurred/);

await run(async (browser) => {
  const alicePage = await logIn(browser, alice);
  const bobPage = await logIn(browser, bob);
  await addContact(bobPage, alice.aor);
  await bobPage.waitForSelector(row(alice.aor, "online"), { timeout: 10000 });
  step(`${bob.aor} sees ${alice.aor} online; restarting the server`);
  console.log("restart");
  await bobPage.waitForSelector('#connection[data-state="disconnected"]', { timeout: 10000 });
  await alicePage.waitForSelector('#connection[data-state="disconnected"]', { timeout: 10000 });
  const whileDown = await bobPage.getAttribute(row(alice.aor), "data-status");
  const answer = await answers.next();
  if (answer.done || answer.value !== "restarted") {
    throw new Error(`the test answered ${JSON.stringify(answer.value)}, not "restarted"`);
  }
  const restarted = Date.now();
  step("server restarted");
  for (const page of [alicePage, bobPage]) {
    await page.waitForSelector('#connection[data-state="registered"]', { timeout: 30000 });
  }
  await bobPage.waitForSelector(row(alice.aor, "online"), { timeout: 30000 });
  const backMs = Date.now() - restarted;
  step(`both registered again, ${bob.aor} sees ${alice.aor} online after ${backMs} ms`);
  const clicked = Date.now();
  await alicePage.click('#status-choices [data-choice="away"]');
  await bobPage.waitForSelector(row(alice.aor, "away"), { timeout: job.limitMs });
  const awayMs = Date.now() - clicked;
  step(`${bob.aor} sees ${alice.aor} away after ${awayMs} ms`);
  const screenshot = join(job.artifacts, `${job.prefix}-reconnected.png`);
  await bobPage.screenshot({ path: screenshot });
  return { whileDown, backMs, awayMs, screenshots: [screenshot] };
});
process.stdin.destroy();
