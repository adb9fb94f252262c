// The buddy list in a real browser: Debian's Chromium, driven by
// playwright-core, loads the page of a running server as two users in two
// separate browser contexts.  Both log in (REGISTER over SIP WebSocket; the
// first after a wrong password, which the form must refuse),
// each adds the other and an idle third user as contacts; the first
// publishes away (with a note) then online, and the second's page must show
// each within the limit.  Screenshots of both pages go to the artifacts
// directory.
//
// The page's PIDF module is also run on the documents in `pidf` (what
// other clients publish), and asked for the document of each status; the
// test checks both answers.
//
// Run by tests/test_webpage.py (see session.mjs); JOB.json also holds
// {artifacts, prefix, limitMs, users: [{aor, password}, {aor, password}],
// idle: AOR, pidf: {NAME: XML}}.

import { join } from "node:path";
import { addContact, job, logIn, row, run, step } from "./session.mjs";

const [alice, bob] = job.users;

// Click a status on `publisher` and time until `watcher` shows it.
async function publishAndWatch(publisher, watcher, status, note) {
  await publisher.fill("#note", note);
  const started = Date.now();
  await publisher.click(`#status-choices [data-choice="${status}"]`);
  try {
    await watcher.waitForSelector(row(alice.aor, status), { timeout: job.limitMs });
  } catch (e) {
    const shown = await watcher.getAttribute(row(alice.aor), "data-status");
    throw new Error(`${bob.aor}'s page still shows ${alice.aor} as ${shown} ${job.limitMs} ms after ${status}`);
  }
  const elapsed = Date.now() - started;
  step(`${bob.aor} sees ${alice.aor} ${status} after ${elapsed} ms`);
  const shownNote = await watcher.textContent(`${row(alice.aor)} .note`);
  if (shownNote !== note) {
    throw new Error(`${bob.aor}'s page shows the note ${JSON.stringify(shownNote)}, not ${JSON.stringify(note)}`);
  }
  return elapsed;
}

await run(async (browser) => {
  const alicePage = await logIn(browser, alice, { wrongPasswordFirst: true });
  const pidf = await alicePage.evaluate(async ({ cases, entity }) => {
    const { STATUSES, buildPidf, parsePidf } = await import("./pidf.js");
    const parsed = Object.fromEntries(Object.entries(cases).map(([name, xml]) => [name, parsePidf(xml)]));
    const built = Object.fromEntries(STATUSES.map((status) => [status, buildPidf({
      entity, status, note: 'Tea & "biscuits" <3', tupleId: "t1", personId: "p1",
    })]));
    const reread = Object.fromEntries(Object.entries(built).map(([status, xml]) => [status, parsePidf(xml)]));
    return { parsed, built, reread };
  }, { cases: job.pidf, entity: `sip:${alice.aor}` });
  step("PIDF module run");
  const bobPage = await logIn(browser, bob);
  for (const aor of [alice.aor, job.idle]) {
    await addContact(bobPage, aor);
  }
  await addContact(alicePage, bob.aor);
  // Logged in and publishing online: each sees the other so.
  await bobPage.waitForSelector(row(alice.aor, "online"), { timeout: 10000 });
  await alicePage.waitForSelector(row(bob.aor, "online"), { timeout: 10000 });
  // Registered once, never logged in here: offline.
  await bobPage.waitForSelector(row(job.idle, "offline"), { timeout: 10000 });
  step("both see each other online, the idle user offline");
  await bobPage.click('#status-choices [data-choice="busy"]');
  await alicePage.waitForSelector(row(bob.aor, "busy"), { timeout: 10000 });
  step(`${alice.aor} sees ${bob.aor} busy`);
  const awayMs = await publishAndWatch(alicePage, bobPage, "away", "Back in ten minutes");
  const awayShot = join(job.artifacts, `${job.prefix}-away.png`);
  await bobPage.screenshot({ path: awayShot });
  const onlineMs = await publishAndWatch(alicePage, bobPage, "online", "");
  const watcherShot = join(job.artifacts, `${job.prefix}-watcher.png`);
  const publisherShot = join(job.artifacts, `${job.prefix}-publisher.png`);
  await bobPage.screenshot({ path: watcherShot });
  await alicePage.screenshot({ path: publisherShot });
  // Offline by choice while still registered: the publication wins.
  await bobPage.click('#status-choices [data-choice="offline"]');
  await alicePage.waitForSelector(row(bob.aor, "offline"), { timeout: 10000 });
  step(`${alice.aor} sees ${bob.aor} offline`);
  // Log out: the watcher sees the publisher go offline.
  await alicePage.click("#logout");
  await bobPage.waitForSelector(row(alice.aor, "offline"), { timeout: 10000 });
  step(`${alice.aor} logged out, ${bob.aor} sees offline`);
  return { awayMs, onlineMs, pidf, screenshots: [awayShot, watcherShot, publisherShot] };
});
