// A presence scenario with SIP.js over WebSocket, run by tests/test_sipjs.py
// with the npm packages of the repository's package.json (npm ci):
//
//   node tests/node/sipjs-presence.mjs '{"server": "ws://127.0.0.1:PORT", ...}'
//
// Three user agents as a browser runs them (SIP.js's own WebSocket
// transport; Node 20 has no WebSocket, so the npm "ws" client stands in,
// trusting the test's certificate for wss:): alice, bob and carol register
// with digest authentication; alice subscribes to bob and carol and sees
// both online from their registrations alone; bob publishes "Online", then
// closed "Away", and alice sees each; unless told not to ("dropCheck":
// false), carol's WebSocket closes without an un-REGISTER and alice sees
// her offline.  Every step prints one JSON line; the first failure or the
// deadline ends the process with a non-zero status.

import fs from "node:fs";
import WS from "ws";
import { Publisher, Registerer, RegistererState, Subscriber, UserAgent } from "sip.js";

const config = JSON.parse(process.argv[2]);
const domain = config.domain || "example.test";
const deadline = setTimeout(() => fail("deadline of " + config.timeout + " s passed"), (config.timeout || 30) * 1000);
const ca = config.ca ? fs.readFileSync(config.ca) : undefined;

globalThis.WebSocket = class extends WS {
  constructor(url, protocols) {
    super(url, protocols, ca ? { ca } : {});
  }
};

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function fail(reason) {
  emit({ event: "failed", reason: String(reason) });
  process.exit(1);
}

function aor(user) {
  return UserAgent.makeURI("sip:" + user + "@" + domain);
}

function pidf(user, basic, note) {
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:' + user + "@" + domain + '">' +
    '<tuple id="sipjs"><status><basic>' + basic + "</basic></status></tuple>" +
    "<note>" + note + "</note></presence>"
  );
}

// Every NOTIFY alice gets, and whoever waits for one.
const notifies = [];
const waiters = [];

function notified(target, request) {
  const body = request.body || "";
  const basic = (body.match(/<basic>(\w+)<\/basic>/) || [])[1] || null;
  const note = (body.match(/<note[^>]*>([^<]*)<\/note>/) || [])[1] || null;
  const entry = { event: "notify", target, basic, note, state: request.getHeader("Subscription-State") };
  notifies.push(entry);
  emit(entry);
  for (const waiter of waiters.slice()) {
    if (waiter.matches(entry)) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(entry);
    }
  }
}

function waitNotify(target, what, test) {
  const matches = (entry) => entry.target === target && test(entry);
  const seen = notifies.find(matches);
  if (seen) {
    return Promise.resolve(seen);
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no NOTIFY of " + target + " " + what)), 10000);
    waiters.push({ matches, resolve: (entry) => { clearTimeout(timer); resolve(entry); } });
  });
}

const registerers = {};

async function unregister(user) {
  const registerer = registerers[user];
  const done = new Promise((resolve, reject) => {
    registerer.stateChange.addListener((state) => {
      if (state === RegistererState.Unregistered) {
        resolve();
      }
    });
    setTimeout(() => reject(new Error(user + " did not unregister")), 10000);
  });
  await registerer.unregister();
  await done;
  emit({ event: "unregistered", user });
}

async function start(user) {
  // SIP.js reconnects by itself only when asked (no reconnection options).
  const ua = new UserAgent({
    uri: aor(user),
    transportOptions: { server: config.server, traceSip: !!process.env.TRACE_SIP },
    authorizationUsername: user,
    authorizationPassword: config.password,
    logBuiltinEnabled: !!process.env.TRACE_SIP,
  });
  await ua.start();
  const registerer = new Registerer(ua, { expires: 600 });
  registerers[user] = registerer;
  const registered = new Promise((resolve, reject) => {
    registerer.stateChange.addListener((state) => {
      if (state === RegistererState.Registered) {
        resolve();
      }
    });
    setTimeout(() => reject(new Error(user + " did not register")), 10000);
  });
  await registerer.register({
    requestDelegate: { onReject: (response) => fail(user + " REGISTER refused: " + response.message.statusCode) },
  });
  await registered;
  emit({ event: "registered", user });
  return ua;
}

async function main() {
  const alice = await start("alice");
  const bob = await start("bob");
  const carol = await start("carol");
  const subscribers = [];

  for (const target of ["bob", "carol"]) {
    const subscriber = new Subscriber(alice, aor(target), "presence", {
      expires: 600,
      extraHeaders: ["Accept: application/pidf+xml"],
    });
    subscriber.delegate = {
      onNotify: (notification) => {
        notification.accept();
        notified(target, notification.request);
      },
    };
    await subscriber.subscribe();
    subscribers.push([target, subscriber]);
  }
  await waitNotify("bob", "open from his registration", (n) => n.basic === "open");
  await waitNotify("carol", "open from her registration", (n) => n.basic === "open");

  const publisher = new Publisher(bob, aor("bob"), "presence", { expires: 600, contentType: "application/pidf+xml" });
  await publisher.publish(pidf("bob", "open", "Online"));
  await waitNotify("bob", "Online", (n) => n.basic === "open" && n.note === "Online");
  emit({ event: "published", user: "bob", note: "Online" });
  await publisher.publish(pidf("bob", "closed", "Away"));
  await waitNotify("bob", "closed Away", (n) => n.basic === "closed" && n.note === "Away");
  emit({ event: "published", user: "bob", note: "Away" });

  if (config.dropCheck !== false) {
    // The tab closes: the WebSocket goes, no un-REGISTER is sent.
    await carol.transport.disconnect();
    await waitNotify("carol", "closed after her connection closed", (n) => n.basic === "closed");
    emit({ event: "dropped", user: "carol" });
  } else {
    await unregister("carol");
  }

  // Everything ended by hand: UserAgent.stop() of SIP.js 0.21 waits for
  // ever on a subscription whose terminating NOTIFY came before the
  // answer to its un-SUBSCRIBE (its dialog calls onTerminated only on
  // Timer N, which that NOTIFY cleared).  An un-SUBSCRIBEd Subscriber
  // shows no more NOTIFYs; the REGISTERs after it go over the same
  // connection, so their answers come after its own.
  for (const [, subscriber] of subscribers) {
    await subscriber.unsubscribe();
  }
  await publisher.unpublish();
  for (const user of ["alice", "bob"]) {
    await unregister(user);
  }
  clearTimeout(deadline);
  emit({ event: "done" });
  process.exit(0);
}

main().catch(fail);
