// mediaserver.js: a small browser client for mediaserver's /v1/ws protocol. No build step:
//   import { Room } from "/static/mediaserver.js";
//   const room = new Room({ token, roomId });
//   room.addEventListener("track", (e) => attach(e.detail.track, e.detail.participantId));
//   await room.connect();
//   await room.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
//
// Media model: a "publish" peer connection where we offer our tracks and the server answers, and a
// "subscribe" peer connection where the server offers the tracks we receive and we answer.
// In a relayed room (media_mode "relayed") media goes directly between browsers instead: each
// publisher offers one peer connection to each room mate, and the server only carries the offers,
// answers and ICE candidates (and keeps the rules: who may publish, breakout rooms, removals).
// The same calls and events work in both.
// If the connection drops, the room reconnects by itself inside the session's grace period (as the
// same participant) and publishes again; events "reconnecting" and "reconnected" tell the page.
//
// Meeting features are requests that resolve with the server's answer (or reject with a
// MediaserverError whose .code is the server's error code): requestStage(), answerStageRequest(),
// leaveStage(), removeFromStage(), removeParticipant(), chat(), ask(), upvote(), answerQuestion(),
// startSession() and the breakout*() calls. Every session event is also dispatched under its own
// name ("chat", "question_asked", "stage_requested", "moved", "session_ended", ...); the room keeps
// .participants, .tracks, .chatMessages, .questions and .breakouts up to date.

// End to end encryption (rooms whose encryption is session_key or passphrase): pass
// { e2ee: new FrameCrypto(key) } (see e2ee.js): every frame sent is encrypted and every frame
// received decrypted here, and chat and Q&A text too; the server only ever sees ciphertext.
import { FrameCrypto, attach, isEncryptedText, useEncodedStreams } from "./e2ee.js";
export { FrameCrypto };

// ICE servers (STUN, TURN with short-lived credentials) come from the server in "joined".
const PC_CONFIG = { bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" };
// A camera's simulcast layers, lowest first (the server reads them in this order): three from
// 540 lines up (e.g. 180p, 360p and 720p of a 720p camera), two from 240 (240p and 480p of
// 640x480), as many as Chrome sends for that size; below that, one stream. Each in three
// temporal layers (L1T3: every fourth frame, every other, the rest), so the server can send a
// subscriber half or a quarter of the frames (VP8; a codec without them sends them plain).
function simulcastLayers(track) {
  const height = (track.getSettings && track.getSettings().height) || 0;
  const q = { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000, scalabilityMode: "L1T3" };
  const h = { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000, scalabilityMode: "L1T3" };
  const f = { rid: "f", scaleResolutionDownBy: 1, maxBitrate: height >= 540 ? 1500000 : 1200000, scalabilityMode: "L1T3" };
  if (height >= 540) return [q, h, f];
  if (height >= 240) return [h, f];
  return null;
}

// Publisher audio fallback: when our uplink cannot carry our camera (the browser's own estimate
// of it, which the server's transport-wide feedback feeds, under `floor` bit/s for audio and the
// lowest video together), we warn after `warnAfter` s, send audio only after `disableAfter` s
// more, and try the camera's lowest layer again (for `trialFor` s) after each of `retryAfter`.
const UPLINK = { floor: 120000, warnAfter: 2, disableAfter: 5, retryAfter: [3, 6, 12, 20], trialFor: 4 };

export class MediaserverError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

export class Room extends EventTarget {
  // iceTransportPolicy "relay" sends all media through TURN (e.g. to check a TURN server).
  constructor({ token, roomId, url, iceTransportPolicy, e2ee } = {}) {
    super();
    this.e2ee = e2ee || null;
    this._failedAt = {}; // participant -> when we last said its frames would not decrypt
    this.iceServers = [];
    this.iceTransportPolicy = iceTransportPolicy || "all";
    this.token = token;
    this.roomId = roomId;
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
    this.participants = new Map();
    this.tracks = new Map(); // track id -> {id, participant_id, kind, muted}
    this.videoStates = new Map(); // track id -> the latest of video_disabled_warning, video_disabled, ..._lifted, video_enabled
    this.speakers = null; // {active, speaking}: who speaks in our room, as the server last said (routed rooms)
    this.uplink = "ok"; // what our uplink carries of our camera: ok, warned, disabled (audio only), trial
    this.me = null;
    this.session = null;
    this.roomInfo = null;
    this.publishPc = null;
    this.subscribePc = null;
    this._pending = new Map();
    this._n = 0;
    this._signals = Promise.resolve(); // subscribe offers are answered one at a time, in order
    this._stream = null; // what we publish, to publish again after a reconnect or a media reset
    this._reconnectToken = null;
    this._closing = false;
    this.links = new Map(); // relayed rooms: "<publisher>><receiver>" -> {pc, pending candidates, ...}
    this._peerPublishing = false;
    this.chatMessages = [];
    this.questions = new Map(); // id -> question
    this.breakouts = { rooms: [], open: false, plan: {} };
  }

  // How media goes now: "relayed" (directly) or "routed"; an auto room changes it as people come.
  get relayed() { return this.mediaMode === "relayed"; }
  get isPublishing() { return this.relayed ? this._peerPublishing || !!this._peerPending : !!this.publishPc; }

  // The server's id of one of our published tracks (for setMuted).
  trackIdOf(track) {
    if (this.relayed) return this._peerNames && this._peerNames.has(track) ? `${this.me.id}/${this._peerNames.get(track)}` : null;
    const tr = this.publishPc && this.publishPc.getTransceivers().find((t) => t.sender.track === track);
    return tr && tr.mid != null ? `${this.me.id}/${tr.mid}` : null;
  }

  _pcConfig() {
    const config = { ...PC_CONFIG, iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy };
    if (this.e2ee && useEncodedStreams) config.encodedInsertableStreams = true;
    return config;
  }

  // Send a track on a peer connection (encrypted end to end when the room is); VP8 when
  // encrypted or asked for (options.videoCodec), as the frame format needs. A camera goes as
  // simulcast layers (full, half and quarter size as it allows; options.simulcast false: one
  // stream), so the server can send each subscriber the one that suits it; a screen share as one.
  _addSender(pc, track, stream, options = {}) {
    const init = { direction: "sendonly", streams: [stream] };
    // (End-to-end encrypted rooms send one stream unless asked: each layer's frames are encrypted
    // in JavaScript, which costs the sender per frame.)
    const simulcast = options.simulcast ?? !this.e2ee;
    const codec = this.e2ee ? "VP8" : options.videoCodec;
    const camera = track.kind === "video" && !options.screen;
    const temporal = !codec || codec.toUpperCase() === "VP8"; // (L1T3 is asked of VP8 only)
    const layers = camera && simulcast ? simulcastLayers(track) : null;
    if (layers) init.sendEncodings = temporal ? layers : layers.map(({ scalabilityMode, ...rest }) => rest);
    else if (camera && temporal) init.sendEncodings = [{ scalabilityMode: "L1T3" }];
    const transceiver = pc.addTransceiver(track, init);
    transceiver._source = options.screen ? (track.kind === "video" ? "screen" : "screen_audio") : (track.kind === "video" ? "camera" : "microphone");
    if (this.e2ee && options.videoCodec && options.videoCodec.toUpperCase() !== "VP8") {
      throw new MediaserverError("unsupported_codec", "end-to-end encrypted rooms send VP8 video");
    }
    if (track.kind === "video" && codec && transceiver.setCodecPreferences) {
      const wanted = RTCRtpSender.getCapabilities("video").codecs.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
      if (!wanted.length) throw new MediaserverError("unsupported_codec", `this browser cannot send ${codec}`);
      transceiver.setCodecPreferences(wanted);
    }
    if (this.e2ee) attach(transceiver.sender, "send", track.kind, this.e2ee);
    return transceiver;
  }

  // A track we receive: decrypted first when the room is encrypted end to end.
  _received(e, participantId) {
    if (this.e2ee && !e.receiver._e2ee) {
      e.receiver._e2ee = true;
      attach(e.receiver, "recv", e.track.kind, this.e2ee, () => this._undecryptable(participantId));
    }
    this._emit("track", { track: e.track, stream: e.streams[0], participantId });
  }

  _undecryptable(participantId) {
    const now = Date.now();
    if (now - (this._failedAt[participantId] || 0) < 5000) return;
    this._failedAt[participantId] = now;
    this._emit("decrypt_failed", { participantId });
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  connect() {
    return this._open({ type: "join", token: this.token, room_id: this.roomId });
  }

  _open(first) {
    return new Promise((resolve, reject) => {
      let joined = false;
      const ws = (this.ws = new WebSocket(this.url));
      ws.onopen = () => ws.send(JSON.stringify(first));
      ws.onerror = () => { if (!joined) reject(new MediaserverError("unavailable", "cannot reach the server")); };
      ws.onclose = (e) => {
        // Whatever was asked on this socket will never be answered now.
        this._failPending(new MediaserverError("closed", e.reason || "the connection closed before the server answered"));
        if (!joined) return reject(new MediaserverError("closed", e.reason || "connection closed"));
        // 1000 left, 4001 refused, 4002 session ended, 4003 removed or replaced: nothing to come back to.
        if (this._closing || [1000, 4001, 4002, 4003].includes(e.code)) {
          this.close(); // devices off, peer connections closed
          return this._emit("closed", { code: e.code, reason: e.reason });
        }
        this._reconnect();
      };
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === "joined") {
          joined = true;
          this.me = msg.participant; this.session = msg.session; this.roomInfo = msg.room;
          this._reconnectToken = msg.reconnect_token; this._grace = msg.grace_seconds;
          this.iceServers = msg.ice_servers || [];
          this.mediaMode = msg.media_mode || "routed";
          this.participants.clear(); msg.participants.forEach((p) => this.participants.set(p.id, p));
          this.tracks.clear(); msg.tracks.forEach((t) => this.tracks.set(t.id, t));
          // (a publisher sending audio only for now, its uplink too weak: as it told the server)
          msg.tracks.forEach((t) => { if (t.fallback) this.videoStates.set(t.id, t.fallback); });
          this.chatMessages = msg.chat || [];
          this.questions = new Map((msg.questions || []).map((q) => [q.id, q]));
          this.breakouts = msg.breakouts && msg.breakouts.rooms ? msg.breakouts : { rooms: [], open: false, plan: {} };
          this.speakers = msg.speakers || null;
          this.event = msg.event || null; // an event's session: {starts_at, start_from, started}
          this.archive = msg.archive || null; // the archive recording the session: {id, name, started_at}
          this._openAll();
          this._emit(msg.resumed ? "reconnected" : "joined", msg);
          if (this.relayed && !this._qualityTimer) this._qualityTimer = setInterval(() => this._reportQuality().catch(() => {}), 10000);
          resolve(msg);
        } else if (msg.type === "error" && !joined) {
          reject(new MediaserverError(msg.code, msg.message));
        } else {
          this._handle(msg);
        }
      };
    });
  }

  async _reconnect() {
    this._emit("reconnecting", {});
    const until = Date.now() + (this._grace || 60) * 1000;
    while (Date.now() < until && !this._closing) {
      await new Promise((r) => setTimeout(r, 1000));
      try {
        await this._open({ type: "resume", reconnect_token: this._reconnectToken });
        return; // the server follows with media_reset: media starts over
      } catch (err) {
        if (["reconnect_expired", "session_ended", "token_malformed"].includes(err.code)) break;
      }
    }
    this._emit("closed", { code: 4000, reason: "could not reconnect" });
  }

  // Every peer connection of ours (to the server, and to peers), as after a media reset.
  _closeConnections() {
    for (const pc of [this.publishPc, this.subscribePc]) if (pc) pc.close();
    this.publishPc = this.subscribePc = null;
    this._closeLinks(() => true);
    this._peerPublishing = false;
  }

  async _resetMedia() {
    this._closeConnections();
    this._emit("media_reset", {});
    if (this._stream) await this.publish(this._stream, this._publishOptions);
  }

  _handle(msg) {
    if (msg.id && this._pending.has(msg.id)) {
      const { resolve, reject } = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      if (msg.type === "error") reject(new MediaserverError(msg.code, msg.message)); else resolve(msg);
      return;
    }
    const failed = (err) => { if (!this._closing) this._emit("error", err); }; // (after close(): expected, not news)
    if (msg.type === "offer" && msg.pc === "subscribe") {
      this._signals = this._signals.then(() => this._answer(msg.sdp)).catch(failed);
    } else if (msg.type === "layers") {
      this._setLayers(msg.track_id, msg.active).catch(failed);
    } else if (msg.type === "speakers") {
      // Who speaks in our room (routed: the server reads the levels every microphone sends).
      this.speakers = { active: msg.active, speaking: msg.speaking };
      this._emit("speakers", this.speakers);
    } else if (msg.type.startsWith("video_")) {
      // Audio fallback and video recovery: the server paused (or resumed) a video for our link.
      this.videoStates.set(msg.track_id, msg.type);
      this._emit("video_adaptation", { trackId: msg.track_id, participantId: msg.track_id.split("/")[0], state: msg.type, reason: msg.reason });
    } else if (msg.type === "media_reset") {
      this._signals = this._signals.then(() => this._resetMedia()).catch(failed);
    } else if (msg.type === "signal") {
      this._signals = this._signals.then(() => this._onSignal(msg)).catch(failed);
    } else if (msg.type === "peer_closed") {
      // In order with the offers before it (one still being answered must not outlive this).
      this._signals = this._signals.then(() => {
        const gone = msg.participant_id;
        this._closeLinks((l) => l.publisher === gone || (!msg.as_publisher_only && l.receiver === gone));
        if (!msg.as_publisher_only) this._emit("peer_closed", { participantId: gone });
      }).catch(failed);
    } else if (msg.type === "peers_changed") {
      this._signals = this._signals.then(() => this._peersChanged()).catch(failed);
    } else if (msg.type === "ping") {
      this.ws.send(JSON.stringify({ type: "pong" }));
    } else if (msg.type === "event") {
      this._event(msg);
    } else if (msg.type === "error") {
      this._emit("error", new MediaserverError(msg.code, msg.message));
    }
  }

  _event(msg) {
    const d = msg.data || {};
    if (msg.event === "joined") this.participants.set(msg.participant_id, { id: msg.participant_id, ...d, state: "connected" });
    else if (msg.event === "left") this.participants.delete(msg.participant_id);
    else if (msg.event === "track_published") this.tracks.set(d.track_id, { id: d.track_id, participant_id: msg.participant_id, kind: d.kind, muted: false, layers: d.layers || 0, source: d.source });
    else if (msg.event === "track_unpublished") this.tracks.delete(d.track_id);
    else if ((msg.event === "muted" || msg.event === "unmuted") && this.tracks.has(d.track_id)) this.tracks.get(d.track_id).muted = msg.event === "muted";
    else if (msg.event === "chat") { this.chatMessages.push(d.message); this._openText(d.message, "text"); }
    else if (msg.event.startsWith("question_") && d.question) {
      this.questions.set(d.question.id, d.question);
      this._openText(d.question, "text"); this._openText(d.question, "answer");
    }
    else if (msg.event === "question_upvoted" && this.questions.has(d.question_id)) this.questions.get(d.question_id).votes = d.votes;
    else if (msg.event.startsWith("breakouts_")) this.breakouts = { rooms: d.rooms, open: d.open, plan: d.plan };
    else if (msg.event === "session_started" && this.event) this.event.started = true;
    else if (msg.event === "archive_started") this.archive = { id: d.archive_id, name: d.name, started_at: msg.at };
    else if (msg.event === "archive_stopped" && this.archive && this.archive.id === d.archive_id) this.archive = null;
    if (msg.event === "archive_started" || msg.event === "archive_stopped") this._emit("archive", this.archive);
    const p = this.participants.get(msg.participant_id);
    if (p) {
      if (msg.event === "role_changed") p.role = d.role;
      else if (msg.event === "stage_joined" || msg.event === "stage_approved") { p.on_stage = true; p.stage_requested_at = null; }
      else if (msg.event === "stage_left") p.on_stage = false;
      else if (msg.event === "stage_requested") p.stage_requested_at = msg.at;
      else if (msg.event === "stage_declined" || msg.event === "stage_request_cancelled") p.stage_requested_at = null;
      else if (msg.event === "moved") p.breakout_id = d.breakout_id;
      else if (msg.event === "disconnected") p.state = "disconnected";
      else if (msg.event === "reconnected") p.state = "connected";
    }
    if (this.me && msg.participant_id === this.me.id) {
      if (msg.event === "role_changed") this.me.role = d.role;
      if (msg.event === "moved") this.me.breakout_id = d.breakout_id;
      // Off the stage (by ourselves or a speaker): stop sending; the server forwards nothing of ours now.
      if (msg.event === "stage_left") this._stopPublishing();
    }
    if (msg.event === "media_mode_changed") {
      this._signals = this._signals.then(() => this._switchMode(d.mode)).catch((err) => this._emit("error", err));
    }
    // Relayed: a room mate who (re)joined gets an offer of what we publish.
    if (this.relayed && this._peerPublishing && (msg.event === "joined" || msg.event === "reconnected")
        && msg.participant_id !== this.me.id && this._mate(msg.participant_id)) {
      this._offerTo(msg.participant_id);
    }
    this._emit("event", msg);
    this._emit(msg.event, msg);
  }

  _failPending(err) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    pending.forEach(({ reject }) => reject(err));
  }

  // A peer connection that has not connected 10 s after its negotiation (or has failed) cannot
  // reach the server's media port: "media_failed" tells the page, with the address it tried.
  _watchConnection(pc, which) {
    if (pc._watched) return;
    pc._watched = true;
    const report = () => {
      if (pc._reported || this._closing) return;
      pc._reported = true;
      // An auto room falls back to routing through the server when peers cannot connect.
      if (which === "peer" && this.roomInfo && this.roomInfo.media_mode === "auto") {
        return this.request({ type: "direct_failed" }).catch(() => {});
      }
      const sdp = (pc.remoteDescription && pc.remoteDescription.sdp) || "";
      const cand = sdp.match(/a=candidate:\S+ \d+ udp \d+ (\S+) (\d+)/i);
      this._emit("media_failed", { pc: which, state: pc.connectionState, address: cand ? `${cand[1]}:${cand[2]}` : null });
    };
    const timer = setTimeout(() => { if (pc.connectionState !== "connected") report(); }, 10000);
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") clearTimeout(timer);
      else if (pc.connectionState === "failed") { clearTimeout(timer); report(); }
    });
  }

  request(msg) {
    const id = `r${++this._n}`;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...msg, id }));
    });
  }

  // options.videoCodec ("VP8", "H264", "VP9") offers only that codec; subscribers receive it as sent.
  async publish(stream, options = {}) {
    this._stream = stream;
    this._publishOptions = options;
    if (this.relayed) return this._peerPublish();
    if (!this.publishPc) this.publishPc = new RTCPeerConnection(this._pcConfig());
    for (const track of stream.getTracks()) this._addSender(this.publishPc, track, stream, options);
    await this.publishPc.setLocalDescription(await this.publishPc.createOffer());
    const reply = await this.request({ type: "offer", pc: "publish", sdp: this.publishPc.localDescription.sdp, sources: this._sources() });
    await this.publishPc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    this._watchConnection(this.publishPc, "publish");
    // (Published again, after a media reset say: the camera sends in full until the uplink says
    // otherwise; subscribers told it was paused hear it is not.)
    const was = this.uplink;
    clearInterval(this._uplinkTimer);
    this._uplinkTimer = null;
    this._watchUplink();
    const camera = this.publishPc.getTransceivers().find((t) => t._source === "camera" && t.sender.track);
    if (camera && (was === "disabled" || was === "trial")) await this._uplinkState(camera, "ok", "video_enabled");
  }

  // Publisher audio fallback (see UPLINK): this.uplink is "ok", "warned", "disabled" (audio
  // only) or "trial"; every change goes to the server (our subscribers are told) and to us as
  // an "uplink" event.
  _watchUplink() {
    if (this._uplinkTimer) return;
    this.uplink = "ok";
    let below = 0, since = 0, retries = 0, trialFrom = 0;
    const tick = async () => {
      const pc = this.publishPc;
      const camera = pc && pc.getTransceivers().find((t) => t._source === "camera" && t.sender.track);
      if (!camera) return;
      let estimate = null;
      (await pc.getStats()).forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.availableOutgoingBitrate) estimate = s.availableOutgoingBitrate;
      });
      if (estimate == null) return;
      const low = estimate < UPLINK.floor, now = performance.now() / 1000;
      below = low ? below + 1 : 0;
      const state = this.uplink;
      if (state === "ok" && below >= UPLINK.warnAfter) await this._uplinkState(camera, "warned", "video_disabled_warning");
      else if (state === "warned" && !low) await this._uplinkState(camera, "ok", "video_disabled_warning_lifted");
      else if (state === "warned" && below >= UPLINK.warnAfter + UPLINK.disableAfter) {
        since = now;
        await this._uplinkState(camera, "disabled", "video_disabled");
      } else if (state === "disabled" && now - since >= UPLINK.retryAfter[Math.min(retries, UPLINK.retryAfter.length - 1)]) {
        since = now;
        trialFrom = estimate;
        await this._uplinkState(camera, "trial", null); // (the lowest layer on trial: the browser probes with it)
      } else if (state === "trial" && now - since >= UPLINK.trialFor) {
        since = now;
        if (!low) { retries = 0; await this._uplinkState(camera, "ok", "video_enabled"); }
        else if (estimate > 1.2 * trialFrom) trialFrom = estimate; // (still climbing: the link may carry it soon)
        else { retries += 1; await this._uplinkState(camera, "disabled", null); }
      }
    };
    this._uplinkTimer = setInterval(() => tick().catch(() => {}), 1000);
  }

  async _uplinkState(transceiver, state, told) {
    this.uplink = state;
    await this._applyLayers(transceiver);
    const trackId = this.me && transceiver.mid != null ? `${this.me.id}/${transceiver.mid}` : null;
    // Our page first: the server's answer comes back over the very link that is too weak (seconds).
    this._emit("uplink", { state, trackId });
    if (told && trackId) await this.request({ type: "video_fallback", track_id: trackId, state: told }).catch(() => {});
  }

  // What our camera's encodings send: what anyone receives (dynacast, from the server), none
  // while our uplink carries audio only, the lowest alone while it is on trial.
  async _applyLayers(transceiver) {
    const params = transceiver.sender.getParameters();
    if (!params.encodings || !params.encodings.length) return;
    const wanted = transceiver._wanted || params.encodings.map(() => true);
    const fallback = transceiver._source === "camera" ? this.uplink : "ok";
    params.encodings.forEach((e, i) => {
      e.active = fallback === "disabled" ? false : fallback === "trial" ? i === 0 : wanted[i] !== false;
    });
    await transceiver.sender.setParameters(params);
  }

  // What each track we send is, by mid: the server puts a screen share before other videos when
  // a subscriber's link cannot carry them all, and tells everyone (a track's "source").
  _sources() {
    const out = {};
    for (const t of this.publishPc.getTransceivers()) if (t.mid && t._source && !t.stopped) out[t.mid] = t._source;
    return out;
  }

  // Share the screen as one more video track of our publication (renegotiated on the publish
  // connection); stops by itself when the browser's sharing ends.
  async shareScreen() {
    if (this.relayed) return this._peerShareScreen();
    if (!this.publishPc) throw new MediaserverError("not_on_stage", "turn on your camera or microphone (go on stage) first");
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = screen.getVideoTracks()[0];
    this._screen = { stream: screen, transceiver: this._addSender(this.publishPc, track, screen, { screen: true }) };
    track.onended = () => this.stopScreen().catch((err) => this._emit("error", err));
    await this._renegotiate();
    this._emit("screen", { sharing: true, track });
    return track;
  }

  async stopScreen() {
    if (!this._screen) return;
    const { stream, transceiver } = this._screen;
    this._screen = null;
    stream.getTracks().forEach((t) => t.stop());
    if (this.relayed) {
      if (this._peerPublishing) await this._peerPublish();
    } else if (this.publishPc) {
      transceiver.stop();
      await this._renegotiate();
    }
    this._emit("screen", { sharing: false });
  }

  get sharingScreen() { return !!this._screen; }

  async _renegotiate() {
    await this.publishPc.setLocalDescription(await this.publishPc.createOffer());
    const reply = await this.request({ type: "offer", pc: "publish", sdp: this.publishPc.localDescription.sdp, sources: this._sources() });
    await this.publishPc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  }

  async _answer(sdp) {
    if (!this.subscribePc) {
      this.subscribePc = new RTCPeerConnection(this._pcConfig());
      this.subscribePc.ontrack = (e) => this._received(e, e.streams[0] ? e.streams[0].id : null);
    }
    await this.subscribePc.setRemoteDescription({ type: "offer", sdp });
    await this.subscribePc.setLocalDescription(await this.subscribePc.createAnswer());
    // Not waiting for the server's ack: its next offer comes only once it has this answer.
    this.request({ type: "answer", pc: "subscribe", sdp: this.subscribePc.localDescription.sdp })
      .catch((err) => { if (!this._closing) this._emit("error", err); });
    this._watchConnection(this.subscribePc, "subscribe");
  }

  _stopPublishing() {
    clearInterval(this._uplinkTimer);
    this._uplinkTimer = null;
    if (this._screen) { this._screen.stream.getTracks().forEach((t) => t.stop()); this._screen = null; }
    if (this.publishPc) this.publishPc.close();
    this.publishPc = null;
    if (this.me) this._closeLinks((l) => l.publisher === this.me.id);
    this._peerPublishing = false;
    if (this._stream) this._stream.getTracks().forEach((t) => t.stop());
    this._stream = null;
    this._emit("unpublished", {});
  }

  // Who is in my room (the main room, or my breakout room while rooms are open).
  roomMates() {
    const mine = this.me ? this.me.breakout_id || null : null;
    return [...this.participants.values()].filter((p) => (p.breakout_id || null) === mine);
  }

  // Stage: ask to enable mic & camera; speakers approve or decline; anyone on screen may step off.
  async startSession() {
    const r = await this.request({ type: "start_session" });
    if (this.event) this.event.started = true;
    return r;
  }
  // Moderators: record the session (output: "individual" | "composed" | "both"), and stop.
  startArchive(output = "individual", name) { return this.request({ type: "archive_start", output, ...(name ? { name } : {}) }); }
  stopArchive() { return this.request({ type: "archive_stop" }); }
  requestStage() { return this.request({ type: "request_stage" }); }
  cancelStageRequest() { return this.request({ type: "cancel_stage_request" }); }
  answerStageRequest(participantId, approve) { return this.request({ type: "answer_stage_request", participant_id: participantId, approve }); }
  leaveStage() { return this.request({ type: "leave_stage" }); }
  removeFromStage(participantId) { return this.request({ type: "remove_from_stage", participant_id: participantId }); }
  removeParticipant(participantId) { return this.request({ type: "remove_participant", participant_id: participantId }); }
  // Chat and Q&A.
  async chat(text, allRooms = false) {
    const m = (await this.request({ type: "chat", text: await this._seal(text, 1000), all_rooms: allRooms })).data;
    return this._openText(m, "text").then(() => m);
  }
  async ask(text) {
    const q = (await this.request({ type: "ask", text: await this._seal(text, 500) })).data;
    return this._openText(q, "text").then(() => q);
  }
  async upvote(questionId) { return (await this.request({ type: "upvote", question_id: questionId })).data; }
  async answerQuestion(questionId, status = "answered", answer = null) {
    const q = (await this.request({ type: "answer_question", question_id: questionId, status,
      answer: answer == null ? answer : await this._seal(answer, 1000) })).data;
    await this._openText(q, "text");
    await this._openText(q, "answer");
    return q;
  }
  // Breakout rooms (speakers).
  async _breakout(msg) { const r = await this.request(msg); this.breakouts = r.data; this._emit("breakouts", r.data); return r.data; }
  breakoutCreate(names) { return this._breakout({ type: "breakout_create", names }); }
  breakoutRename(breakoutId, name) { return this._breakout({ type: "breakout_rename", breakout_id: breakoutId, name }); }
  breakoutDelete(breakoutId) { return this._breakout({ type: "breakout_delete", breakout_id: breakoutId }); }
  breakoutAssign(assignments) { return this._breakout({ type: "breakout_assign", assignments }); }
  breakoutAutoAssign() { return this._breakout({ type: "breakout_auto_assign" }); }
  breakoutOpen() { return this._breakout({ type: "breakout_open" }); }
  breakoutClose() { return this._breakout({ type: "breakout_close" }); }
  breakoutVisit(breakoutId) { return this._breakout({ type: "breakout_visit", breakout_id: breakoutId }); }

  // Connection quality of what we receive, per participant: "good", "fair" or "poor".
  async quality() {
    const out = {};
    for (const [publisher, pc] of this._receiving()) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        const received = s.packetsReceived || 0, lost = Math.max(s.packetsLost || 0, 0);
        const loss = received + lost ? lost / (received + lost) : 0;
        const owner = publisher || (s.trackIdentifier || "").split("/")[0]; // (routed: the server names tracks "<participant>/<mid>")
        out[owner] = loss < 0.02 && (s.jitter || 0) < 0.03 ? "good" : loss < 0.08 ? "fair" : "poor";
      });
    }
    return out;
  }

  // Dynacast: the server says which of our simulcast layers anyone receives; the others are
  // not encoded until wanted (a camera nobody watches in full costs only its lower layers).
  async _setLayers(trackId, active) {
    const mid = trackId.split("/").pop();
    const tr = this.publishPc && this.publishPc.getTransceivers().find((t) => t.mid === mid);
    if (!tr || !tr.sender.track) return;
    const encodings = tr.sender.getParameters().encodings;
    if (!encodings || encodings.length !== active.length) return;
    tr._wanted = active;
    await this._applyLayers(tr);
    this._emit("layers", { trackId, active });
  }

  setSubscribed(trackId, subscribed) { return this.request({ type: "subscribe", track_id: trackId, subscribed }); }
  // Which layer of a simulcast video track to receive ("low", "medium" or "high"), and at what
  // frame rate ("full", "half" or "quarter"); either may be left out (null: as it is).
  setVideoQuality(trackId, quality, frameRate) {
    const msg = { type: "video_quality", track_id: trackId };
    if (quality) msg.quality = quality;
    if (frameRate) msg.frame_rate = frameRate;
    return this.request(msg);
  }
  setMuted(trackId, muted) { return this.request({ type: "mute", track_id: trackId, muted }); }
  setRole(participantId, role) { return this.request({ type: "set_role", participant_id: participantId, role }); }
  endSession() { return this.request({ type: "end_session" }); }

  async leave() {
    try { await this.request({ type: "leave" }); } finally { this.close(); }
  }

  // Close the socket and both peer connections, and release what we published (camera,
  // microphone, screen): nothing keeps a device on after leaving.
  close() {
    this._closing = true;
    clearInterval(this._qualityTimer);
    this._stopPublishing();
    this._closeLinks(() => true);
    if (this.subscribePc) this.subscribePc.close();
    this.subscribePc = null;
    if (this.ws && this.ws.readyState <= 1) this.ws.close();
  }

  // The peer connections we receive on: the subscribe one (routed), one per publisher (relayed).
  _receiving() {
    if (!this.relayed) return this.subscribePc ? [[null, this.subscribePc]] : [];
    return [...this.links.values()].filter((l) => l.receiver === this.me.id).map((l) => [l.publisher, l.pc]);
  }

  // Decoded video frames per remote track (from getStats), e.g. for a quality indicator or a test.
  async receivedVideo() {
    const out = [];
    for (const [publisher, pc] of this._receiving()) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        const codec = s.codecId && stats.get(s.codecId);
        // (routed: the server names each track "<participant>/<mid>")
        const owner = publisher || (s.trackIdentifier || "").split("/")[0] || null;
        out.push({ ssrc: s.ssrc, framesDecoded: s.framesDecoded || 0, packetsLost: s.packetsLost || 0, frameWidth: s.frameWidth || 0,
          codec: codec ? codec.mimeType : null, participantId: owner });
      });
    }
    return out;
  }

  // End-to-end encrypted text ------------------------------------------------------------------

  // What we send: the text itself, or (encrypted rooms) its ciphertext; the limit is the
  // server's, on what a person wrote.
  async _seal(text, limit) {
    if (!this.e2ee || text == null) return text;
    if (text.trim() && text.length > limit) throw new MediaserverError("message_too_long", `at most ${limit} characters`);
    return this.e2ee.encryptText(text);
  }

  // Decrypt obj[field] in place (encrypted rooms): the plain text, or null with
  // obj.undecryptable set when it is not ours to read; "decrypted" tells the page.
  async _openText(obj, field) {
    if (!this.e2ee || !obj || !isEncryptedText(obj[field])) return;
    const cipher = obj[field];
    obj[field] = "";
    obj.decrypting = true;
    const plain = await this.e2ee.decryptText(cipher);
    obj.decrypting = false;
    obj[field] = plain;
    if (plain === null) obj.undecryptable = true;
    this._emit("decrypted", obj);
  }

  _openAll() {
    for (const m of this.chatMessages) this._openText(m, "text");
    for (const q of this.questions.values()) { this._openText(q, "text"); this._openText(q, "answer"); }
  }

  // Relayed rooms ---------------------------------------------------------------------------

  // An auto room changed how its media goes: close every peer connection, publish the new way
  // (the server's subscribe offers follow when it is routed now).
  async _switchMode(mode) {
    if (mode === this.mediaMode || this._closing) return;
    this._closeConnections();
    if (this._screen) { this._screen.stream.getTracks().forEach((t) => t.stop()); this._screen = null; this._emit("screen", { sharing: false }); }
    this.mediaMode = mode;
    this._emit("media_mode_changed", { mode });
    // Not awaited: the server's subscribe offers (next on this chain) need not wait for our own
    // publication to be answered; the two connections come up side by side.
    if (this._stream) this.publish(this._stream, this._publishOptions).catch((err) => this._emit("error", err));
  }

  // No media worker sees a relayed room's media: tell the server what we receive (loss since the
  // last report, the worst jitter), for our quality log and the operator's dashboard.
  async _reportQuality() {
    if (this._closing || !this.ws || this.ws.readyState !== 1) return;
    let received = 0, lost = 0, jitter = 0, any = false;
    const totals = {};
    for (const [publisher, pc] of this._receiving()) {
      (await pc.getStats()).forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        any = true;
        const key = `${publisher}/${s.ssrc}`, last = (this._lastTotals || {})[key] || { r: 0, l: 0 };
        totals[key] = { r: s.packetsReceived || 0, l: Math.max(s.packetsLost || 0, 0) };
        received += Math.max(totals[key].r - last.r, 0); lost += Math.max(totals[key].l - last.l, 0);
        jitter = Math.max(jitter, (s.jitter || 0) * 1000);
      });
    }
    this._lastTotals = totals;
    if (!any) return;
    const loss = received + lost ? (100 * lost) / (received + lost) : 0;
    await this.request({ type: "quality_report", loss_percent: Math.min(loss, 100), jitter_ms: Math.min(jitter, 60000) });
  }

  _mate(pid) {
    const p = this.participants.get(pid);
    return p && p.state !== "disconnected" && (p.breakout_id || null) === (this.me.breakout_id || null);
  }

  _outTracks() {
    const tracks = this._stream ? [...this._stream.getTracks()] : [];
    if (this._screen) tracks.push(...this._screen.stream.getTracks());
    return tracks;
  }

  // Tell the server what we send (the stage rules apply as when routed), then offer it to
  // every room mate (or renegotiate the links we have).
  async _peerPublish() {
    this._peerNames = this._peerNames || new Map();
    const tracks = this._outTracks();
    tracks.forEach((t) => { if (!this._peerNames.has(t)) this._peerNames.set(t, `${t.kind}${this._peerNames.size}`); });
    // isPublishing from now on, as a routed publish() is from its first line (a page drawing
    // itself meanwhile keeps our own tile); offers only once the server has our tracks.
    this._peerPending = true;
    try {
      await this.request({ type: "peer_publish", tracks: tracks.map((t) => ({ name: this._peerNames.get(t), kind: t.kind })) });
    } finally {
      this._peerPending = false;
    }
    this._peerPublishing = tracks.length > 0;
    for (const p of this.participants.values()) {
      if (p.id !== this.me.id && this._mate(p.id)) this._offerTo(p.id);
    }
  }

  async _peerShareScreen() {
    if (!this._peerPublishing) throw new MediaserverError("not_on_stage", "turn on your camera or microphone (go on stage) first");
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = screen.getVideoTracks()[0];
    this._screen = { stream: screen, transceiver: null };
    track.onended = () => this.stopScreen().catch((err) => this._emit("error", err));
    await this._peerPublish();
    this._emit("screen", { sharing: true, track });
    return track;
  }

  _link(publisher, receiver, create) {
    const key = `${publisher}>${receiver}`;
    let link = this.links.get(key);
    if (!link && create) {
      const pc = new RTCPeerConnection(this._pcConfig());
      link = { key, publisher, receiver, pc, pending: [], answered: null, senders: new Map() };
      const other = publisher === this.me.id ? receiver : publisher;
      pc.onicecandidate = (e) => {
        const c = e.candidate;
        this.request({ type: "signal", to: other, link: publisher, kind: "candidate", candidate: c ? c.candidate : "",
          sdp_mid: c ? c.sdpMid : null, sdp_mline_index: c ? c.sdpMLineIndex : null }).catch(() => {});
      };
      if (receiver === this.me.id) {
        pc.ontrack = (e) => this._received(e, publisher);
      }
      this.links.set(key, link);
      this._watchConnection(pc, "peer");
    }
    return link;
  }

  _closeLinks(which) {
    for (const [key, link] of [...this.links]) {
      if (!which(link)) continue;
      link.pc.close();
      if (link.answered) link.answered.resolve();
      this.links.delete(key);
    }
  }

  // One offer at a time per link (the next waits for the answer to the last, on the link's own
  // chain, not the message chain that will bring the answer): the publisher always offers, so
  // offers never cross.
  _offerTo(pid) {
    if (!this._peerPublishing || this._closing) return;
    const link = this._link(this.me.id, pid, true);
    link.chain = (link.chain || Promise.resolve()).then(() => this._negotiate(link))
      .catch((err) => { if (!this._closing && this.links.get(link.key) === link) this._emit("error", err); });
  }

  async _negotiate(link) {
    if (this.links.get(link.key) !== link) return; // closed meanwhile
    const wanted = this._outTracks();
    for (const [track, sender] of link.senders) {
      if (!wanted.includes(track)) { link.pc.removeTrack(sender); link.senders.delete(track); }
    }
    for (const track of wanted) {
      if (link.senders.has(track)) continue;
      const stream = this._screen && this._screen.stream.getTracks().includes(track) ? this._screen.stream : this._stream;
      const tr = this._addSender(link.pc, track, stream, this._publishOptions || {});
      link.senders.set(track, tr.sender);
    }
    await link.pc.setLocalDescription(await link.pc.createOffer());
    const answered = new Promise((resolve) => { link.answered = { resolve }; });
    await this.request({ type: "signal", to: link.receiver, link: this.me.id, kind: "offer", sdp: link.pc.localDescription.sdp });
    await Promise.race([answered, new Promise((r) => setTimeout(r, 15000))]);
  }

  async _onSignal(msg) {
    const me = this.me.id;
    if (msg.kind === "offer") {
      const link = this._link(msg.from, me, true);
      await link.pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      await this._flush(link);
      await link.pc.setLocalDescription(await link.pc.createAnswer());
      await this.request({ type: "signal", to: msg.from, link: msg.from, kind: "answer", sdp: link.pc.localDescription.sdp });
    } else if (msg.kind === "answer") {
      const link = this._link(me, msg.from, false);
      if (!link) return;
      await link.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      await this._flush(link);
      if (link.answered) { link.answered.resolve(); link.answered = null; }
    } else if (msg.kind === "candidate") {
      const link = msg.link === me ? this._link(me, msg.from, false) : this._link(msg.from, me, false);
      if (!link) return; // (a link closed meanwhile: its candidates are of no use)
      link.pending.push(msg);
      if (link.pc.remoteDescription) await this._flush(link);
    }
  }

  async _flush(link) {
    const pending = link.pending.splice(0);
    for (const c of pending) {
      await link.pc.addIceCandidate(c.candidate ? { candidate: c.candidate, sdpMid: c.sdp_mid, sdpMLineIndex: c.sdp_mline_index } : null)
        .catch(() => {}); // (a candidate of an m-line since removed: harmless)
    }
  }

  async _peersChanged() {
    this._closeLinks((l) => !this._mate(l.publisher === this.me.id ? l.receiver : l.publisher));
    if (!this._peerPublishing) return;
    for (const p of this.participants.values()) {
      if (p.id !== this.me.id && this._mate(p.id) && !this.links.has(`${this.me.id}>${p.id}`)) this._offerTo(p.id);
    }
  }
}
