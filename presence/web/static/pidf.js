// PIDF (RFC 3863) with the RPID person data of RFC 4479 and RFC 4480:
// the document this page publishes for a status, and the status a watcher
// reads from the document a NOTIFY carries.
//
// Four statuses: online (basic open, no activity), away and busy (basic
// open with the RPID activity of that name), offline (basic closed).  What
// other clients publish is mapped onto them by the activities RFC 4480
// defines, so a phone "on-the-phone" shows busy and one on "vacation" away.

export const STATUSES = ["online", "away", "busy", "offline"];

const PIDF = "urn:ietf:params:xml:ns:pidf";
const DM = "urn:ietf:params:xml:ns:pidf:data-model";
const RPID = "urn:ietf:params:xml:ns:pidf:rpid";

// RFC 4480 activities read as "not at the device" and as "do not disturb".
const AWAY = new Set([
  "away", "breakfast", "dinner", "holiday", "in-transit", "lunch", "meal",
  "permanent-absence", "shopping", "sleeping", "steering", "travel", "vacation",
]);
const BUSY = new Set([
  "appointment", "busy", "meeting", "on-the-phone", "performance", "presentation",
  "spectator", "worship",
]);

function escapeXml(text) {
  return String(text).replace(/[<>&"']/g, (c) => ({
    "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;",
  })[c]);
}

// The PIDF document publishing `status` (one of STATUSES) with an optional
// note, for the presentity `entity` (a sip: URI).  The tuple and person ids
// stay the same across a session's publications: the server composes by
// id, so each new document replaces the last one's parts.
export function buildPidf({ entity, status, note = "", tupleId, personId }) {
  if (!STATUSES.includes(status)) {
    throw new Error(`unknown status ${status}`);
  }
  const basic = status === "offline" ? "closed" : "open";
  const activity = status === "away" || status === "busy"
    ? `<rpid:activities><rpid:${status}/></rpid:activities>` : "";
  const noteXml = note ? `<dm:note>${escapeXml(note)}</dm:note>` : "";
  return '<?xml version="1.0" encoding="UTF-8"?>\n'
    + `<presence xmlns="${PIDF}" xmlns:dm="${DM}" xmlns:rpid="${RPID}" entity="${escapeXml(entity)}">`
    + `<tuple id="${escapeXml(tupleId)}"><status><basic>${basic}</basic></status></tuple>`
    + `<dm:person id="${escapeXml(personId)}">${activity}${noteXml}</dm:person>`
    + "</presence>";
}

function children(parent, namespace, localName) {
  return Array.from(parent.children).filter(
    (el) => el.namespaceURI === namespace && el.localName === localName,
  );
}

function text(el) {
  return el ? el.textContent.trim() : "";
}

// What a watcher shows for a PIDF document: {status, note, activities},
// or null for a body that is not a PIDF document.  An empty note is "".
export function parsePidf(xml) {
  if (!xml || !xml.trim()) {
    return null;
  }
  const doc = new DOMParser().parseFromString(xml, "application/xml");
  const root = doc.documentElement;
  if (!root || root.namespaceURI !== PIDF || root.localName !== "presence"
      || doc.getElementsByTagName("parsererror").length) {
    return null;
  }
  const tuples = children(root, PIDF, "tuple");
  const open = tuples.some((tuple) => children(tuple, PIDF, "status").some(
    (status) => children(status, PIDF, "basic").some((basic) => text(basic) === "open"),
  ));
  const persons = children(root, DM, "person");
  const activities = [];
  for (const person of persons) {
    for (const list of children(person, RPID, "activities")) {
      for (const activity of list.children) {
        if (activity.namespaceURI === RPID && activity.localName !== "unknown"
            && activity.localName !== "note") {
          activities.push(activity.localName);
        }
      }
    }
  }
  let status = "offline";
  if (open) {
    status = activities.some((a) => BUSY.has(a)) ? "busy"
      : activities.some((a) => AWAY.has(a)) ? "away" : "online";
  }
  // The person's note first (what the user typed), then a tuple's, then
  // the document's.
  const notes = [
    ...persons.flatMap((person) => children(person, DM, "note")),
    ...tuples.flatMap((tuple) => children(tuple, PIDF, "note")),
    ...children(root, PIDF, "note"),
  ];
  const note = notes.map(text).find((n) => n) || "";
  return { status, note, activities };
}
