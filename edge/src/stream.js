// @ts-check
/**
 * A gateway's response body on its way to the client: passed on as it comes, except where the
 * gateway's connection breaks before the body's end.
 *
 * Why: workerd ends the client's response cleanly (the chunked body's last chunk) when the
 * stream it relays fails, whether the Worker hands it the gateway's body as it is, pipes it,
 * or errors a stream of its own (workerd issue #6818; seen with Miniflare 4.20260426). A
 * gateway that died mid-stream then gave the client a response that looked complete: an
 * event stream with neither its `[DONE]` nor an error, which the OpenAI SDKs read as a short
 * answer. The gateway itself never does that (gateway/http/upstream.py `_abort`): an event
 * stream gets a last error event, which the SDKs raise as an APIError, and any other body a
 * reset. This does the same where the Worker can: an event stream is passed on whole events
 * at a time (bytes after the last blank line wait for the rest of their event, as
 * gateway/http/events.py's framer, so that the error event is not glued to half an event;
 * past HOLD_MAX_BYTES of one event it goes as it is, and a cut then glues, as the gateway's
 * own framer does: a broken event either way), and a cut drops what waits and ends with the
 * error event. The Worker relays only event streams through here (index.js): another body is
 * workerd's own pipe.
 */

// Past this much waiting for an event's end everything goes (an upstream whose events never
// end with a blank line still streams): gateway/http/events.py's HOLD_MAX_BYTES.
export const HOLD_MAX_BYTES = 64 * 1024;
const LF = 10;
const CR = 13;

/**
 * Where the last complete event of `data` ends (after its blank line: LF LF, CRLF CRLF's last
 * three bytes, CR CR); 0: none does.
 * @param {Uint8Array} data
 */
export function eventEnd(data) {
  for (let i = data.length - 1; i >= 1; i--) {
    const c = data[i];
    const b = data[i - 1];
    if ((c === LF && b === LF) || (c === CR && b === CR)) return i + 1;
    if (c === LF && b === CR && i >= 2 && data[i - 2] === LF) return i + 1;
  }
  return 0;
}

/** @param {Uint8Array} a @param {Uint8Array} b */
function joined(a, b) {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * The event an event stream ends with when its gateway's connection broke: the gateway's own
 * (gateway/http/events.py `error_event`), with its status's type and code.
 * @param {string} message
 */
export function cutEvent(message) {
  const code = "upstream_stream_interrupted";
  const error = { message, type: "upstream_error", param: null, code };
  return new TextEncoder().encode(`data: ${JSON.stringify({ error })}\n\n`);
}

/**
 * An event stream's `body` for the client: whole events, and an error event at a cut;
 * `where` names the gateway in the error event and the log line.
 * @param {ReadableStream<Uint8Array> | null} body @param {string} where
 * @returns {ReadableStream<Uint8Array> | null}
 */
export function guardedBody(body, where) {
  if (body === null) return null;
  const reader = body.getReader();
  let held = new Uint8Array(0);
  let cancelled = false;
  return new ReadableStream({
    async pull(controller) {
      // Until something is enqueued or the body ends: a pull that enqueues nothing is not
      // called again (the spec's pullAgain is set only by a read made while it ran).
      for (;;) {
        /** @type {ReadableStreamReadResult<Uint8Array>} */
        let read;
        try {
          read = await reader.read();
        } catch (err) {
          // The client's own cancel (below) fails the read in flight in workerd: no cut.
          if (cancelled) return;
          const message = `the stream from ${where} was cut before its end (${String(err)})`;
          console.warn(JSON.stringify({ msg: "stream cut", where, error: String(err) }));
          held = new Uint8Array(0); // half an event: dropped, not glued to the error
          controller.enqueue(cutEvent(message));
          controller.close();
          return;
        }
        if (read.done) {
          if (held.length) controller.enqueue(held);
          controller.close();
          return;
        }
        const data = joined(held, read.value);
        const end = data.length > HOLD_MAX_BYTES ? data.length : eventEnd(data);
        held = data.slice(end);
        if (end > 0) {
          controller.enqueue(end === data.length ? data : data.subarray(0, end));
          return;
        }
      }
    },
    cancel(reason) {
      // The client left: the gateway's request is cancelled too, which it sees as its
      // client gone (its generation stops).
      cancelled = true;
      return reader.cancel(reason);
    },
  });
}
