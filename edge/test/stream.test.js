// A gateway's body through the Worker (src/stream.js): an event stream whole events at a time,
// and one whose gateway died mid-body ends with an error event, never as if it were complete
// (workerd ends the client's chunked response cleanly whatever the relayed stream did).
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { cutEvent, eventEnd, guardedBody, HOLD_MAX_BYTES } from "../src/stream.js";
import { CITIES, fakeGateway, startWorker } from "./support/harness.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const SSE = { "content-type": "text/event-stream" };
const STREAM = JSON.stringify({ model: "m", stream: true, messages: [] });

/** A body that yields `parts`, then ends, or fails with `err`. */
function source(parts, err = null) {
  let i = 0;
  return new ReadableStream({
    pull(c) {
      if (i < parts.length) c.enqueue(enc.encode(parts[i++]));
      else if (err) c.error(err);
      else c.close();
    },
  });
}

/** Each piece the guarded stream gives, as text; `failed`: the error it ended with, if any. */
async function pieces(stream) {
  const out = [];
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { out, failed: null };
      out.push(dec.decode(value));
    }
  } catch (err) {
    return { out, failed: err };
  }
}

describe("eventEnd", () => {
  test("finds the last blank line, in each of the three line ends", () => {
    assert.equal(eventEnd(enc.encode("data: a\n\ndata: b")), 9);
    assert.equal(eventEnd(enc.encode("data: a\r\n\r\n")), 11);
    assert.equal(eventEnd(enc.encode("data: a\r\rdata")), 9);
    assert.equal(eventEnd(enc.encode("data: a\ndata: b\n")), 0);
    assert.equal(eventEnd(enc.encode("")), 0);
  });
});

describe("guardedBody", () => {
  test("an event stream goes whole events at a time, and all of it at the end", async () => {
    const parts = ['data: {"i":0}\n\ndata: {"i', '":1}\n', "\ndata: [DONE]\n\n", "tail"];
    const { out, failed } = await pieces(guardedBody(source(parts), "g"));
    assert.equal(failed, null);
    // The second event's end comes with the third: they go together.
    assert.deepEqual(out, ['data: {"i":0}\n\n', 'data: {"i":1}\n\ndata: [DONE]\n\n', "tail"]);
  });

  test("a cut event stream drops its half event and ends with the gateway's error", async () => {
    const parts = ['data: {"i":0}\n\n', 'data: {"i":1'];
    const cut = new Error("Network connection lost.");
    const guarded = guardedBody(source(parts, cut), "region eu's gateway");
    const { out, failed } = await pieces(guarded);
    assert.equal(failed, null);
    assert.equal(out[0], 'data: {"i":0}\n\n');
    assert.equal(out.length, 2);
    const event = JSON.parse(out[1].replace(/^data: /, ""));
    assert.equal(event.error.code, "upstream_stream_interrupted");
    assert.equal(event.error.type, "upstream_error");
    assert.match(event.error.message, /region eu's gateway was cut before its end/);
    assert.ok(out[1].endsWith("\n\n"));
  });

  test("events that never end still stream past the hold's bound", async () => {
    const big = "x".repeat(HOLD_MAX_BYTES);
    const { out } = await pieces(guardedBody(source([big, "y"]), "g"));
    assert.deepEqual(out, [big + "y"]);
  });

  test("no body is no body", () => {
    assert.equal(guardedBody(null, "g"), null);
  });

  test("a client that leaves cancels the gateway's body", async () => {
    let cancelled = null;
    const body = new ReadableStream({
      pull(c) {
        c.enqueue(enc.encode("data: a\n\n"));
      },
      cancel(reason) {
        cancelled = reason;
      },
    });
    const reader = guardedBody(body, "g").getReader();
    await reader.read();
    await reader.cancel("gone");
    assert.equal(cancelled, "gone");
  });

  test("a client that leaves mid-read is no cut: nothing logged", async (t) => {
    // workerd fails the read in flight when the body is cancelled ("Stream was cancelled."),
    // which was logged as the gateway's stream cut. A body of that kind: its read waits, and
    // the cancel fails it.
    /** @type {((err: Error) => void) | null} */
    let fail = null;
    const body = {
      getReader: () => ({
        read: () => new Promise((_, reject) => (fail = reject)),
        cancel: async () => fail?.(new Error("Stream was cancelled.")),
      }),
    };
    const warn = t.mock.method(console, "warn", () => {});
    const reader = guardedBody(/** @type {any} */ (body), "g").getReader();
    const pending = reader.read();
    const turn = () => new Promise((r) => setImmediate(r)); // every microtask before it has run
    for (let i = 0; i < 1000 && fail === null; i++) await turn(); // until the pull reads
    assert.ok(fail, "the pull never read its source");
    await reader.cancel("gone");
    assert.deepEqual(await pending, { done: true, value: undefined });
    await turn(); // the failed read's handler is microtasks only: it has run by now
    assert.equal(warn.mock.callCount(), 0);
  });

  test("the error event is the gateway's own shape", () => {
    const text = dec.decode(cutEvent("m"));
    assert.deepEqual(JSON.parse(text.slice("data: ".length)), {
      error: {
        message: "m",
        type: "upstream_error",
        param: null,
        code: "upstream_stream_interrupted",
      },
    });
  });
});

describe("in workerd", () => {
  const started = [];
  after(async () => {
    await Promise.all(started.map((x) => ("dispose" in x ? x.dispose() : x.close())));
  });

  async function through(answer) {
    const g = await fakeGateway(answer);
    started.push(g);
    const region = {
      id: "eu-central",
      latitude: 50.11,
      longitude: 8.68,
      url: g.url,
      upstreams: [{ id: "eu-1", models: ["m"] }],
    };
    const mf = await startWorker({ FALLBACK_TABLE: { regions: [region] }, ROUTING_TABLE_URLS: [] });
    started.push(mf);
    return mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: STREAM,
      headers: { "content-type": "application/json", "cf-connecting-ip": "192.0.2.10" },
      cf: CITIES.London,
    });
  }

  test("a gateway that dies mid-event: the client's stream ends with the error event", async () => {
    const parts = ['data: {"i":0}\n\n', 'data: {"i":1'];
    const resp = await through(() => ({ status: 200, headers: SSE, parts, cut: true }));
    assert.equal(resp.status, 200);
    const text = await resp.text();
    const events = text.split("\n\n").filter(Boolean);
    assert.equal(events.length, 2, text);
    assert.equal(events[0], 'data: {"i":0}');
    assert.equal(JSON.parse(events[1].slice(6)).error.code, "upstream_stream_interrupted");
    assert.ok(!text.includes('{"i":1'), text);
  });

  test("a whole stream reaches the client as the gateway sent it", async () => {
    const parts = ['data: {"i":0}\n\ndata: {"i', '":1}\n\n', "data: [DONE]\n\n"];
    const resp = await through(() => ({ status: 200, headers: SSE, parts }));
    assert.equal(await resp.text(), parts.join(""));
  });
});
