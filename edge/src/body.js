// @ts-check
/**
 * The request body: read whole (a failover sends it again) up to MAX_BODY_BYTES, and what the
 * router needs of it, the model and whether a stream is asked for. A compressed body is
 * decoded for that only, as the gateway does (gateway/http/encoding.py): the region gets the
 * bytes and the Content-Encoding the client sent.
 */

// Compressed input is fed to the decoder this much at a time, so the output of one write,
// which the decoder hands over whole, stays small next to the limit it is counted against.
const SLICE_BYTES = 16 * 1024;
// Content codings the Worker can undo (DecompressionStream's names); "x-gzip" is gzip
// (RFC 9110 §8.4.1.3). Any other (br, zstd) leaves the model unread: the gateway answers 415.
/** @typedef {"gzip" | "deflate" | "deflate-raw"} Format  DecompressionStream's */
/** @type {Record<string, Format>} */
const FORMATS = { gzip: "gzip", "x-gzip": "gzip", deflate: "deflate" };

/** @param {Uint8Array[]} chunks @param {number} size */
function joined(chunks, size) {
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/**
 * All of `stream`, or "too large" past `limit` bytes (the rest is not read).
 * @param {ReadableStream<Uint8Array>} stream @param {number} limit
 * @returns {Promise<Uint8Array | "too large">}
 */
async function readAll(stream, limit) {
  const chunks = [];
  let size = 0;
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      return "too large";
    }
    chunks.push(value);
  }
  return joined(chunks, size);
}

/**
 * The body, up to `limit` bytes.
 * @param {Request} request @param {number} limit
 * @returns {Promise<ArrayBuffer | "too large">}
 */
export async function readBody(request, limit) {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > limit) return "too large";
  if (request.body === null) return new ArrayBuffer(0);
  const body = await readAll(request.body, limit);
  return body === "too large" ? body : /** @type {ArrayBuffer} */ (body.buffer);
}

/**
 * `data` decoded from `format`, at most `limit` bytes of it; null when it is not valid data.
 * @param {Uint8Array} data @param {Format} format @param {number} limit
 * @returns {Promise<Uint8Array | "too large" | null>}
 */
async function inflate(data, format, limit) {
  const decoder = new DecompressionStream(format);
  const writer = decoder.writable.getWriter();
  // Written while the output is read (a write waits for its output to be taken); a failed
  // write is the read's failure too, and a cancelled read ends the writes.
  const feeding = (async () => {
    for (let at = 0; at < data.byteLength; at += SLICE_BYTES) {
      await writer.write(data.subarray(at, at + SLICE_BYTES));
    }
    await writer.close();
  })().catch(() => {});
  try {
    return await readAll(decoder.readable, limit);
  } catch {
    return null;
  } finally {
    await feeding;
  }
}

/**
 * The body with its content codings undone (the last applied first); null when a coding is
 * one the Worker cannot undo or the data is not what its header says.
 * @param {ArrayBuffer} body @param {string} header  Content-Encoding
 * @param {number} limit
 * @returns {Promise<Uint8Array | "too large" | null>}
 */
async function decoded(body, header, limit) {
  const codings = header
    .split(",")
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c && c !== "identity");
  /** @type {Uint8Array | "too large" | null} */
  let data = new Uint8Array(body);
  for (const coding of codings.reverse()) {
    if (!Object.hasOwn(FORMATS, coding)) return null;
    const input = data;
    data = await inflate(input, FORMATS[coding], limit);
    // "deflate" is the zlib format, but some clients send raw deflate: tried as the gateway
    // tries it, so both read the same bodies.
    if (data === null && coding === "deflate") data = await inflate(input, "deflate-raw", limit);
    if (data === null || data === "too large") return data;
  }
  return data;
}

/**
 * The model the body names and whether it asks for a stream. A body the Worker cannot read
 * (not JSON, a coding it cannot undo, not valid for its coding) names none: the request is
 * routed on location alone, and the gateway answers it in its own words. "too large": it
 * decodes to more than `limit` bytes, which the gateway refuses (413) as well.
 * @param {Request} request @param {ArrayBuffer | null} body @param {number} limit
 * @returns {Promise<{model: string | null, stream: boolean} | "too large">}
 */
export async function bodyFacts(request, body, limit) {
  const none = { model: null, stream: false };
  if (body === null || body.byteLength === 0) return none;
  const coding = request.headers.get("content-encoding") ?? "";
  const data = coding ? await decoded(body, coding, limit) : new Uint8Array(body);
  if (data === null || data === "too large") return data ?? none;
  try {
    const doc = JSON.parse(new TextDecoder().decode(data));
    const model = typeof doc?.model === "string" && doc.model ? doc.model : null;
    return { model, stream: doc?.stream === true };
  } catch {
    return none;
  }
}
