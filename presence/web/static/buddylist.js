// The buddy list: log in over SIP WebSocket with SIP.js, REGISTER, PUBLISH
// one's status, SUBSCRIBE to each contact's presence and show what their
// NOTIFYs say.  Peer data (notes, addresses) only ever goes into the page
// as text, never as markup.

import {
  PublisherState,
  Publisher,
  Registerer,
  RegistererState,
  Subscriber,
  SubscriptionState,
  UserAgent,
  version as sipjsVersion,
} from "./sip.js/index.js";
import { STATUSES, buildPidf, parsePidf } from "./pidf.js";

// Seconds asked for registrations, publications and subscriptions (SIP.js
// refreshes each before it ends; the server's minimum is 60).
const EXPIRES = 600;
// Milliseconds before subscribing again to a contact whose subscription
// ended (timeout, deactivated, a lost connection): bounded retries.
const RESUBSCRIBE_DELAY = 30000;
// Reconnection delays after a lost connection, in milliseconds (the last
// one repeats), and how many attempts before giving up (some 20 minutes).
const RECONNECT_DELAYS = [1000, 2000, 5000, 10000, 30000];
const RECONNECT_ATTEMPTS = 45;

const LABELS = {
  online: "Online",
  away: "Away",
  busy: "Busy",
  offline: "Offline",
  pending: "Waiting…",
  refused: "Not allowed",
  unknown: "Unknown",
};

const $ = (id) => document.getElementById(id);

function show(element, visible) {
  element.hidden = !visible;
}

function randomId(prefix) {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function load(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value === null ? fallback : value;
  } catch (e) {
    return fallback;
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    // Storage may be off (private windows): the page works without it.
  }
}

function withinTwoSeconds(promise) {
  return Promise.race([promise, new Promise((resolve) => setTimeout(resolve, 2000))]);
}

// "bob", "bob@example.test" or "sip:bob@example.test" as a sip: URI
// string, the domain defaulting to `domain`; null when it is no SIP address.
export function normaliseAor(text, domain) {
  let aor = text.trim();
  if (!aor) {
    return null;
  }
  if (!/^sips?:/i.test(aor)) {
    aor = "sip:" + aor;
  }
  if (!aor.includes("@") && domain) {
    aor += "@" + domain;
  }
  const uri = UserAgent.makeURI(aor);
  if (!uri || !uri.user || !uri.host) {
    return null;
  }
  return `${uri.scheme}:${uri.user}@${uri.host.toLowerCase()}`;
}

// The SIP WebSocket URL to offer: the configured one, else one of the
// server's ws/wss listeners on the host this page came from (wss first
// for a page loaded over https, where browsers refuse ws://).
function defaultWebSocket(config) {
  if (config.websocket) {
    return config.websocket;
  }
  const secure = location.protocol === "https:";
  const order = secure ? ["wss"] : ["ws", "wss"];
  for (const transport of order) {
    const listener = (config.listeners || []).find((l) => l.transport === transport);
    if (listener) {
      return `${transport}://${location.hostname}:${listener.port}`;
    }
  }
  return "";
}

// SIP.js's Publisher sends a new PUBLISH at each publish() without waiting
// for the last one's answer, and two in flight carry the same SIP-If-Match
// (the second fails with 412).  This one reports each final answer, so the
// page sends one PUBLISH at a time and only the latest status waiting.
class SerialPublisher extends Publisher {
  receiveResponse(response) {
    super.receiveResponse(response);
    const code = response.statusCode || 0;
    // On 412 and 423 SIP.js has already sent the request again, unless
    // it gave up (and terminated).
    const retried = (code === 412 || code === 423) && this.state !== PublisherState.Terminated;
    if (code >= 200 && !retried && this.onFinal) {
      this.onFinal(response);
    }
  }
}

// SIP.js's Registerer sends every REGISTER (refresh, un-REGISTER) from one
// message object, which keeps the Authorization header of the last
// challenge answered: the same nonce, cnonce and nonce-count again, which
// the server rightly refuses as a replay (401, and a failure counted
// against our address).  This one sends each without it, to be challenged
// afresh.
class FreshRegisterer extends Registerer {
  forgetCredentials() {
    delete this.request.headers["Authorization"];
    delete this.request.headers["Proxy-Authorization"];
  }

  register(options) {
    this.forgetCredentials();
    return super.register(options);
  }

  unregister(options) {
    this.forgetCredentials();
    return super.unregister(options);
  }
}

class Contact {
  constructor(aor) {
    this.aor = aor;
    this.status = "pending";
    this.note = "";
    this.subscriber = null;
    this.retry = null;
  }
}

class Session {
  constructor(view, { aor, password, server }) {
    this.view = view;
    this.aor = aor;
    this.uri = UserAgent.makeURI(aor);
    this.password = password;
    this.server = server;
    this.contacts = new Map();
    this.wanted = load(`presence.status:${aor}`, { status: "online", note: "" });
    if (!STATUSES.includes(this.wanted.status)) {
      this.wanted = { status: "online", note: "" };
    }
    this.tupleId = randomId("t");
    this.personId = randomId("p");
    this.publisher = null;
    this.publishing = false;
    this.publishAgain = false;
    this.stopped = false;
    this.reconnects = 0;
    this.reconnectTimer = null;
    this.gaveUp = false;
  }

  // Connect and REGISTER; resolves once registered, rejects with a message
  // for the login form.
  async start() {
    this.ua = new UserAgent({
      uri: this.uri,
      authorizationUsername: this.uri.user,
      authorizationPassword: this.password,
      transportOptions: { server: this.server, connectionTimeout: 5, keepAliveInterval: 30 },
      logLevel: "warn",
      userAgentString: `presence buddy list (SIP.js ${sipjsVersion})`,
      delegate: {
        onConnect: () => this.onConnect(),
        onDisconnect: (error) => this.onDisconnect(error),
      },
    });
    this.registerer = new FreshRegisterer(this.ua, { expires: EXPIRES });
    this.registerer.stateChange.addListener(() => this.view.showConnection(this));
    try {
      await this.ua.start();
    } catch (e) {
      throw new Error(`Cannot connect to ${this.server}.`);
    }
    await new Promise((resolve, reject) => {
      this.registerer.register({
        requestDelegate: {
          onAccept: () => resolve(),
          onReject: (response) => {
            const code = response.message.statusCode;
            reject(new Error(code === 401 || code === 407 || code === 403
              ? "Wrong SIP address or password."
              : `Registration refused: ${code} ${response.message.reasonPhrase}.`));
          },
        },
      }).catch(() => reject(new Error("Registration could not be sent.")));
    });
    for (const aor of load(`presence.contacts:${this.aor}`, [])) {
      this.addContact(aor, false);
    }
    this.publish();
  }

  get registered() {
    return this.registerer && this.registerer.state === RegistererState.Registered;
  }

  // Publishing

  setStatus(status, note) {
    this.wanted = { status, note };
    save(`presence.status:${this.aor}`, this.wanted);
    this.publish();
  }

  publish() {
    if (this.stopped) {
      return;
    }
    if (this.publishing) {
      this.publishAgain = true;
      return;
    }
    if (!this.publisher || this.publisher.state === PublisherState.Terminated) {
      this.publisher = new SerialPublisher(this.ua, this.uri, "presence", {
        expires: EXPIRES,
        contentType: "application/pidf+xml",
      });
    }
    const sent = { ...this.wanted };
    this.publishing = true;
    this.publishAgain = false;
    this.view.showPublish(sent, "sending");
    this.publisher.onFinal = (response) => {
      this.publishing = false;
      const code = response.statusCode;
      if (code < 300) {
        this.view.showPublish(sent, "published");
      } else {
        this.view.showPublish(sent, "failed", `${code} ${response.reasonPhrase}`);
      }
      if (this.publishAgain && !this.stopped) {
        this.publish();
      }
    };
    this.publisher.publish(buildPidf({
      entity: `${this.uri.scheme}:${this.uri.user}@${this.uri.host}`,
      status: sent.status,
      note: sent.note,
      tupleId: this.tupleId,
      personId: this.personId,
    }));
  }

  // Contacts

  saveContacts() {
    save(`presence.contacts:${this.aor}`, Array.from(this.contacts.keys()));
  }

  addContact(aor, remember = true) {
    if (this.contacts.has(aor)) {
      return this.contacts.get(aor);
    }
    const contact = new Contact(aor);
    this.contacts.set(aor, contact);
    if (remember) {
      this.saveContacts();
    }
    this.view.renderContacts(this);
    this.subscribe(contact);
    return contact;
  }

  removeContact(aor) {
    const contact = this.contacts.get(aor);
    if (!contact) {
      return;
    }
    this.contacts.delete(aor);
    this.saveContacts();
    this.dropSubscription(contact);
    this.view.renderContacts(this);
  }

  subscribe(contact) {
    clearTimeout(contact.retry);
    contact.retry = null;
    if (this.stopped || !this.contacts.has(contact.aor)) {
      return;
    }
    const subscriber = new Subscriber(this.ua, UserAgent.makeURI(contact.aor), "presence", {
      expires: EXPIRES,
      extraHeaders: ["Accept: application/pidf+xml"],
    });
    contact.subscriber = subscriber;
    contact.status = "pending";
    subscriber.delegate = {
      onNotify: (notification) => this.onNotify(contact, subscriber, notification),
    };
    subscriber.stateChange.addListener((state) => {
      if (state !== SubscriptionState.Terminated || contact.subscriber !== subscriber) {
        return;
      }
      contact.subscriber = null;
      if (contact.status !== "refused") {
        contact.status = "unknown";
        contact.retry = setTimeout(() => this.subscribe(contact), RESUBSCRIBE_DELAY);
      }
      this.view.renderContact(contact);
    });
    subscriber.subscribe();
    this.view.renderContact(contact);
  }

  onNotify(contact, subscriber, notification) {
    notification.accept();
    if (contact.subscriber !== subscriber) {
      return;
    }
    const request = notification.request;
    const [state, ...params] = (request.getHeader("Subscription-State") || "")
      .split(";").map((part) => part.trim().toLowerCase());
    if (state === "pending") {
      contact.status = "pending";
    } else if (state === "terminated" && params.includes("reason=rejected")) {
      contact.status = "refused";
      contact.note = "";
    } else {
      const presence = parsePidf(request.body);
      if (presence) {
        contact.status = presence.status;
        contact.note = presence.note;
      }
    }
    this.view.renderContact(contact);
  }

  dropSubscription(contact) {
    clearTimeout(contact.retry);
    contact.retry = null;
    const subscriber = contact.subscriber;
    contact.subscriber = null;
    if (subscriber) {
      subscriber.unsubscribe().catch(() => {});
    }
  }

  // The connection

  onConnect() {
    this.reconnects = 0;
    this.view.showConnection(this);
    if (this.resumeAfterReconnect) {
      this.resumeAfterReconnect = false;
      this.registerer.register().catch(() => {});
      this.publisher = null;
      this.publishing = false;
      this.publish();
      for (const contact of this.contacts.values()) {
        this.dropSubscription(contact);
        this.subscribe(contact);
      }
    }
  }

  // A lost connection (an error; a clean close is our own stop()): what
  // contacts showed is unknown until we are back, and we try again after
  // a growing delay.  SIP.js reports a failed attempt here too.
  onDisconnect(error) {
    if (this.stopped || !error) {
      this.view.showConnection(this);
      return;
    }
    if (!this.resumeAfterReconnect) {
      this.resumeAfterReconnect = true;
      for (const contact of this.contacts.values()) {
        contact.status = "unknown";
        this.view.renderContact(contact);
      }
    }
    this.view.showConnection(this);
    this.scheduleReconnect();
  }

  // One attempt at a time (SIP.js reports a failed one both here and to
  // onDisconnect), at most RECONNECT_ATTEMPTS in all.
  scheduleReconnect() {
    if (this.stopped || this.reconnectTimer !== null) {
      return;
    }
    if (this.reconnects >= RECONNECT_ATTEMPTS) {
      this.gaveUp = true;
      this.view.showConnection(this);
      return;
    }
    const delay = RECONNECT_DELAYS[Math.min(this.reconnects, RECONNECT_DELAYS.length - 1)];
    this.reconnects += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.ua.reconnect().catch(() => this.scheduleReconnect());
    }, delay);
  }

  get connected() {
    return this.ua && this.ua.isConnected();
  }

  // Un-SUBSCRIBE, un-PUBLISH, un-REGISTER, disconnect: each best effort.
  async stop() {
    if (this.stopped) {
      return;
    }
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    for (const contact of this.contacts.values()) {
      this.dropSubscription(contact);
    }
    const leaving = [];
    if (this.publisher && this.publisher.state === PublisherState.Published) {
      leaving.push(this.publisher.unpublish().catch(() => {}));
    }
    if (this.registered) {
      leaving.push(this.registerer.unregister().catch(() => {}));
    }
    await withinTwoSeconds(Promise.all(leaving));
    // SIP.js's stop() can wait for ever on a subscription the server
    // ended first.
    await withinTwoSeconds(this.ua.stop().catch(() => {}));
  }
}

class View {
  constructor() {
    this.session = null;
    this.config = { websocket: "", listeners: [], domains: [] };
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.login();
    });
    $("logout").addEventListener("click", () => this.logout());
    for (const button of document.querySelectorAll("#status-choices button")) {
      button.addEventListener("click", () => {
        this.session.setStatus(button.dataset.choice, $("note").value.trim());
        this.showChoice(button.dataset.choice);
      });
    }
    $("note-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.session.setStatus(this.session.wanted.status, $("note").value.trim());
    });
    $("add-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.addContact();
    });
    window.addEventListener("pagehide", () => {
      if (this.session) {
        this.session.stop();
      }
    });
  }

  async loadConfig() {
    try {
      const response = await fetch("config.json", { cache: "no-cache" });
      if (response.ok) {
        this.config = await response.json();
      }
    } catch (e) {
      // A page served elsewhere: the user types the URL.
    }
    const last = load("presence.login", {});
    $("login-aor").value = last.aor || "";
    $("login-ws").value = defaultWebSocket(this.config) || last.ws || "";
    if (this.config.domains && this.config.domains.length) {
      $("login-aor").placeholder = `alice@${this.config.domains[0]}`;
      $("add-aor").placeholder = `name@${this.config.domains[0]}`;
    }
    $((last.aor ? "login-password" : "login-aor")).focus();
  }

  loginError(message) {
    $("login-error").textContent = message;
    show($("login-error"), Boolean(message));
  }

  async login() {
    const domain = (this.config.domains || [])[0] || "";
    const aor = normaliseAor($("login-aor").value, domain);
    const password = $("login-password").value;
    const server = $("login-ws").value.trim();
    if (!aor) {
      return this.loginError("Enter a SIP address such as alice@example.test.");
    }
    if (!/^wss?:\/\/./i.test(server)) {
      return this.loginError("Enter a ws:// or wss:// URL.");
    }
    this.loginError("");
    $("login-submit").disabled = true;
    $("login-submit").textContent = "Logging in…";
    const session = new Session(this, { aor, password, server });
    this.session = session;
    try {
      await session.start();
    } catch (e) {
      session.stop();
      this.session = null;
      this.loginError(e.message);
      return;
    } finally {
      $("login-submit").disabled = false;
      $("login-submit").textContent = "Log in";
    }
    save("presence.login", { aor, ws: server });
    $("login-password").value = "";
    $("me-aor").textContent = aor;
    $("note").value = session.wanted.note;
    this.showChoice(session.wanted.status);
    show($("login"), false);
    show($("app"), true);
    show($("me"), true);
    this.renderContacts(session);
    this.showConnection(session);
  }

  async logout() {
    const session = this.session;
    this.session = null;
    show($("app"), false);
    show($("me"), false);
    show($("login"), true);
    $("contacts").replaceChildren();
    if (session) {
      await session.stop();
    }
  }

  addContact() {
    const domain = this.session.uri.host;
    const aor = normaliseAor($("add-aor").value, domain);
    const error = $("add-error");
    if (!aor) {
      error.textContent = "Not a SIP address: try bob or bob@example.test.";
      show(error, true);
      return;
    }
    show(error, false);
    $("add-aor").value = "";
    this.session.addContact(aor);
  }

  showChoice(status) {
    for (const button of document.querySelectorAll("#status-choices button")) {
      const chosen = button.dataset.choice === status;
      button.classList.toggle("chosen", chosen);
      button.setAttribute("aria-checked", String(chosen));
    }
    $("me-dot").dataset.status = status;
  }

  showPublish(sent, state, detail = "") {
    const line = $("publish-state");
    line.dataset.state = state;
    line.dataset.status = sent.status;
    const what = LABELS[sent.status] + (sent.note ? ` — “${sent.note}”` : "");
    line.textContent = {
      sending: `Publishing ${what}…`,
      published: `Your contacts see you as ${what}.`,
      failed: `Publishing ${what} failed: ${detail}.`,
    }[state];
  }

  showConnection(session) {
    if (session !== this.session) {
      return;
    }
    const element = $("connection");
    // SIP.js keeps a registration "registered" while the connection is
    // down: the connection comes first.
    let state = "connecting";
    let text = "Connecting…";
    if (!session.connected) {
      if (session.gaveUp) {
        state = "disconnected";
        text = "Disconnected: log out and in again";
      } else if (session.resumeAfterReconnect) {
        state = "disconnected";
        text = "Connection lost, retrying…";
      }
    } else if (session.registered) {
      state = "registered";
      text = "Registered";
    } else {
      state = "connected";
      text = "Connected";
    }
    element.dataset.state = state;
    element.textContent = text;
  }

  renderContacts(session) {
    if (session !== this.session) {
      return;
    }
    const list = $("contacts");
    const aors = Array.from(session.contacts.keys()).sort();
    list.replaceChildren(...aors.map((aor) => this.contactRow(session.contacts.get(aor))));
    show($("no-contacts"), aors.length === 0);
  }

  contactRow(contact) {
    const row = document.createElement("li");
    row.className = "contact";
    row.dataset.aor = contact.aor;
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    const who = document.createElement("div");
    who.className = "who";
    const name = document.createElement("div");
    name.className = "name";
    const address = document.createElement("div");
    address.className = "aor";
    const note = document.createElement("div");
    note.className = "note";
    who.append(name, address, note);
    const pill = document.createElement("span");
    pill.className = "pill";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove ghost";
    remove.textContent = "×";
    remove.addEventListener("click", () => this.session.removeContact(contact.aor));
    row.append(avatar, who, pill, remove);
    this.fillRow(row, contact);
    return row;
  }

  fillRow(row, contact) {
    const user = contact.aor.replace(/^sips?:/, "").split("@")[0];
    row.dataset.status = contact.status;
    row.querySelector(".avatar").textContent = user.charAt(0).toUpperCase();
    row.querySelector(".name").textContent = user;
    row.querySelector(".aor").textContent = contact.aor;
    row.querySelector(".note").textContent = contact.note;
    row.querySelector(".pill").textContent = LABELS[contact.status];
    row.querySelector(".remove").setAttribute("aria-label", `Remove ${user}`);
  }

  renderContact(contact) {
    const row = Array.from($("contacts").children).find((li) => li.dataset.aor === contact.aor);
    if (row) {
      this.fillRow(row, contact);
    }
  }
}

new View().loadConfig();
