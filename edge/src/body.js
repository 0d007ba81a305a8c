// @ts-check
/**
 * The request body: read whole (a failover sends it again) up to MAX_BODY_BYTES, and what the
 * router needs of it, the model and whether a stream is asked for. A compressed body is
 * decoded for that only, as the gateway does (gateway/http/encoding.py): the region gets the
 * bytes and the Content-Encoding the client sent.
 */

// Compressed input is fed to the decoder this much at a time, and the next slice only once
// the output of this one is read and counted. Deflate data unpacks to at most about 1032
// times its size: what one write makes is at most about 4 MB (MAX_BODY_BYTES's default), so
// a bomb costs the isolate that much, a slice or two in, whatever its size.
const SLICE_BYTES = 4 * 1024;
// The decoder's output is read this much at a time, into one buffer that is used again.
const READ_BYTES = 64 * 1024;
// The places a gzip member could start (1f 8b 08) that a body's writes are cut at, at most:
// honest bodies hold one per member (and, by chance, one per 16 MB of deflate data or so).
const MAX_MEMBER_STARTS = 64;
// Content codings the Worker undoes (DecompressionStream's names): those the gateway reads, one
// at a time (gateway/http/encoding.py). Any other (br, zstd, gzip's old name x-gzip) or more
// than one leaves the model unread: routed on location, and the gateway answers 415.
/** @typedef {"gzip" | "deflate" | "deflate-raw"} Format  DecompressionStream's */
/** @type {Record<string, Format>} */
const FORMATS = { gzip: "gzip", deflate: "deflate" };

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

const IDLE = Symbol("idle");

/**
 * A decoder fed in lockstep. workerd's DecompressionStream does not hold writes back: a write
 * settles at once and the decoder keeps all it made of it, so input written ahead of the reads
 * is decoded whole, a bomb included, before a read can count it. Here each write's output is
 * read before the next write: after a write, reads are taken while they answer before a
 * zero-delay timer does (workerd's event loop fires timers only once nothing else is ready to
 * run, so a read that loses has nothing to return yet). The read in flight is kept for the
 * next write's output: no byte is lost or moved, whichever wins.
 */
class Decoder {
  /** @param {Format} format */
  constructor(format) {
    const stream = new DecompressionStream(format);
    this.writer = stream.writable.getWriter();
    this.reader = stream.readable.getReader({ mode: "byob" });
    this.buffer = new ArrayBuffer(READ_BYTES);
    /** @type {Promise<ReadableStreamReadResult<Uint8Array>> | null} the read in flight */
    this.reading = null;
    /** @type {Uint8Array[]} */
    this.chunks = [];
    this.size = 0;
  }

  /**
   * Feed `bytes` (null: the end of the input) and read all the output it gives; false once
   * that is more than `limit` bytes in all. Throws what the decoder says of bad input.
   * @param {Uint8Array | null} bytes @param {number} limit
   */
  async put(bytes, limit) {
    await (bytes ? this.writer.write(bytes) : this.writer.close());
    for (;;) {
      this.reading ??= this.reader.read(new Uint8Array(this.buffer));
      // After the end every read answers: the rest of the output, then done.
      const got = bytes ? await Promise.race([this.reading, idle()]) : await this.reading;
      if (got === IDLE) return true;
      this.reading = null;
      if (got.done) return true;
      this.buffer = /** @type {ArrayBuffer} */ (got.value.buffer);
      this.size += got.value.byteLength;
      if (this.size > limit) return false;
      this.chunks.push(got.value.slice());
    }
  }

  /** Drop the decoder and what it holds (nothing happens to one that ended). */
  async stop() {
    await this.reader.cancel().catch(() => {});
    await this.writer.abort().catch(() => {});
  }
}

/** @returns {Promise<typeof IDLE>} */
function idle() {
  return new Promise((resolve) => setTimeout(resolve, 0, IDLE));
}

/**
 * Where a gzip member could start after the first (its magic and method, 1f 8b 08), at most
 * MAX_MEMBER_STARTS of them.
 * @param {Uint8Array} data
 */
function memberStarts(data) {
  const starts = [];
  for (let i = data.indexOf(0x1f, 1); i >= 0 && starts.length < MAX_MEMBER_STARTS; ) {
    if (data[i + 1] === 0x8b && data[i + 2] === 8) starts.push(i);
    i = data.indexOf(0x1f, i + 1);
  }
  return starts;
}

/**
 * One gzip member (or zlib or raw deflate stream) from `data[from]` on, decoded to at most
 * `limit` bytes, and where it ends: the end of `data`, or a member start (`starts`) that the
 * decoder refuses to go past and that the bytes before it end a member there (gzip's trailer
 * ends with the member's decoded size, mod 2^32). workerd's DecompressionStream takes one
 * member only and fails the write that carries bytes after it (strict_compression_checks, on
 * from compatibility date 2023-08-01), dropping what it had not handed over yet: the writes
 * are cut at each possible start for that.
 * @param {Uint8Array} data @param {number} from @param {Format} format @param {number} limit
 * @param {number[]} starts
 * @returns {Promise<{chunks: Uint8Array[], size: number, end: number} | "too large" | null>}
 */
async function inflateMember(data, from, format, limit, starts) {
  const decoder = new Decoder(format);
  let at = from;
  try {
    while (at < data.byteLength) {
      const cut = starts.find((s) => s > at) ?? data.byteLength;
      const next = Math.min(at + SLICE_BYTES, cut, data.byteLength);
      try {
        if (!(await decoder.put(data.subarray(at, next), limit))) return "too large";
      } catch (err) {
        const { chunks, size } = decoder;
        const ended = at > from && starts.includes(at) && sizeBefore(data, at) === size % 2 ** 32;
        if (ended) return { chunks, size, end: at };
        throw err;
      }
      at = next;
    }
    if (!(await decoder.put(null, limit))) return "too large";
    return { chunks: decoder.chunks, size: decoder.size, end: at };
  } catch {
    return null;
  } finally {
    await decoder.stop();
  }
}

/**
 * The little-endian 32-bit number just before `at` (a gzip trailer's last field, ISIZE).
 * @param {Uint8Array} data @param {number} at
 */
function sizeBefore(data, at) {
  if (at < 4) return -1;
  return new DataView(data.buffer, data.byteOffset + at - 4, 4).getUint32(0, true);
}

/**
 * `data` decoded from `format`, at most `limit` bytes of it; null when it is not valid data.
 * A gzip body may hold several members, one after another, as the gateway reads it.
 * @param {Uint8Array} data @param {Format} format @param {number} limit
 * @returns {Promise<Uint8Array | "too large" | null>}
 */
async function inflate(data, format, limit) {
  const starts = format === "gzip" ? memberStarts(data) : [];
  const chunks = [];
  let size = 0;
  let from = 0;
  do {
    const member = await inflateMember(data, from, format, limit - size, starts);
    if (member === null || member === "too large") return member;
    for (const c of member.chunks) chunks.push(c);
    size += member.size;
    from = member.end;
  } while (from < data.byteLength);
  return joined(chunks, size);
}

/**
 * The body with its content coding undone; null when the header names one the gateway
 * refuses (not gzip, deflate or identity, or more than one) or the data is not what it says.
 * @param {ArrayBuffer} body @param {string} header  Content-Encoding
 * @param {number} limit
 * @returns {Promise<Uint8Array | "too large" | null>}
 */
export async function decoded(body, header, limit) {
  const codings = header
    .split(",")
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c);
  if (codings.length > 1) return null; // "gzip, deflate", or two header lines: the gateway's 415
  const coding = codings[0] ?? "identity";
  const input = new Uint8Array(body);
  if (coding === "identity") return input;
  if (!Object.hasOwn(FORMATS, coding)) return null;
  const data = await inflate(input, FORMATS[coding], limit);
  // "deflate" is the zlib format, but some clients send raw deflate: tried as the gateway
  // tries it, so both read the same bodies.
  if (data === null && coding === "deflate") return inflate(input, "deflate-raw", limit);
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
  const type = request.headers.get("content-type") ?? "";
  if (FORM_TYPE.test(type)) return formFacts(data, type);
  try {
    const doc = JSON.parse(new TextDecoder().decode(data));
    const model = typeof doc?.model === "string" && doc.model ? doc.model : null;
    return { model, stream: doc?.stream === true };
  } catch {
    return none;
  }
}

// An upload (audio transcriptions and translations, image edits) is a multipart form: its
// parameters are fields beside the file, read here as the gateway reads them
// (gateway/http/body_form.py). A form the Worker cannot read names no model, as a body that
// is not JSON: routed on location, and the gateway answers it in its own words.
// As the gateway's is_form: the media type, then a parameter or nothing ("-x" is another).
const FORM_TYPE = /^\s*multipart\/form-data\s*(;|$)/i;
// The strings FastAPI's forms (pydantic) read as true, as the gateway does; the SDK sends "true".
const TRUE = new Set(["1", "on", "t", "true", "y", "yes"]);

/**
 * @param {Uint8Array} data @param {string} type the request's Content-Type, with its boundary
 * @returns {Promise<{model: string | null, stream: boolean}>}
 */
async function formFacts(data, type) {
  try {
    const form = await new Response(data, { headers: { "content-type": type } }).formData();
    const model = form.get("model");
    const stream = form.get("stream");
    return {
      model: typeof model === "string" && model ? model : null,
      stream: typeof stream === "string" && TRUE.has(stream.trim().toLowerCase()),
    };
  } catch {
    return { model: null, stream: false };
  }
}
