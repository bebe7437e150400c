// The operator dashboard: sessions (live, ending soon, ended) with search, a session's record,
// a participant's event log as a timeline, ending a session, and the media workers' health.
// Signs in with an API key (kept in this tab's sessionStorage only) and refreshes by polling.
const $ = (id) => document.getElementById(id);
let auth = sessionStorage.getItem("mediaserver-auth");
let view = "live";
let selectedSession = null;
let selectedParticipant = null;
let roomFilter = null; // {id, name}: one room's sessions, live and ended

const fmt = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "–");
const duration = (from, to) => {
  if (!from) return "–";
  const s = Math.max(0, Math.round(((to ? new Date(to) : new Date()) - new Date(from)) / 1000));
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
};
const status = (text, error = false) => { $("status").textContent = text; $("status").className = error ? "error" : ""; };

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { Authorization: `Basic ${auth}`, ...(options.headers || {}) } });
  const body = r.status === 204 ? null : await r.json();
  if (r.status === 401) { signOut("Your API key was refused: sign in again."); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error(body?.error?.message || r.statusText);
  return body;
}

function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

async function refreshSessions() {
  const q = $("search").value.trim();
  const params = new URLSearchParams({ status: view === "live" ? "live,ending_soon" : "ended", limit: "100" });
  if (q) params.set("q", q);
  if (roomFilter) {
    params.set("room_id", roomFilter.id);
    params.delete("status");
  }
  $("sessions-title").textContent = roomFilter ? `Sessions of ${roomFilter.name}` : "Sessions";
  const { sessions } = await api(`/v1/sessions?${params}`);
  $("sessions").tBodies[0].replaceChildren(...sessions.map((s) => {
    const tr = document.createElement("tr");
    tr.className = s.status === "ending_soon" ? "ending-soon" : "";
    tr.tabIndex = 0;
    tr.setAttribute("aria-label", `Session ${s.id} of ${s.room_name}`);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = s.status === "ending_soon" ? "ending soon" : s.status;
    const st = cell(""); st.append(label);
    const actions = cell("");
    if (s.status !== "ended") {
      const end = document.createElement("button");
      end.type = "button"; end.textContent = "End session"; end.setAttribute("aria-label", `End session ${s.id}`);
      end.onclick = async (e) => {
        e.stopPropagation();
        end.disabled = true;
        try { await api(`/v1/sessions/${s.id}/end`, { method: "POST" }); status(`Session ${s.id} ended.`); await refresh(); }
        catch (err) { status(err.message, true); end.disabled = false; }
      };
      actions.append(end);
    }
    tr.append(cell(s.room_name), cell(s.id), st, cell(fmt(s.started_at)), cell(String(s.participant_count ?? "")), actions);
    tr.onclick = tr.onkeydown = (e) => { if (e.type === "click" || e.key === "Enter") { selectedSession = s.id; selectedParticipant = null; refreshRecord(); } };
    return tr;
  }));
}

async function refreshRecord() {
  if (!selectedSession) return;
  const s = await api(`/v1/sessions/${selectedSession}`);
  $("record").hidden = false;
  $("record-title").textContent = `Session ${s.id} – ${s.room_name}`;
  $("room-sessions").onclick = () => { roomFilter = { id: s.room_id, name: s.room_name }; refreshSessions().catch((err) => status(err.message, true)); };
  const rooms = (s.breakouts && s.breakouts.rooms) || [];
  $("record-summary").textContent = `${s.status === "ending_soon" ? "ending soon" : s.status} · started ${fmt(s.started_at)}` +
    `${s.ended_at ? ` · ended ${fmt(s.ended_at)} (${s.end_reason})` : ""} · duration ${duration(s.started_at, s.ended_at)}` +
    ` · ${s.participants.length} participant${s.participants.length === 1 ? "" : "s"}${rooms.length ? ` · ${rooms.length} breakout rooms` : ""}` +
    (s.end_to_end_encrypted ? " · end-to-end encrypted: its media, chat and questions cannot be shown here" : "");
  $("participants").tBodies[0].replaceChildren(...s.participants.map((p) => {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.setAttribute("aria-label", `Participant ${p.name}`);
    const c = p.counts || {};
    const q = p.quality ? `${p.quality.grade} (${p.quality.loss_percent}% lost, ${p.quality.jitter_ms} ms jitter)` : "–";
    tr.append(cell(p.name), cell(p.role), cell(fmt(p.joined_at)), cell(p.left_at ? `${fmt(p.left_at)} (${p.left_reason})` : p.state),
      cell(duration(p.joined_at, p.left_at)), cell(q), cell(`${c.chat_messages || 0} / ${c.questions || 0} / ${c.upvotes || 0}`));
    tr.onclick = tr.onkeydown = (e) => { if (e.type === "click" || e.key === "Enter") { selectedParticipant = p; refreshTimeline(); } };
    return tr;
  }));
  await refreshArchives(s.id);
  if (selectedParticipant) await refreshTimeline();
}

const size = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`);

async function refreshArchives(sessionId) {
  const { archives } = await api(`/v1/archives?session_id=${encodeURIComponent(sessionId)}`);
  $("archives").hidden = !archives.length;
  $("archives").tBodies[0].replaceChildren(...archives.map((a) => {
    const tr = document.createElement("tr");
    const files = a.files.map((f) => `${f.name} (${size(f.size)})`).join(", ") || "–";
    const recorded = `${fmt(a.started_at)} – ${a.stopped_at ? `${fmt(a.stopped_at)} (${a.stop_reason})` : "now"}`;
    const td = document.createElement("td");
    if (a.status === "ready") {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Download"; b.setAttribute("aria-label", `Download the archive ${a.name}`);
      b.onclick = async () => {  // (the API key is a header, so the file comes through fetch)
        const r = await fetch(`/v1/archives/${a.id}/zip`, { headers: { Authorization: `Basic ${auth}` } });
        if (!r.ok) return status(`Download failed (${r.status}).`, true);
        const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(await r.blob()), download: `${a.id}.zip` });
        link.click(); URL.revokeObjectURL(link.href);
      };
      td.append(b);
    }
    tr.append(cell(a.name), cell(a.error ? `${a.status}: ${a.error}` : a.status), cell(recorded), cell(files), cell(size(a.size)), td);
    return tr;
  }));
}

// End-to-end encrypted text is the participants' to read, not the server's.
const readable = (text) => (String(text).startsWith("e2ee1:") ? "(end-to-end encrypted)" : `“${text}”`);

const DESCRIBE = {
  joined: "joined", left: (d) => `left (${d.reason})`, disconnected: "connection lost", reconnected: "reconnected",
  track_published: (d) => `published ${d.kind} (${d.codec})`, track_unpublished: "stopped publishing a track",
  connection_state: (d) => `${d.pc} connection ${d.state}`, stage_requested: "asked to enable mic & camera",
  stage_approved: "request approved", stage_declined: "request declined", stage_joined: "went on screen",
  stage_left: (d) => `left the stage (${d.reason})`, role_changed: (d) => `role: ${d.role}`,
  moved: (d) => (d.breakout_id ? `moved to a breakout room (${d.breakout_id})` : "back to the main room"),
  chat: (d) => `chat: ${readable(d.message.text)}`, question_asked: (d) => `asked: ${readable(d.question.text)}`,
  question_upvoted: "upvoted a question", session_ended: (d) => `session ended (${d.reason})`,
  quality: (d) => `reception ${d.grade}: ${d.loss_percent}% lost, ${d.jitter_ms} ms jitter`,
  archive_started: (d) => `started recording (${d.output})`, archive_stopped: (d) => `recording stopped (${d.reason})`,
};

async function refreshTimeline() {
  const p = await api(`/v1/sessions/${selectedSession}/participants/${selectedParticipant.id}`);
  $("timeline-box").hidden = false;
  $("timeline-title").textContent = `${p.name} – event log`;
  $("timeline").replaceChildren(...p.events.map((e) => {
    const li = document.createElement("li");
    const t = document.createElement("time"); t.dateTime = e.at; t.textContent = new Date(e.at).toLocaleTimeString();
    const d = DESCRIBE[e.type];
    li.append(t, typeof d === "function" ? d(e.data) : d || e.type.replaceAll("_", " "));
    return li;
  }));
}

async function refreshHealth() {
  const h = await api("/v1/server");
  $("limit").textContent = `Live sessions: ${h.live_sessions} of ${h.max_live_sessions} allowed` +
    (h.ending_soon ? ` (and ${h.ending_soon} ending soon, not counted)` : "");
  $("nodes").tBodies[0].replaceChildren(...h.nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.append(cell(n.node), cell(n.region), cell(!n.alive ? "gone" : n.state), cell(n.media_address || "–"),
      cell(String(n.sessions)), cell(n.rate.toFixed(0)));
    return tr;
  }));
  $("workers").tBodies[0].replaceChildren(...h.workers.map((w) => {
    const tr = document.createElement("tr");
    const drops = Object.entries(w.drops).map(([k, v]) => `${k.replaceAll("_", " ")}: ${v}`).join(", ") || "none";
    tr.append(cell(`${w.name} (port ${w.port}${w.fastpath ? ", fast path" : ""})`), cell(w.sessions.join(", ") || "none"),
      cell(String(w.transports)), cell(w.rate.toFixed(0)), cell(drops));
    return tr;
  }));
}

async function refresh() {
  try {
    await Promise.all([refreshSessions(), refreshHealth(), refreshRecord()]);
  } catch (err) {
    if (err.message !== "unauthorized") status(err.message, true);
  }
}

function signOut(message = "") {
  auth = null;
  sessionStorage.removeItem("mediaserver-auth");
  $("app").hidden = true; $("sign-out").hidden = true; $("sign-in").hidden = false;
  status(message, !!message);
}

async function signedIn() {
  $("sign-in").hidden = true; $("app").hidden = false; $("sign-out").hidden = false;
  await refresh();
}

$("sign-in").onsubmit = async (e) => {
  e.preventDefault();
  auth = btoa(`${$("key-id").value.trim()}:${$("key-secret").value.trim()}`);
  try {
    await api("/v1/server");
    sessionStorage.setItem("mediaserver-auth", auth);
    status("");
    await signedIn();
  } catch (err) {
    if (err.message !== "unauthorized") status(err.message, true);
  }
};
$("sign-out").onclick = () => signOut();
for (const [id, v] of [["show-live", "live"], ["show-ended", "ended"]]) {
  $(id).onclick = () => {
    view = v;
    roomFilter = null;
    $("show-live").setAttribute("aria-pressed", String(v === "live"));
    $("show-ended").setAttribute("aria-pressed", String(v === "ended"));
    refreshSessions().catch((err) => status(err.message, true));
  };
}
let searchTimer = null;
$("search").oninput = () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => refreshSessions().catch(() => {}), 250); };
setInterval(() => { if (auth) refresh(); }, 3000);
if (auth) signedIn(); else $("sign-in").hidden = false;
