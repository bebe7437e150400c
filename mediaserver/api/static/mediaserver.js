// mediaserver.js: a small browser client for mediaserver's /v1/ws protocol. No build step:
//   import { Room } from "/static/mediaserver.js";
//   const room = new Room({ token, roomId });
//   room.addEventListener("track", (e) => attach(e.detail.track, e.detail.participantId));
//   await room.connect();
//   await room.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
//
// Media model: a "publish" peer connection where we offer our tracks and the server answers, and a
// "subscribe" peer connection where the server offers the tracks we receive and we answer.
// If the connection drops, the room reconnects by itself inside the session's grace period (as the
// same participant) and publishes again; events "reconnecting" and "reconnected" tell the page.

const PC_CONFIG = { iceServers: [], bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" };

export class MediaserverError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

export class Room extends EventTarget {
  constructor({ token, roomId, url } = {}) {
    super();
    this.token = token;
    this.roomId = roomId;
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
    this.participants = new Map();
    this.tracks = new Map(); // track id -> {id, participant_id, kind, muted}
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
        if (!joined) return reject(new MediaserverError("closed", e.reason || "connection closed"));
        // 1000 left, 4001 refused, 4002 session ended, 4003 removed or replaced: nothing to come back to.
        if (this._closing || [1000, 4001, 4002, 4003].includes(e.code)) return this._emit("closed", { code: e.code, reason: e.reason });
        this._reconnect();
      };
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === "joined") {
          joined = true;
          this.me = msg.participant; this.session = msg.session; this.roomInfo = msg.room;
          this._reconnectToken = msg.reconnect_token; this._grace = msg.grace_seconds;
          this.participants.clear(); msg.participants.forEach((p) => this.participants.set(p.id, p));
          this.tracks.clear(); msg.tracks.forEach((t) => this.tracks.set(t.id, t));
          this._emit(msg.resumed ? "reconnected" : "joined", msg);
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

  async _resetMedia() {
    for (const pc of [this.publishPc, this.subscribePc]) if (pc) pc.close();
    this.publishPc = this.subscribePc = null;
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
    if (msg.type === "offer" && msg.pc === "subscribe") {
      this._signals = this._signals.then(() => this._answer(msg.sdp)).catch((err) => this._emit("error", err));
    } else if (msg.type === "media_reset") {
      this._signals = this._signals.then(() => this._resetMedia()).catch((err) => this._emit("error", err));
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
    else if (msg.event === "track_published") this.tracks.set(d.track_id, { id: d.track_id, participant_id: msg.participant_id, kind: d.kind, muted: false });
    else if (msg.event === "track_unpublished") this.tracks.delete(d.track_id);
    else if ((msg.event === "muted" || msg.event === "unmuted") && this.tracks.has(d.track_id)) this.tracks.get(d.track_id).muted = msg.event === "muted";
    this._emit("event", msg);
    this._emit(msg.event, msg);
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
    if (!this.publishPc) this.publishPc = new RTCPeerConnection(PC_CONFIG);
    for (const track of stream.getTracks()) {
      const transceiver = this.publishPc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      if (track.kind === "video" && options.videoCodec && transceiver.setCodecPreferences) {
        const wanted = RTCRtpSender.getCapabilities("video").codecs.filter((c) => c.mimeType.toLowerCase() === `video/${options.videoCodec.toLowerCase()}`);
        if (!wanted.length) throw new MediaserverError("unsupported_codec", `this browser cannot send ${options.videoCodec}`);
        transceiver.setCodecPreferences(wanted);
      }
    }
    await this.publishPc.setLocalDescription(await this.publishPc.createOffer());
    const reply = await this.request({ type: "offer", pc: "publish", sdp: this.publishPc.localDescription.sdp });
    await this.publishPc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  }

  async _answer(sdp) {
    if (!this.subscribePc) {
      this.subscribePc = new RTCPeerConnection(PC_CONFIG);
      this.subscribePc.ontrack = (e) => {
        const [stream] = e.streams;
        this._emit("track", { track: e.track, stream, participantId: stream ? stream.id : null });
      };
    }
    await this.subscribePc.setRemoteDescription({ type: "offer", sdp });
    await this.subscribePc.setLocalDescription(await this.subscribePc.createAnswer());
    await this.request({ type: "answer", pc: "subscribe", sdp: this.subscribePc.localDescription.sdp });
  }

  setSubscribed(trackId, subscribed) { return this.request({ type: "subscribe", track_id: trackId, subscribed }); }
  setMuted(trackId, muted) { return this.request({ type: "mute", track_id: trackId, muted }); }
  setRole(participantId, role) { return this.request({ type: "set_role", participant_id: participantId, role }); }
  endSession() { return this.request({ type: "end_session" }); }

  async leave() {
    try { await this.request({ type: "leave" }); } finally { this.close(); }
  }

  close() {
    this._closing = true;
    for (const pc of [this.publishPc, this.subscribePc]) if (pc) pc.close();
    if (this.ws && this.ws.readyState <= 1) this.ws.close();
  }

  // Decoded video frames per remote track (from getStats), e.g. for a quality indicator or a test.
  async receivedVideo() {
    if (!this.subscribePc) return [];
    const stats = await this.subscribePc.getStats();
    const out = [];
    stats.forEach((s) => {
      if (s.type !== "inbound-rtp" || s.kind !== "video") return;
      const codec = s.codecId && stats.get(s.codecId);
      out.push({ ssrc: s.ssrc, framesDecoded: s.framesDecoded || 0, packetsLost: s.packetsLost || 0, codec: codec ? codec.mimeType : null });
    });
    return out;
  }
}
