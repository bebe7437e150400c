// The RTCRtpScriptTransform side of e2ee.js: frames are encrypted and decrypted here, off the
// page's main thread, with the key the page passed in the transform's options.
import { FrameCrypto } from "./e2ee.js";

self.onrtctransform = (event) => {
  const { side, kind, id, key, keyIndex } = event.transformer.options;
  const fc = new FrameCrypto(key, keyIndex);
  const failed = (reason) => self.postMessage({ failed: id, reason });
  const transform = side === "send" ? (f, c) => fc.encrypt(f, c, kind) : (f, c) => fc.decrypt(f, c, kind, failed);
  event.transformer.readable.pipeThrough(new TransformStream({ transform })).pipeTo(event.transformer.writable).catch(() => {});
};
