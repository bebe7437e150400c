// End-to-end encryption of media frames and of chat and Q&A text, in the browser (WebCrypto,
// AES-GCM). The server forwards what it gets and never has the key.
//
// A frame is sent as  [clear header][ciphertext + 16-byte tag][IV: 12][key index: 1][0xE2]
// after SFrame (RFC 9605): a per-frame IV, the key index in the clear, the clear header as
// additional authenticated data. The clear header is what the RTP packetizer and the decoder
// need to see: the VP8 payload header (10 bytes of a keyframe, 3 of a delta frame; RFC 6386
// 9.1) and the Opus TOC byte (RFC 6716 3.1). Video is VP8 when encrypted (H264 would need its
// NAL headers kept clear unit by unit).
//
// Keys: a session key (32 random bytes, base64url, carried only in a link's #key= fragment,
// which browsers never send to a server) or a passphrase (PBKDF2-SHA256, 310,000 iterations,
// salted with the room's ID).

export const MAGIC = 0xe2;
const TRAILER = 12 + 1 + 1;
const TAG = 16;
const TEXT_PREFIX = "e2ee1:";
export const PBKDF2_ITERATIONS = 310000;

const b64url = {
  encode: (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""),
  decode: (text) => Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0)),
};
const b64 = {
  encode: (bytes) => { let s = ""; for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192)); return btoa(s); },
  decode: (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)),
};

export function newSessionKey() {
  return b64url.encode(crypto.getRandomValues(new Uint8Array(32)));
}

export async function keyFromSessionKey(text) {
  const raw = b64url.decode(text);
  if (raw.length !== 32) throw new Error("a session key is 32 bytes (base64url)");
  return crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

export async function keyFromPassphrase(passphrase, roomId) {
  const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(passphrase), "PBKDF2", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "PBKDF2", hash: "SHA-256", salt: new TextEncoder().encode(`mediaserver/${roomId}`), iterations: PBKDF2_ITERATIONS },
    base, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"],
  );
}

function clearBytes(frame, kind) {
  if (kind === "audio") return 1;
  return frame.type === "key" ? 10 : 3;
}

export class FrameCrypto {
  constructor(key, keyIndex = 0) {
    this.key = key;
    this.keyIndex = keyIndex;
  }

  async encrypt(frame, controller, kind) {
    const data = new Uint8Array(frame.data);
    if (!data.length || frame.type === "empty") return controller.enqueue(frame);
    const n = Math.min(clearBytes(frame, kind), data.length);
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = new Uint8Array(await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: data.subarray(0, n) }, this.key, data.subarray(n)));
    const out = new Uint8Array(n + sealed.length + TRAILER);
    out.set(data.subarray(0, n), 0);
    out.set(sealed, n);
    out.set(iv, n + sealed.length);
    out[out.length - 2] = this.keyIndex;
    out[out.length - 1] = MAGIC;
    frame.data = out.buffer;
    controller.enqueue(frame);
  }

  // A frame that does not decrypt (another key, or none) is dropped, never shown as noise.
  async decrypt(frame, controller, kind, failed) {
    const data = new Uint8Array(frame.data);
    if (!data.length || frame.type === "empty") return controller.enqueue(frame);
    const n = Math.min(clearBytes(frame, kind), data.length);
    if (data.length < n + TAG + TRAILER || data[data.length - 1] !== MAGIC) return failed && failed("not encrypted");
    const iv = data.subarray(data.length - TRAILER, data.length - 2);
    try {
      const plain = new Uint8Array(await crypto.subtle.decrypt(
        { name: "AES-GCM", iv, additionalData: data.subarray(0, n) }, this.key, data.subarray(n, data.length - TRAILER)));
      const out = new Uint8Array(n + plain.length);
      out.set(data.subarray(0, n), 0);
      out.set(plain, n);
      frame.data = out.buffer;
      controller.enqueue(frame);
    } catch {
      if (failed) failed("wrong key");
    }
  }

  async encryptText(text) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv }, this.key, new TextEncoder().encode(text)));
    const all = new Uint8Array(12 + sealed.length);
    all.set(iv, 0);
    all.set(sealed, 12);
    return TEXT_PREFIX + b64.encode(all);
  }

  // Plain text, or null when it is not ours to read (another key, or not encrypted).
  async decryptText(text) {
    if (typeof text !== "string" || !text.startsWith(TEXT_PREFIX)) return null;
    try {
      const all = b64.decode(text.slice(TEXT_PREFIX.length));
      const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: all.subarray(0, 12) }, this.key, all.subarray(12));
      return new TextDecoder().decode(plain);
    } catch {
      return null;
    }
  }
}

export const isEncryptedText = (text) => typeof text === "string" && text.startsWith(TEXT_PREFIX);

// Attach the frame transforms to a sender or receiver: RTCRtpScriptTransform where the browser
// has it (the standard, in a worker), else Chrome's older encoded streams (the peer connection
// must have been made with encodedInsertableStreams: true).
export const useEncodedStreams = typeof RTCRtpScriptTransform === "undefined"
  && typeof RTCRtpSender !== "undefined" && "createEncodedStreams" in RTCRtpSender.prototype;
let worker = null;

export function attach(endpoint, side, kind, fc, onFailed) {
  if (useEncodedStreams) {
    const { readable, writable } = endpoint.createEncodedStreams();
    const transform = side === "send" ? (f, c) => fc.encrypt(f, c, kind) : (f, c) => fc.decrypt(f, c, kind, onFailed);
    readable.pipeThrough(new TransformStream({ transform })).pipeTo(writable).catch(() => {});
    return;
  }
  if (typeof RTCRtpScriptTransform === "undefined") throw new Error("this browser cannot encrypt media end to end");
  if (!worker) {
    worker = new Worker(new URL("./e2ee-worker.js", import.meta.url), { type: "module" });
    worker.onmessage = (e) => { if (e.data && e.data.failed && worker.failed[e.data.failed]) worker.failed[e.data.failed](e.data.reason); };
    worker.failed = {};
  }
  const id = `${side}-${Math.random().toString(36).slice(2)}`;
  if (onFailed) worker.failed[id] = onFailed;
  endpoint.transform = new RTCRtpScriptTransform(worker, { side, kind, id, key: fc.key, keyIndex: fc.keyIndex });
}
