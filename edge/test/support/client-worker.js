// A test-only Worker: a client of the edge Worker (service binding EDGE) that can go away.
// It is posted {url, method, headers, body, cf, leaveWhen}: it sends that request to the edge
// Worker, and with `leaveWhen` (a loopback URL that answers once the region holds the request)
// it aborts its call as soon as that URL answers, as a client that disconnects. It answers
// with what became of its call: {left: true, outcome} or {left: false, status, body}.
export default {
  async fetch(request, env) {
    const { url, method, headers, body, cf, leaveWhen } = await request.json();
    const abort = new AbortController();
    const call = env.EDGE.fetch(url, { method, headers, body, cf, signal: abort.signal });
    const settled = call.then(
      async (r) => ({ left: false, status: r.status, body: await r.text() }),
      (err) => ({ left: false, error: String(err) }),
    );
    if (!leaveWhen) return Response.json(await settled);
    const cue = fetch(leaveWhen).then((r) => r.text());
    const first = await Promise.race([settled, cue]);
    if (typeof first !== "string") return Response.json(first); // answered before the cue
    abort.abort();
    const outcome = await settled;
    return Response.json({ left: true, outcome: outcome.error ?? `answered ${outcome.status}` });
  },
};
