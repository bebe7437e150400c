// The meeting page: pre-join (name, camera and microphone preview, device choice), then the
// session: a video grid of who is on screen, stage controls, people, chat, Q&A and, for
// speakers, requests and breakout rooms. Built on /static/mediaserver.js.
import { Room, MediaserverError } from "/static/mediaserver.js";
import { FrameCrypto, keyFromPassphrase, keyFromSessionKey, newSessionKey } from "/static/e2ee.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const [, kind, key] = location.pathname.split("/");
const inviteLink = kind === "invite" ? decodeURIComponent(key) : null;
let roomId = kind === "join" ? decodeURIComponent(key) : null;
let token = params.get("token");
const mediaOff = params.get("media") === "off";
let room = null;
let preview = null; // the camera/microphone stream shown before joining (and published after)
let over = false; // left, ended or removed: nothing on the page reaches the session any more
let encryption = "server"; // the room's: "server", or end to end with "session_key" / "passphrase"
// A session key travels only in the link's fragment (#key=...), which browsers never send.
let sessionKey = new URLSearchParams(location.hash.slice(1)).get("key");

const MESSAGES = {
  room_full: "This session is full: no more participants can join.",
  token_expired: "This invitation has expired. Ask the host for a new link.",
  token_not_yet_valid: "This invitation is not valid yet.",
  token_invalid_signature: "This invitation link is not valid.",
  token_malformed: "This invitation link is not valid.",
  token_unknown_key: "This invitation link is no longer valid.",
  token_wrong_room: "This invitation is for another room.",
  session_ended: "This session has ended.",
  session_not_live: "The meeting has not started yet. Guests can join once it is live: try again then.",
  invite_expired: "This invite link has expired. Ask the host for a new one.",
  invite_revoked: "This invite link has been withdrawn by the host.",
  invite_invalid: "This invite link is not valid.",
  not_group_leader: "This group's session has not started yet: a group leader has to start it.",
  not_group_member: "This room is for the members of its group.",
  invalid_credentials: "Wrong e-mail or password.",
  stage_full: "Six participants are on screen already. Try again when someone leaves the stage.",
  speakers_full: "Four speakers are on screen already.",
  rate_limited: "You are sending messages too fast: wait a moment.",
  relayed_session_full: "This room connects participants directly, which works for a few people only, and it is full. " +
    "Ask its owner to switch it to routed media for larger meetings.",
};
const explain = (err) => MESSAGES[err.code] || err.message || String(err);
const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });

function status(text, level = "") {
  $("status").textContent = text;
  $("status").className = level;
}

function showRoomInfo(info) {
  $("room-name").textContent = info.name || info.room_name || "Meeting";
  document.title = `${$("room-name").textContent} – mediaserver`;
  $("room-schedule").textContent = info.starts_at
    ? `${when(info.starts_at)}${info.ends_at ? ` – ${new Date(info.ends_at).toLocaleTimeString([], { timeStyle: "short" })}` : ""}`
    : "";
  $("room-comment").textContent = info.comment || "";
}

// Pre-join ----------------------------------------------------------------------------------

async function startPreview() {
  if (mediaOff || !navigator.mediaDevices) return;
  const constraints = {
    audio: $("microphone").value ? { deviceId: { exact: $("microphone").value } } : true,
    video: $("camera").value ? { deviceId: { exact: $("camera").value }, width: 640, height: 480 } : { width: 640, height: 480 },
  };
  if (preview) preview.getTracks().forEach((t) => t.stop());
  try {
    preview = await navigator.mediaDevices.getUserMedia(constraints);
    $("preview").srcObject = preview;
  } catch (err) {
    status(`Camera or microphone unavailable: ${err.message}. You can still join and watch.`, "warn");
    preview = null;
  }
}

async function listDevices() {
  if (!navigator.mediaDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kindName] of [[$("camera"), "videoinput"], [$("microphone"), "audioinput"]]) {
    const current = select.value;
    select.replaceChildren(...devices.filter((d) => d.kind === kindName).map((d, i) => {
      const o = document.createElement("option");
      o.value = d.deviceId; o.textContent = d.label || `${kindName === "videoinput" ? "Camera" : "Microphone"} ${i + 1}`;
      return o;
    }));
    if (current) select.value = current;
  }
}

// End to end encrypted rooms: ask for the passphrase, or find (or, for a speaker opening the
// room first, make) the session key. False when this page cannot join.
function prepareEncryption(role) {
  if (encryption === "passphrase") {
    $("passphrase-row").hidden = false;
    $("passphrase").required = true;
    note("End-to-end encrypted with a passphrase: everyone types the same one. If it is lost, the session's content cannot be read by anyone.");
  } else if (encryption === "session_key") {
    if (!sessionKey && role === "moderator") {
      sessionKey = newSessionKey();
      history.replaceState(null, "", `${location.pathname}${location.search}#key=${sessionKey}`);
      note("End-to-end encrypted. A key was made in this browser: share this page's full link, with its #key= part, " +
        "with everyone who joins (the key never reaches the server). Without it nobody can see or hear the session.");
    } else if (!sessionKey) {
      status("This meeting is end-to-end encrypted: open the full link you were sent (it ends with #key=…).", "error");
      return false;
    } else {
      note("End-to-end encrypted: the key is in your link and never reaches the server.");
    }
  }
  return true;
}

function note(text) { $("e2ee-note").hidden = false; $("e2ee-note").textContent = text; }

async function frameCrypto() {
  if (encryption === "passphrase") return new FrameCrypto(await keyFromPassphrase($("passphrase").value, roomId));
  if (encryption === "session_key") return new FrameCrypto(await keyFromSessionKey(sessionKey));
  return null;
}

async function prejoin(name, nameFixed, willPublish, role) {
  if (!prepareEncryption(role)) return;
  $("join").disabled = true; // until the preview is ready
  $("prejoin").hidden = false;
  $("name").value = name || "";
  $("name").readOnly = nameFixed;
  if (willPublish) {
    await startPreview();
    await listDevices();
  } else {
    for (const id of ["camera", "microphone"]) $(id).closest("label").hidden = true;
    $("preview").closest(".preview").hidden = true;
  }
  $("camera").onchange = $("microphone").onchange = startPreview;
  status(willPublish ? "Check your camera and microphone, then join." : "You join as a viewer; inside, you can ask to enable mic & camera.");
  $("join").disabled = false;
  if (params.get("autojoin") === "1") join();
}

async function init() {
  try {
    if (inviteLink) {
      const r = await fetch(`/v1/invites/${encodeURIComponent(inviteLink)}`);
      const body = await r.json();
      if (!r.ok) throw new MediaserverError(body.error.code, body.error.message);
      showRoomInfo(body);
      encryption = body.encryption || "server";
      if (!body.live) status(MESSAGES.session_not_live, "warn");
      return prejoin("", false, true, body.role);
    }
    if (!token) return signIn();
    // The link is checked before the camera goes on: a bad or expired one is refused right here.
    const info = await postJson("/v1/join-info", { token, room_id: roomId });
    showRoomInfo(info.room);
    encryption = info.room.encryption || "server";
    await prejoin(info.name || info.identity, true, info.role !== "subscriber", info.role);
  } catch (err) {
    status(explain(err), "error");
  }
}

// Signed-in users: e-mail and password, then a token for this room (group members and team users).
function signIn() {
  status("This link has no token: sign in, or ask the host for an invitation link.", "warn");
  $("sign-in").hidden = false;
  $("sign-in").onsubmit = async (e) => {
    e.preventDefault();
    try {
      const login = await postJson("/v1/auth/login", { email: $("email").value.trim(), password: $("password").value });
      const grant = await postJson(`/v1/rooms/${encodeURIComponent(roomId)}/join-token`, {}, { Authorization: `Bearer ${login.token}` });
      token = grant.token;
      $("sign-in").hidden = true;
      const info = await postJson("/v1/join-info", { token, room_id: roomId });
      encryption = info.room.encryption || "server";
      await prejoin(login.user.name, true, grant.role !== "subscriber", grant.role);
    } catch (err) {
      status(explain(err), "error");
    }
  };
}

async function postJson(path, body, headers = {}) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new MediaserverError(data.error.code, data.error.message);
  return data;
}

async function join() {
  $("join").disabled = true;
  try {
    if (inviteLink) {
      const r = await fetch(`/v1/invites/${encodeURIComponent(inviteLink)}/join`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: $("name").value.trim() }),
      });
      const body = await r.json();
      if (!r.ok) throw new MediaserverError(body.error.code, body.error.message);
      token = body.token; roomId = body.room_id;
    }
    // ?ice=relay: all media through the TURN server (to check one works from here).
    room = window.room = new Room({ token, roomId, iceTransportPolicy: params.get("ice") === "relay" ? "relay" : "all",
      e2ee: await frameCrypto() });
    wire(room);
    const joined = await room.connect();
    showRoomInfo(joined.room);
    $("prejoin").hidden = true;
    $("meeting").hidden = false;
    status(`Joined as ${joined.participant.name}.${room.relayed ? " Audio and video go directly between participants (peer to peer)." : ""}`);
    if (joined.participant.role !== "subscriber" && !mediaOff) await goOnStage();
    render();
    setInterval(poll, 2000);
    setInterval(render, 15000); // the start button's time window
  } catch (err) {
    if (room) room.close();
    room = null;
    status(explain(err), "error"); // e.g. "this session starts at …; you can join once a speaker has started it"
    $("join").disabled = false;
  }
}

// On stage -----------------------------------------------------------------------------------

async function goOnStage() {
  try {
    if (!preview) await startPreview();
    if (!preview) return;
    tile(room.me.id, `${room.me.name} (you)`).srcObject = preview;
    await room.publish(preview, { videoCodec: params.get("codec") || undefined });
  } catch (err) {
    status(explain(err), "warn");
    $(`tile-${room.me.id}`)?.remove();
  }
  render();
}

function myTrack(kindName) {
  return preview ? preview.getTracks().find((t) => t.kind === kindName) : null;
}

async function toggle(kindName, button, on, off) {
  const track = myTrack(kindName);
  if (!track) return;
  track.enabled = !track.enabled;
  button.textContent = track.enabled ? on : off;
  button.setAttribute("aria-pressed", String(!track.enabled));
  const id = room.trackIdOf(track);
  if (id) await room.setMuted(id, !track.enabled).catch(() => {});
}

// Rendering -------------------------------------------------------------------------------

function tile(id, label) {
  let el = $(`tile-${id}`);
  if (!el) {
    el = document.createElement("div");
    el.className = "tile"; el.id = `tile-${id}`;
    el.innerHTML = `<video autoplay playsinline muted></video><span class="label"></span><span class="quality" hidden></span>`;
    el.querySelector("video").setAttribute("aria-label", `Video of ${label}`);
    $("grid").append(el);
  }
  el.querySelector(".label").textContent = label;
  return el.querySelector("video");
}

function button(text, onclick, label) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  b.onclick = async () => {
    b.disabled = true;
    try { await onclick(); } catch (err) { status(explain(err), "warn"); } finally { b.disabled = false; }
  };
  return b;
}

const isSpeaker = () => room && room.me && room.me.role === "moderator";
const publishing = () => room && room.isPublishing && preview;

function render() {
  if (!room || !room.me || over) return;
  const me = room.participants.get(room.me.id) || room.me;
  $("mic").hidden = $("cam").hidden = $("leave-stage").hidden = $("screen").hidden = !publishing();
  $("screen").textContent = room.sharingScreen ? "Stop sharing" : "Share screen";
  $("screen").setAttribute("aria-pressed", String(room.sharingScreen));
  $("request-stage").hidden = me.role !== "subscriber" || !!me.stage_requested_at;
  $("go-on-stage").hidden = me.role === "subscriber" || !!publishing() || mediaOff;
  $("end").hidden = $("tab-rooms").hidden = $("all-rooms-label").hidden = !isSpeaker();
  // An event's session: its speakers start it, from five minutes before its slot.
  $("start-session").hidden = !isSpeaker() || !room.event || room.event.started;
  // Everyone sees that the session is being recorded; speakers start and stop it (end-to-end
  // encrypted and relayed rooms cannot be recorded: the server never sees their media).
  $("recording").hidden = !room.archive;
  $("recording").title = room.archive ? `Recording: ${room.archive.name}` : "";
  const recordable = room.roomInfo && room.roomInfo.media_mode !== "relayed" && encryption === "server";
  $("record").hidden = !isSpeaker() || !recordable;
  $("record").textContent = room.archive ? "Stop recording" : "Record";
  $("record").setAttribute("aria-pressed", String(!!room.archive));
  if (room.event && !room.event.started) {
    const from = room.event.start_from * 1000;
    const early = Date.now() < from;
    $("start-session").disabled = early;
    $("start-session").textContent = early ? `Start session (from ${new Date(from).toLocaleTimeString([], { timeStyle: "short" })})` : "Start session";
  }
  // People in my room.
  const mates = room.roomMates();
  $("participants").replaceChildren(...mates.map((p) => {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${p.name}${p.id === room.me.id ? " (you)" : ""}`;
    li.append(who);
    const tags = [p.role === "moderator" ? "speaker" : null, p.on_stage ? "on screen" : null, p.state === "disconnected" ? "reconnecting" : null];
    for (const t of tags.filter(Boolean)) { const s = document.createElement("span"); s.className = "tag"; s.textContent = t; li.append(s); }
    if (isSpeaker() && p.id !== room.me.id) {
      if (p.on_stage) li.append(button("Take off stage", () => room.removeFromStage(p.id), `Take ${p.name} off stage`));
      li.append(button("Remove", () => room.removeParticipant(p.id), `Remove ${p.name} from the session`));
    }
    return li;
  }));
  // Requests to enable mic & camera, for speakers.
  const waiting = [...room.participants.values()].filter((p) => p.stage_requested_at);
  $("requests").replaceChildren(...(isSpeaker() ? waiting : []).map((p) => {
    const d = document.createElement("div");
    d.className = "request";
    d.append(`${p.name} asks to enable mic & camera `,
      button("Approve", () => room.answerStageRequest(p.id, true), `Approve ${p.name}`),
      button("Decline", () => room.answerStageRequest(p.id, false), `Decline ${p.name}`));
    return d;
  }));
  // Remove tiles of people no longer on screen in my room.
  const visible = new Set(mates.filter((p) => p.on_stage).map((p) => p.id));
  for (const el of [...document.querySelectorAll(".tile")]) {
    const owner = [...visible, room.me.id].find((id) => el.id === `tile-${id}` || el.id.startsWith(`tile-${id}-`));
    if (!owner) el.remove();
  }
  if (!publishing()) $(`tile-${room.me.id}`)?.remove();
  renderChat(); renderQuestions(); renderRooms();
}

// Text as the page shows it: encrypted text is shown once decrypted, or says why it cannot be.
function shown(obj, field) {
  if (obj.decrypting) return "…";
  if (obj[field] == null && obj.undecryptable) return "cannot decrypt: check the passphrase";
  return obj[field] || "";
}

function renderChat() {
  $("chat").replaceChildren(...room.chatMessages.map((m) => {
    const li = document.createElement("li");
    const b = document.createElement("b"); b.textContent = `${m.name}:`;
    li.append(b, shown(m, "text"));
    if (m.breakout_id === "*") { const s = document.createElement("span"); s.className = "tag"; s.textContent = "to all rooms"; li.append(" ", s); }
    return li;
  }));
  $("chat").scrollTop = $("chat").scrollHeight;
}

function renderQuestions() {
  const order = { open: 0, answered: 1, dismissed: 2 };
  const qs = [...room.questions.values()].filter((q) => q.status !== "dismissed")
    .sort((a, b) => order[a.status] - order[b.status] || b.votes - a.votes || a.asked_at - b.asked_at);
  $("questions").replaceChildren(...qs.map((q) => {
    const li = document.createElement("li");
    li.className = q.status;
    const text = document.createElement("span"); text.className = "text"; text.textContent = shown(q, "text");
    const meta = document.createElement("span"); meta.className = "tag"; meta.textContent = `${q.name} · ${q.votes} vote${q.votes === 1 ? "" : "s"}${q.status === "answered" ? " · answered" : ""}`;
    li.append(text, meta);
    if (q.answer || q.undecryptable) { const a = document.createElement("span"); a.className = "text"; a.textContent = `Answer: ${shown(q, "answer")}`; li.append(a); }
    if (q.status === "open") {
      if (q.participant_id !== room.me.id) li.append(button("Upvote", () => room.upvote(q.id), `Upvote: ${q.text}`));
      if (isSpeaker()) {
        li.append(button("Mark answered", () => room.answerQuestion(q.id, "answered"), `Mark answered: ${q.text}`));
        li.append(button("Dismiss", () => room.answerQuestion(q.id, "dismissed"), `Dismiss: ${q.text}`));
      }
    }
    return li;
  }));
}

function renderRooms() {
  if (!isSpeaker()) return;
  const b = room.breakouts;
  $("open-rooms").hidden = b.open; $("close-rooms").hidden = !b.open;
  $("open-rooms").disabled = !b.rooms.length; $("auto-assign").disabled = !b.rooms.length;
  const people = [...room.participants.values()].filter((p) => p.role !== "moderator");
  $("breakouts").replaceChildren(...b.rooms.map((r) => {
    const d = document.createElement("div");
    d.className = "breakout";
    const name = document.createElement("input");
    name.value = r.name; name.maxLength = 30; name.setAttribute("aria-label", `Name of ${r.name}`);
    name.onchange = () => room.breakoutRename(r.id, name.value).catch((err) => { status(explain(err), "warn"); name.value = r.name; });
    const members = people.filter((p) => (b.open ? p.breakout_id : b.plan[p.id]) === r.id).map((p) => p.name);
    const list = document.createElement("div"); list.textContent = members.length ? members.join(", ") : "nobody yet";
    d.append(name, list);
    if (b.open) d.append(button(room.me.breakout_id === r.id ? "You are here" : "Visit", () => room.breakoutVisit(r.id), `Visit ${r.name}`));
    else d.append(button("Delete", () => room.breakoutDelete(r.id), `Delete ${r.name}`));
    return d;
  }));
  if (b.open && room.me.breakout_id) $("breakouts").append(button("Back to the main room", () => room.breakoutVisit(null)));
  // Manual assignment: one select per participant.
  if (b.rooms.length) {
    const box = document.createElement("div");
    for (const p of people) {
      const label = document.createElement("label");
      const sel = document.createElement("select");
      sel.setAttribute("aria-label", `Room for ${p.name}`);
      sel.append(new Option("Main room", ""), ...b.rooms.map((r) => new Option(r.name, r.id)));
      sel.value = (b.open ? p.breakout_id : b.plan[p.id]) || "";
      sel.onchange = () => room.breakoutAssign({ [p.id]: sel.value || null }).catch((err) => status(explain(err), "warn"));
      label.append(`${p.name} `, sel);
      box.append(label, document.createElement("br"));
    }
    $("breakouts").append(box);
  }
}

// Live figures: connection quality per participant and who is speaking.
async function poll() {
  if (!room || over) return;
  if (room.speakers) markSpeaker(room.speakers.active); // (a tile made since the server last said)
  if (!room.subscribePc) return;
  const quality = await room.quality();
  for (const [pid, q] of Object.entries(quality)) {
    const el = $(`tile-${pid}`)?.querySelector(".quality");
    if (el) { el.hidden = false; el.textContent = q; el.setAttribute("aria-label", `Connection: ${q}`); }
  }
  // Without the server's word (relayed rooms): the loudest audio we receive.
  if (!room.speakers) {
    let loudest = null, level = 0.02;
    (await room.subscribePc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && (s.audioLevel || 0) > level) { level = s.audioLevel; loudest = (s.trackIdentifier || "").split("/")[0]; }
    });
    markSpeaker(loudest);
  }
  await chooseLayers();
}

// The active speaker's tile is marked (routed rooms: as soon as the server says, ourselves too).
function markSpeaker(pid) {
  for (const el of document.querySelectorAll(".tile")) el.classList.toggle("speaking", el.id === `tile-${pid}`);
}

// Each simulcast video comes in the layer its tile shows it at (device pixels): a small tile
// (a phone, a crowded grid) takes a lower layer and spares the link; asked again only on change.
const layersAsked = new Map(); // track id -> quality asked
function qualityFor(width, layers) {
  if (layers >= 3) return width < 240 ? "low" : width < 560 ? "medium" : "high";
  return width < 400 ? "low" : "high";
}
async function chooseLayers() {
  for (const video of document.querySelectorAll("#grid video")) {
    const track = video.srcObject && video.srcObject.getVideoTracks && video.srcObject.getVideoTracks()[0];
    const info = track && room.tracks.get(track.id);
    if (!info || (info.layers || 0) < 2) continue;
    const quality = qualityFor(video.getBoundingClientRect().width * (window.devicePixelRatio || 1), info.layers);
    if (layersAsked.get(track.id) === quality) continue;
    layersAsked.set(track.id, quality);
    room.setVideoQuality(track.id, quality).catch(() => layersAsked.delete(track.id));
  }
}

// Leaving ------------------------------------------------------------------------------------

// The meeting is over for this page (left, ended, removed): camera, microphone and screen are
// released, tiles go, and every control is disabled (nothing here can reach the session now).
// When the session ends the server closes the socket itself, after answering what was asked.
function finish(text, level = "", { close = true } = {}) {
  over = true;
  if (room && close) room.close();
  if (preview) preview.getTracks().forEach((t) => t.stop());
  preview = null;
  for (const el of [...document.querySelectorAll(".tile")]) el.remove();
  $("meeting").querySelectorAll("button, input, select").forEach((el) => { el.disabled = true; });
  $("meeting").classList.add("over");
  status(text, level);
}

// Wiring -------------------------------------------------------------------------------------

function wire(r) {
  r.addEventListener("track", ({ detail }) => {
    const pid = detail.participantId || detail.track.id;
    const name = r.participants.get(pid)?.name || "guest";
    let video = tile(pid, name);
    if (!video.srcObject || video.srcObject === preview) video.srcObject = new MediaStream();
    const screen = r.tracks.get(detail.track.id)?.source === "screen";
    if (detail.track.kind === "video" && (screen || video.srcObject.getVideoTracks().some((t) => t.readyState === "live" && t !== detail.track))) {
      // A shared screen (as its publisher says, or a second video of the same participant): a tile of its own.
      video = tile(`${pid}-${detail.track.id.replace(/[^\w-]/g, "_")}`, `${name} (screen)`);
      video.srcObject = new MediaStream();
      detail.track.onended = () => video.closest(".tile")?.remove();
    }
    video.srcObject.addTrack(detail.track);
    if (detail.track.kind === "audio") { const a = new Audio(); a.srcObject = new MediaStream([detail.track]); a.play().catch(() => {}); }
  });
  r.addEventListener("event", async ({ detail: msg }) => {
    const me = r.me && msg.participant_id === r.me.id;
    if (msg.event === "session_ended") {
      finish("The session has ended. Thank you for joining.", "", { close: false });
    } else if (me && msg.event === "stage_approved") {
      status("A speaker approved your request: you are on screen.");
      if (!mediaOff) await goOnStage();
    } else if (me && msg.event === "stage_declined") {
      status("A speaker declined your request to enable mic & camera.", "warn");
    } else if (me && msg.event === "stage_left" && msg.data.reason === "removed") {
      status("A speaker took you off the stage.", "warn");
    } else if (me && msg.event === "moved") {
      const name = r.breakouts.rooms.find((x) => x.id === msg.data.breakout_id)?.name;
      status(name ? `You are in the breakout room “${name}”.` : "You are back in the main room.");
      r.chatMessages = (await r.request({ type: "chat_history" })).data;
    } else if (msg.event === "session_started") {
      status("The session has started.");
    }
    const log = document.createElement("div");
    log.textContent = `${msg.event} ${msg.participant_id || ""}`;
    $("log").prepend(log);
    render();
  });
  r.addEventListener("breakouts", render);
  r.addEventListener("speakers", ({ detail }) => markSpeaker(detail.active));
  r.addEventListener("archive", ({ detail }) => { status(detail ? "This session is being recorded." : "Recording stopped."); render(); });
  r.addEventListener("unpublished", () => { preview = null; render(); });
  r.addEventListener("closed", ({ detail }) => {
    if (detail.code === 4003) finish(detail.reason === "removed" ? "A speaker removed you from the session." : "You joined from somewhere else.", "warn");
    else if (detail.code === 4002) finish("The session has ended. Thank you for joining.");
    else if (detail.code === 4000) finish("The connection could not be restored. Reload the page to join again.", "error");
    else finish("You left the session.");
  });
  r.addEventListener("media_failed", ({ detail }) => {
    if (detail.pc === "peer") {
      return status("Audio and video cannot connect directly to another participant. Their network or yours may block " +
        "direct connections; the server's TURN relay (turn_urls) gets through most firewalls. Chat and Q&A still work.", "error");
    }
    const where = detail.address ? ` at ${detail.address} (UDP)` : "";
    status(`Audio and video cannot connect to the media server${where}. Check that your network (firewall, VPN or ` +
      "proxy) lets UDP through to it; if others can't connect either, the server's media address may be set wrong " +
      "(media_advertised_host). Chat and Q&A still work.", "error");
  });
  r.addEventListener("reconnecting", () => status("Connection lost – reconnecting…", "warn"));
  r.addEventListener("reconnected", () => { status("Reconnected."); render(); });
  r.addEventListener("decrypted", () => { renderChat(); renderQuestions(); });
  r.addEventListener("decrypt_failed", ({ detail }) => {
    const el = $(`tile-${detail.participantId}`);
    if (!el || el.querySelector(".notice")) return;
    const n = document.createElement("span");
    n.className = "notice"; n.setAttribute("role", "status");
    n.textContent = "Cannot decrypt: check the passphrase";
    el.append(n);
  });
  const adaptNotice = (tileId, text) => {
    const el = $(tileId);
    if (!el) return;
    el.querySelector(".notice.adapt")?.remove();
    if (!text) return; // lifted, or enabled again
    const n = document.createElement("span");
    n.className = "notice adapt"; n.setAttribute("role", "status");
    n.textContent = text;
    el.append(n);
  };
  r.addEventListener("video_adaptation", ({ detail }) => {
    // A link cannot carry this video now, ours (the server paused it for us) or its publisher's
    // (it sends audio only for now); audio goes on.
    const who = r.participants.get(detail.participantId)?.name || "their";
    const text = detail.reason === "publisher"
      ? { video_disabled_warning: `${who}'s connection is weak: video may pause`,
          video_disabled: `Video paused: ${who}'s connection is too weak (audio continues)` }[detail.state]
      : { video_disabled_warning: "Weak connection: video may pause",
          video_disabled: "Video paused: your connection is too weak (audio continues)" }[detail.state];
    adaptNotice(`tile-${detail.participantId}`, text);
  });
  r.addEventListener("uplink", ({ detail }) => {
    // Our own uplink cannot carry our camera: we send audio only for now (see mediaserver.js).
    adaptNotice(`tile-${r.me.id}`, { warned: "Your connection is weak: your video may pause",
      disabled: "Your connection is too weak for video: sending audio only" }[detail.state]);
  });
  r.addEventListener("media_mode_changed", ({ detail }) => {
    for (const el of [...document.querySelectorAll(".tile")]) if (el.id !== `tile-${r.me.id}`) el.remove();
    status(detail.mode === "routed" ? "More people joined: audio and video now go through the server."
      : "Audio and video now go directly between participants (peer to peer).");
  });
  r.addEventListener("media_reset", () => {
    for (const el of [...document.querySelectorAll(".tile")]) if (el.id !== `tile-${r.me.id}`) el.remove();
  });
  r.addEventListener("error", ({ detail: err }) => { if (!over) status(explain(err), "warn"); });
}

// Never a real form submission (it would reload the page without its token).
$("prejoin-form").onsubmit = (e) => { e.preventDefault(); if (!$("join").disabled) join(); };
$("leave").onclick = async () => {
  try { await room.leave(); } catch { /* the socket may already be gone: leaving anyway */ }
  finish("You left the session.");
};
// Ending is for everyone at once: ask first.
$("end").onclick = () => $("confirm-end").showModal();
$("record").onclick = async () => {
  $("record").disabled = true;
  try { await (room.archive ? room.stopArchive() : room.startArchive("both")); } catch (err) { status(explain(err), "warn"); }
  finally { $("record").disabled = false; render(); }
};
$("confirm-end").addEventListener("close", () => {
  if ($("confirm-end").returnValue === "end") room.endSession().catch((err) => status(explain(err), "warn"));
});
$("start-session").onclick = () => room.startSession().then(() => { status("The session has started: participants can join now."); render(); })
  .catch((err) => status(explain(err), "warn"));
$("request-stage").onclick = () => room.requestStage().then(() => status("Your request to enable mic & camera is waiting for a speaker.")).catch((err) => status(explain(err), "warn")).finally(render);
$("go-on-stage").onclick = goOnStage;
$("screen").onclick = async () => {
  try {
    if (room.sharingScreen) await room.stopScreen();
    else tile(`${room.me.id}-screen`, "Your screen").srcObject = new MediaStream([await room.shareScreen()]);
  } catch (err) { status(explain(err), "warn"); }
  if (!room.sharingScreen) $(`tile-${room.me.id}-screen`)?.remove();
  render();
};
$("leave-stage").onclick = () => room.leaveStage().catch((err) => status(explain(err), "warn"));
$("mic").onclick = () => toggle("audio", $("mic"), "Mute microphone", "Unmute microphone");
$("cam").onclick = () => toggle("video", $("cam"), "Turn camera off", "Turn camera on");
$("chat-form").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("chat-text").value.trim();
  if (!text) return;
  try { await room.chat(text, $("all-rooms").checked); $("chat-text").value = ""; } catch (err) { status(explain(err), "warn"); }
};
$("qa-form").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("qa-text").value.trim();
  if (!text) return;
  try { await room.ask(text); $("qa-text").value = ""; } catch (err) { status(explain(err), "warn"); }
};
$("rooms-form").onsubmit = async (e) => {
  e.preventDefault();
  const have = room.breakouts.rooms.length;
  const n = Math.max(1, Math.min(10 - have, Number($("room-count").value) || 1));
  const names = Array.from({ length: n }, (_, i) => `Room ${have + i + 1}`);
  try { await room.breakoutCreate(names); } catch (err) { status(explain(err), "warn"); }
};
$("auto-assign").onclick = () => room.breakoutAutoAssign().catch((err) => status(explain(err), "warn"));
$("open-rooms").onclick = () => room.breakoutOpen().catch((err) => status(explain(err), "warn"));
$("close-rooms").onclick = () => room.breakoutClose().catch((err) => status(explain(err), "warn"));
for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.onclick = () => {
    for (const t of document.querySelectorAll('[role="tab"]')) {
      t.setAttribute("aria-selected", String(t === tab));
      $(t.getAttribute("aria-controls")).hidden = t !== tab;
    }
  };
}
init();
