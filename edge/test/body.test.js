// How the Worker decodes a compressed body (src/body.js), in workerd, whose DecompressionStream
// takes a write at once and keeps all it decodes of it, and takes one gzip member only: the
// bytes come out whole and in order, a bomb is stopped a slice in, and a gzip body of several
// members reads as the gateway reads it (gateway/http/encoding.py).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { deflateRawSync, deflateSync, gzipSync } from "node:zlib";
import { startHarness } from "./support/harness.js";

const SLICE = 4 * 1024; // src/body.js's SLICE_BYTES

let mf;
before(async () => {
  mf = await startHarness("body-worker.js");
});
after(async () => {
  await mf?.dispose();
});

/** What the Worker makes of `body` sent with `coding`: "decoded" (and the bytes), "null", or
 * "too large"; and how much input its decoders were given. */
async function decode(body, coding, limit = 8 << 20) {
  const resp = await mf.dispatchFetch(`http://body/?limit=${limit}`, {
    method: "POST",
    body,
    headers: { "content-encoding": coding },
  });
  const bytes = Buffer.from(await resp.arrayBuffer());
  const fed = Number(resp.headers.get("geogate-fed"));
  return { result: resp.headers.get("geogate-result"), bytes, fed };
}

// About 3 MB that compresses some 5 to 1: many slices, each read in several reads.
const TEXT = Buffer.from(
  JSON.stringify({
    model: "m",
    messages: Array.from({ length: 40_000 }, (_, i) => ({
      role: "user",
      content: `${i} ${((i * 2654435761) >>> 0).toString(36)}`,
    })),
  }),
);

describe("decoding", () => {
  for (const [coding, encode, what] of [
    ["gzip", gzipSync, "gzip"],
    ["deflate", deflateSync, "zlib"],
    ["deflate", deflateRawSync, "raw deflate"],
  ]) {
    test(`${coding} (${what}): every byte, in order`, async () => {
      const body = encode(TEXT);
      assert.ok(body.length > 8 * SLICE, "many slices");
      const { result, bytes } = await decode(body, coding);
      assert.equal(result, "decoded");
      assert.ok(bytes.equals(TEXT));
    });
  }

  test("what the gateway refuses (415) is not decoded: more than one coding, x-gzip", async () => {
    const small = Buffer.from('{"model": "m"}');
    for (const [coding, body] of [
      ["gzip, deflate", deflateSync(gzipSync(small))],
      ["gzip, identity", gzipSync(small)],
      ["x-gzip", gzipSync(small)],
    ]) {
      assert.equal((await decode(body, coding)).result, "null", coding);
    }
    const { result, bytes } = await decode(small, "identity");
    assert.equal(result, "decoded");
    assert.ok(bytes.equals(small));
  });

  test("a bomb is stopped a few slices into its input", async () => {
    const bomb = gzipSync(Buffer.alloc(256 << 20)); // about 260 KB
    const { result, fed } = await decode(bomb, "gzip", 4 << 20);
    assert.equal(result, "too large");
    // Fed ahead of the reads (the old way), all of it was decoded before the limit could stop it.
    assert.ok(fed <= 4 * SLICE, `${fed} of ${bomb.length} bytes fed`);
  });

  test("the limit counts every member of a gzip body", async () => {
    const body = Buffer.concat([gzipSync(Buffer.alloc(3000)), gzipSync(Buffer.alloc(3000))]);
    assert.equal((await decode(body, "gzip", 6000)).result, "decoded");
    assert.equal((await decode(body, "gzip", 5999)).result, "too large");
  });
});

describe("a gzip body of several members", () => {
  test("reads as every member's bytes, one after another", async () => {
    // A big one (many slices), a one-byte one, an empty one, and the rest.
    const cuts = [0, 1_000_000, 1_000_001, 1_000_001, TEXT.length];
    const parts = cuts.slice(1).map((end, i) => TEXT.subarray(cuts[i], end));
    const body = Buffer.concat(parts.map((p) => gzipSync(p)));
    const { result, bytes } = await decode(body, "gzip");
    assert.equal(result, "decoded");
    assert.ok(bytes.equals(TEXT));
  });

  test("a member's magic inside another's data is no member start", async () => {
    // Stored (level 0), the data keeps its 1f 8b 08s: the writes are cut there for nothing.
    const magic = (n) => Buffer.alloc(4 * n, Buffer.from([0x1f, 0x8b, 0x08, 0x41]));
    const first = Buffer.concat([magic(60), Buffer.from("{")]);
    const body = Buffer.concat([gzipSync(first, { level: 0 }), gzipSync("}")]);
    const { result, bytes } = await decode(body, "gzip");
    assert.equal(result, "decoded");
    assert.ok(bytes.equals(Buffer.concat([first, Buffer.from("}")])));
    // Past 64 of them (honest data has one in some 16 MB), a member's end is not looked for:
    // the body is not read (the request is routed on location alone).
    const many = Buffer.concat([gzipSync(magic(70), { level: 0 }), gzipSync("}")]);
    assert.equal((await decode(many, "gzip")).result, "null");
    assert.equal((await decode(gzipSync(magic(70), { level: 0 }), "gzip")).result, "decoded");
  });

  test("bytes after a member that are no member: not valid gzip, as the gateway says", async () => {
    const member = gzipSync(TEXT.subarray(0, 100));
    for (const tail of [
      Buffer.from("junk"),
      Buffer.from([0x1f, 0x8b, 0x08, 0, 0, 0]), // a member's start, cut short
      Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08]), member.subarray(3, 30)]),
    ]) {
      const { result } = await decode(Buffer.concat([member, tail]), "gzip");
      assert.equal(result, "null", tail.toString("hex"));
    }
    // zlib data has one stream: bytes after it are not read as another.
    const twice = Buffer.concat([deflateSync("{}"), deflateSync("{}")]);
    assert.equal((await decode(twice, "deflate")).result, "null");
  });
});
