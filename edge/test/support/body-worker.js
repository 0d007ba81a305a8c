// A test-only Worker: the Worker's body decoding (src/body.js) inside workerd, where its
// DecompressionStream is workerd's, on the bodies the tests send. It answers with the decoded
// bytes, and says how much compressed input the decoders were given (geogate-fed).
import { decoded } from "../../src/body.js";

let fed = 0;
const write = WritableStreamDefaultWriter.prototype.write;
WritableStreamDefaultWriter.prototype.write = function (chunk) {
  fed += chunk?.byteLength ?? 0;
  return write.call(this, chunk);
};

export default {
  async fetch(request) {
    const limit = Number(new URL(request.url).searchParams.get("limit"));
    const body = await request.arrayBuffer();
    fed = 0;
    const out = await decoded(body, request.headers.get("content-encoding") ?? "", limit);
    const result = out === null ? "null" : out === "too large" ? out : "decoded";
    const headers = { "geogate-result": result, "geogate-fed": String(fed) };
    return new Response(out instanceof Uint8Array ? out : null, { headers });
  },
};
