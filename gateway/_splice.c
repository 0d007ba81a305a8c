/* gateway._splice: a streamed response body carried from the upstream's connection to the
 * client's socket in C, as the upstream transport's protocol.
 *
 * Why: under load each streamed token cost geogate about 18 us of CPU outside the kernel in
 * Python, llhttp and uvloop's protocol calls (bench/results/round10/frames_streams16.md), the
 * largest single part of its CPU per stream. Round eleven moved the chunks to C on an epoll set
 * of its own, which the loop watched as one descriptor: that cost a second epoll_wait per
 * wake-up and two registrations per stream, 22 system calls per 16-token stream more than
 * nginx's 53 (bench/results/round11/frames_streams16.md). Here the event loop's own read
 * callback hands each read to this object's data_received (C, no Python frame): one pass of a
 * chunked-framing scanner over the bytes and one sendmsg() of the data they carried, re-framed
 * as one chunk, to the client's socket; at the body's end (end_body) the client's last chunk
 * goes in the same send (or is queued behind what the client's transport holds), so the
 * stream is complete before Python runs again. Per
 * token that is the loop's epoll_wait, its read and one sendmsg: nginx's three.
 *
 * What it does not do: TLS on the client's side (the upstream's may be anything the transport
 * decrypts), HTTP/2, bodies that are not chunked. The Python side (gateway.http.splice) hands a
 * stream over only where the upstream's bytes stand at a chunk boundary (as a rule right after
 * the first read), sets this object as the upstream transport's protocol, and takes both
 * connections back at the body's end. The first token, for the dashboard's time to first
 * token, is looked for here (has_token) until found.
 *
 * The client's socket is its transport's own descriptor, not a duplicate (a duplicate per
 * stream would add a descriptor to each open stream; server.max_streams is sized at two), so
 * the relay must not write to it once that transport closed it: the number may name another
 * connection by then. While the relay writes to the socket itself, the transport has nothing
 * to write and its reading is paused, so it does not close on its own; the Python side closes
 * the relay before it closes the transport; and the client's connection calls resume() as it
 * is lost, which ends the relay (CLIENT_GONE). A client that leaves is seen at a send that
 * fails, or in a silence by probe() (gateway.http.watchdog asks every CLIENT_PROBE_S). While bytes wait in the transport's buffer (a
 * write of its own may fail and close it), each send first asks is_closing(). When the socket
 * cannot take a whole chunk,
 * the rest goes to the transport's own write() (which buffers it and watches for
 * writability), and so does every chunk after it until that buffer is empty again: bytes leave
 * in order, and past the transport's high-water mark the upstream's reading pauses until the
 * client's connection calls resume() (its on_writable).
 *
 * Threading: none. Every entry point runs on the event loop's thread with the GIL held, so the
 * one scratch buffer below is shared by all relays of the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* The scratch buffer's first size: a stream's token is tens of bytes; it grows to the largest
 * read seen (uvloop reads up to 256 000 bytes at a time). */
#define SCRATCH_BYTES 65536
/* A chunk size past 2^40 bytes is no streamed body: refused as bad framing. */
#define MAX_CHUNK ((uint64_t)1 << 40)
/* An SSE stream's bytes after its last complete event wait for the rest of it (a cut then
 * drops them, and the client's error event is not glued to half an event), up to this much:
 * past it, everything goes (an upstream whose events never end with a blank line still
 * streams). gateway.http.events.HOLD_MAX_BYTES says the same for the Python paths. */
#define HOLD_MAX ((size_t)64 * 1024)

static char *scratch;
static size_t scratch_len;

/* Where the scanner stands in the upstream's chunked framing (RFC 9112 section 7.1). */
enum {
    S_SIZE,       /* hex digits of a chunk size */
    S_SIZE_WS,    /* blanks after the size, before ';' or CR */
    S_EXT,        /* a chunk extension, up to CR */
    S_SIZE_LF,    /* the LF ending a size line */
    S_DATA,       /* chunk data */
    S_DATA_CR,    /* the CR after chunk data */
    S_DATA_LF,    /* the LF after chunk data */
    S_TRAILER,    /* after the last chunk: a trailer field or the final CRLF */
    S_FIELD,      /* a trailer field, up to CR */
    S_FIELD_LF,   /* the LF ending a trailer field */
    S_END_LF,     /* the final LF */
    S_DONE        /* the body is complete */
};

/* How a relay ended (Relay.status). */
enum {
    RUNNING = 0,
    END = 1,              /* the body's end, nothing after it */
    END_EXTRA = 2,        /* the body's end, then bytes nobody asked for */
    UPSTREAM_CLOSED = 3,  /* the upstream closed before the body's end */
    UPSTREAM_FAILED = 4,  /* the upstream's connection failed (Relay.lost: the exception) */
    BAD_FRAMING = 5,      /* the bytes are not chunked framing */
    CLIENT_GONE = 6,      /* the client closed or reset its connection */
    CLOSED = 7,           /* close() before any of the above */
    LOCAL_FAILED = 9      /* this side failed (memory, a send refused: Relay.error); a chunk
                             may be cut short on the client's side */
};

typedef struct {
    PyObject_HEAD
    int client_fd;
    int state;
    int status;
    int error;
    int digits;
    int via_client;         /* bytes wait in the client transport's buffer: chunks go there */
    int paused;             /* the upstream's reading paused for the client (till resume()) */
    int end_body;           /* at END or END_EXTRA, write the client's last chunk too (the owner
                               will not) */
    int body_ended;         /* it was sent, or queued behind what the client's transport holds */
    int sse;                /* hold back a partial event (held) until it is whole */
    int open_event;         /* the last send ended inside an event (one over HOLD_MAX): an
                               error event after it would be glued to it */
    char *held;             /* an SSE stream's bytes after its last blank line, not yet sent */
    size_t held_len, held_cap;
    uint64_t size;          /* the chunk size being read, then what is left of its data */
    unsigned long long total; /* payload bytes written to the client */
    unsigned long long reads;
    double last;            /* CLOCK_MONOTONIC seconds of the last read that brought bytes */
    PyObject *upstream;     /* the upstream's transport: pause_reading(), resume_reading() */
    PyObject *client;       /* the client's pipe: write(), is_closing(), buffered(), flow */
    PyObject *on_done;
    PyObject *on_token;     /* called once, at the first read whose data carries a token */
    PyObject *lost;         /* the exception connection_lost() was given (UPSTREAM_FAILED) */
} Relay;

static PyObject *s_pause_reading, *s_resume_reading, *s_write, *s_is_closing, *s_buffered,
    *s_flow, *s_write_paused;

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Scans buf[0:n] from the relay's state, moving the chunk data it finds to the front of buf
 * (data always follows its own framing, so it only moves left). Sets *out to the data's length
 * and *used to the bytes scanned: all of them unless the body ended before the last. Returns
 * -1 on bytes that are not chunked framing. */
static int scan(Relay *r, char *buf, size_t n, size_t *out, size_t *used) {
    size_t i = 0, o = 0;
    while (i < n && r->state != S_DONE) {
        char c = buf[i];
        switch (r->state) {
        case S_SIZE: {
            int v = hex_value(c);
            if (v >= 0) {
                /* size <= MAX_CHUNK before the shift: no overflow in 64 bits */
                r->size = (r->size << 4) | (uint64_t)v;
                if (r->size > MAX_CHUNK) return -1;
                if (++r->digits > 32) return -1;  /* leading zeros past reason */
                i++;
                continue;
            }
            if (r->digits == 0) return -1;
            if (c == ' ' || c == '\t') r->state = S_SIZE_WS;
            else if (c == ';') r->state = S_EXT;
            else if (c == '\r') r->state = S_SIZE_LF;
            else return -1;
            i++;
            continue;
        }
        case S_SIZE_WS:
            if (c == ';') r->state = S_EXT;
            else if (c == '\r') r->state = S_SIZE_LF;
            else if (c != ' ' && c != '\t') return -1;
            i++;
            continue;
        case S_EXT:
            if (c == '\r') r->state = S_SIZE_LF;
            else if (c == '\n') return -1;
            i++;
            continue;
        case S_SIZE_LF:
            if (c != '\n') return -1;
            i++;
            r->digits = 0;
            r->state = r->size == 0 ? S_TRAILER : S_DATA;
            continue;
        case S_DATA: {
            size_t take = n - i;
            if ((uint64_t)take > r->size) take = (size_t)r->size;
            if (o != i) memmove(buf + o, buf + i, take);
            o += take;
            i += take;
            r->size -= take;
            if (r->size == 0) r->state = S_DATA_CR;
            continue;
        }
        case S_DATA_CR:
            if (c != '\r') return -1;
            r->state = S_DATA_LF;
            i++;
            continue;
        case S_DATA_LF:
            if (c != '\n') return -1;
            r->state = S_SIZE;
            i++;
            continue;
        case S_TRAILER:
            r->state = c == '\r' ? S_END_LF : S_FIELD;
            if (c == '\n') return -1;
            i++;
            continue;
        case S_FIELD:
            if (c == '\r') r->state = S_FIELD_LF;
            else if (c == '\n') return -1;
            i++;
            continue;
        case S_FIELD_LF:
            if (c != '\n') return -1;
            r->state = S_TRAILER;
            i++;
            continue;
        case S_END_LF:
            if (c != '\n') return -1;
            r->state = S_DONE;
            i++;
            continue;
        }
    }
    *out = o;
    *used = i;
    return 0;
}

/* The keys whose non-empty string value is generated (gateway.traffic's _TOKEN says which
 * and why), and their lengths. */
static const struct { const char *name; size_t len; } token_keys[] = {
    {"content", 7}, {"text", 4}, {"delta", 5}, {"reasoning_content", 17},
    {"reasoning", 9}, {"refusal", 7}, {"arguments", 9}};

static const char *skip_blanks(const char *c, const char *end) {
    while (c < end && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' || *c == '\f' ||
                       *c == '\v'))
        c++;
    return c;
}

/* c: just past an opening quote. Where the value starts (past its blanks) when c..end begins
 * with key":, else NULL. */
static const char *value_of(const char *c, const char *end, const char *key, size_t kl) {
    if ((size_t)(end - c) < kl + 2 || c[0] != key[0] || memcmp(c, key, kl) != 0) return NULL;
    c += kl;
    if (c[0] != '"' || c[1] != ':') return NULL;
    return skip_blanks(c + 2, end);
}

/* Whether v..end starts a non-empty string: a quote and a character that is not one. */
static int nonempty_string(const char *v, const char *end) {
    return end - v >= 2 && v[0] == '"' && v[1] != '"';
}

/* Whether data[0:n] carries generated text: gateway.traffic.carries_token's pattern,
 * "(?:content|text|delta|reasoning_content|reasoning|refusal|arguments)":\s*"[^"] or
 * "function":\s*\{\s*"name":\s*"[^"], matched the same way (tests/gateway/test_traffic.py
 * runs the same cases through both, tests/gateway/http/test_splice.py random data). The relay
 * runs it only until a read carries a token: one pass over each read before, none after. */
static int has_token(const char *data, size_t n) {
    const char *end = data + n;
    for (const char *q = memchr(data, '"', n); q != NULL;
         q = memchr(q + 1, '"', (size_t)(end - q - 1))) {
        const char *c = q + 1;
        for (size_t k = 0; k < sizeof token_keys / sizeof token_keys[0]; k++) {
            const char *v = value_of(c, end, token_keys[k].name, token_keys[k].len);
            if (v != NULL && nonempty_string(v, end)) return 1;
        }
        const char *f = value_of(c, end, "function", 8);  /* a tool call's function's name */
        if (f != NULL && f < end && *f == '{') {
            f = skip_blanks(f + 1, end);
            if (f < end && *f == '"') {
                f = value_of(f + 1, end, "name", 4);
                if (f != NULL && nonempty_string(f, end)) return 1;
            }
        }
        if (q + 1 >= end) break;
    }
    return 0;
}

static int client_failed(int err) {
    return err != EAGAIN && err != EWOULDBLOCK && err != EINTR;
}

/* Calls obj.name(); -1 with the exception set if it raised. */
static int call0(PyObject *obj, PyObject *name) {
    PyObject *res = PyObject_CallMethodNoArgs(obj, name);
    if (res == NULL) return -1;
    Py_DECREF(res);
    return 0;
}

/* Ends the relay and tells its owner. What the owner's callback raises is reported
 * (sys.unraisablehook), not passed to the transport, which would close the upstream's
 * connection with the relay already ended and nobody told. */
static void finish(Relay *r, int status) {
    if (r->status != RUNNING) return;
    r->status = status;
    PyObject *on_done = r->on_done;
    if (on_done == NULL) return;
    Py_INCREF(on_done);  /* the callback may close() the relay, which drops its own reference */
    PyObject *res = PyObject_CallNoArgs(on_done);
    if (res == NULL) PyErr_WriteUnraisable(on_done);
    Py_XDECREF(res);
    Py_DECREF(on_done);
}

/* Ends the relay with the upstream's reading paused (its transport stays open: the Python
 * side decides what becomes of the connection). A pause that raises is reported: the relay
 * has ended either way. */
static void finish_paused(Relay *r, int status) {
    finish(r, status);
    if (r->upstream != NULL && call0(r->upstream, s_pause_reading) < 0)
        PyErr_WriteUnraisable(r->upstream);
}

/* The first token's callback, once. What it raises is reported (sys.unraisablehook), not
 * passed on: the stream goes on whatever the dashboard's bookkeeping does. */
static void tell_token(Relay *r) {
    PyObject *on_token = r->on_token;
    /* Gone already when the send before it closed the relay (a client's write() that calls
     * back into close(): uvloop's does not, a Python transport may). */
    if (on_token == NULL) return;
    r->on_token = NULL;  /* once; the reference is this call's now */
    PyObject *res = PyObject_CallNoArgs(on_token);
    if (res == NULL) PyErr_WriteUnraisable(on_token);
    Py_XDECREF(res);
    Py_DECREF(on_token);
}

/* 1: the client's connection is closing; 0: it is not; -1: an exception is set. */
static int client_closing(Relay *r) {
    PyObject *closing = PyObject_CallMethodNoArgs(r->client, s_is_closing);
    if (closing == NULL) return -1;
    int t = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    return t;
}

/* 1: the client's transport holds bytes unsent (chunks go after them); 0: its buffer is
 * empty; -1: an exception is set. Sets *gone when the client's connection is closing. */
static int client_buffered(Relay *r, int *gone) {
    int closing = client_closing(r);
    if (closing < 0) return -1;
    *gone = closing;
    if (closing) return 0;
    PyObject *n = PyObject_CallMethodNoArgs(r->client, s_buffered);
    if (n == NULL) return -1;
    Py_ssize_t left = PyLong_AsSsize_t(n);
    Py_DECREF(n);
    if (left < 0 && PyErr_Occurred()) return -1;
    return left > 0;
}

/* Hands data[0:len] to the client transport's write() (it goes after what it holds), and
 * pauses the upstream's reading once that transport's buffer is past its high-water mark
 * (the client's connection says so: flow.write_paused). -1 with an exception set. */
static int to_transport(Relay *r, const char *data, size_t len) {
    PyObject *bytes = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (bytes == NULL) return -1;
    PyObject *res = PyObject_CallMethodOneArg(r->client, s_write, bytes);
    Py_DECREF(bytes);
    if (res == NULL) return -1;
    Py_DECREF(res);
    r->via_client = 1;
    PyObject *flow = PyObject_GetAttr(r->client, s_flow);
    if (flow == NULL) return -1;
    PyObject *full = PyObject_GetAttr(flow, s_write_paused);
    Py_DECREF(flow);
    if (full == NULL) return -1;
    int hold = PyObject_IsTrue(full);
    Py_DECREF(full);
    if (hold < 0) return -1;
    if (hold && !r->paused) {
        r->paused = 1;
        if (call0(r->upstream, s_pause_reading) < 0) return -1;
    }
    return 0;
}

/* Sends data[0:len] as one chunk (none when len is 0) and, with ``last``, the body's last
 * chunk after it, in one send. 0: sent, or handed whole to the client's transport; 1: the
 * client is gone; -1: an exception is set. */
static int send_chunk(Relay *r, const char *data, size_t len, int last) {
    char head[24];
    int hlen = len > 0 ? snprintf(head, sizeof head, "%zx\r\n", len) : 0;
    struct iovec iov[4] = {
        {head, (size_t)hlen}, {(void *)data, len}, {(void *)"\r\n", len > 0 ? 2 : 0},
        {(void *)"0\r\n\r\n", last ? 5 : 0}};
    size_t want = (size_t)hlen + len + (len > 0 ? 2 : 0) + (last ? 5 : 0);
    if (r->via_client) {
        int gone = 0;
        int held = client_buffered(r, &gone);
        if (held < 0) return -1;
        if (gone) return 1;
        if (!held) r->via_client = 0;  /* drained: straight to the socket again */
    }
    ssize_t w = 0;
    if (!r->via_client) {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = 4;
        w = sendmsg(r->client_fd, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (client_failed(errno)) return 1;
            w = 0;
        }
    }
    r->total += len;
    if ((size_t)w == want) return 0;
    /* The rest, in one piece, to the transport: it keeps the order and waits for the socket. */
    size_t rest = want - (size_t)w;
    char *buf = PyMem_Malloc(rest);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t at = 0, skip = (size_t)w;
    for (int k = 0; k < 4; k++) {
        size_t l = iov[k].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(buf + at, (char *)iov[k].iov_base + skip, l - skip);
        at += l - skip;
        skip = 0;
    }
    int rc = to_transport(r, buf, rest);
    PyMem_Free(buf);
    return rc;
}

/* Ends the relay as LOCAL_FAILED after a Python call failed here: the exception is reported
 * (sys.unraisablehook) and the stream is cut. */
static void local_failure(Relay *r, PyObject *where, int error) {
    PyErr_WriteUnraisable(where);
    r->error = error;
    finish_paused(r, LOCAL_FAILED);
}

/* Where the last complete SSE event of data[0:n] ends (after its blank line: "\n\n",
 * "\n\r\n" of CRLF lines, "\r\r" of CR ones, "\n\r": a CR after a line's end is an empty
 * line); 0 when none does. gateway.http.events's _ENDS says the same. */
static size_t event_end(const char *data, size_t n) {
    for (size_t i = n; i >= 2; i--) {
        char a = data[i - 2], b = data[i - 1];
        if ((b == '\n' && (a == '\n' || (a == '\r' && i >= 3 && data[i - 3] == '\n'))) ||
            (b == '\r' && (a == '\r' || a == '\n')))
            return i;
    }
    return 0;
}

/* Appends data[0:n] to the held bytes. -1 with an exception set. */
static int hold(Relay *r, const char *data, size_t n) {
    if (r->held_len + n > r->held_cap) {
        size_t cap = (r->held_len + n) * 2;
        char *grown = PyMem_Realloc(r->held, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->held = grown;
        r->held_cap = cap;
    }
    memcpy(r->held + r->held_len, data, n);
    r->held_len += n;
    return 0;
}

/* --- the protocol: what the upstream transport calls ------------------------------------ */

static PyObject *Relay_data_received(Relay *r, PyObject *arg) {
    if (r->status != RUNNING) Py_RETURN_NONE;  /* a read already on its way: dropped */
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    size_t n = (size_t)view.len;
    if (n > scratch_len) {
        char *grown = PyMem_Realloc(scratch, n);
        if (grown == NULL) {
            PyBuffer_Release(&view);
            PyErr_NoMemory();
            local_failure(r, (PyObject *)r, ENOMEM);
            Py_RETURN_NONE;
        }
        scratch = grown;
        scratch_len = n;
    }
    memcpy(scratch, view.buf, n);
    PyBuffer_Release(&view);
    if (n == 0) Py_RETURN_NONE;
    r->reads++;
    r->last = monotonic_s();
    size_t out = 0, used = 0;
    if (scan(r, scratch, n, &out, &used) < 0) {
        finish_paused(r, BAD_FRAMING);
        Py_RETURN_NONE;
    }
    int ended = r->state == S_DONE ? (used < n ? END_EXTRA : END) : 0;
    int last = ended && r->end_body;  /* the client's body ends with this send */
    const char *data = scratch;
    size_t len = out, keep = 0;  /* keep: held bytes that stay held after this send */
    /* An SSE stream sends up to its last blank line and holds the rest; at the body's end, or
     * past HOLD_MAX, all of it. As a rule a read ends an event: it goes straight out. */
    if (r->sse && (r->held_len > 0 || (!last && event_end(scratch, out) != out))) {
        /* What was held ends no event (else it had gone): only the new bytes, and the two
         * before them, can complete one. */
        size_t from = r->held_len > 2 ? r->held_len - 2 : 0;
        if (hold(r, scratch, out) < 0) {
            local_failure(r, (PyObject *)r, ENOMEM);
            Py_RETURN_NONE;
        }
        data = r->held;
        if (last || r->held_len > HOLD_MAX) {
            len = r->held_len;
        } else {
            size_t end = event_end(r->held + from, r->held_len - from);
            len = end > 0 ? from + end : 0;
        }
        keep = r->held_len - len;
    }
    int token = r->on_token != NULL && len > 0 && has_token(data, len);
    /* Before the send (it may move what is held): whether this send ends inside an event.
     * Only a flush past HOLD_MAX can; the scan from the end stops at once on an event's end. */
    if (r->sse && len > 0) r->open_event = event_end(data, len) != len;
    int sent = len > 0 || last ? send_chunk(r, data, len, last) : 0;
    if (data == r->held && len > 0) {
        if (keep > 0) memmove(r->held, r->held + len, keep);
        r->held_len = keep;
    }
    if (last && sent == 0) r->body_ended = 1;
    if (sent < 0) {
        local_failure(r, r->client, EIO);
        Py_RETURN_NONE;
    }
    if (token) tell_token(r);  /* after the send: the scratch buffer is no longer needed */
    if (sent == 1) finish_paused(r, CLIENT_GONE);
    else if (ended) finish_paused(r, ended);
    Py_RETURN_NONE;
}

static PyObject *Relay_eof_received(Relay *r, PyObject *Py_UNUSED(ignored)) {
    finish(r, UPSTREAM_CLOSED);
    Py_RETURN_NONE;  /* falsy: the transport closes */
}

static PyObject *Relay_connection_lost(Relay *r, PyObject *exc) {
    if (r->status != RUNNING) Py_RETURN_NONE;
    if (exc == Py_None) {
        finish(r, UPSTREAM_CLOSED);
        Py_RETURN_NONE;
    }
    Py_INCREF(exc);
    Py_XSETREF(r->lost, exc);  /* its type names the failure, as the connection's would */
    finish(r, UPSTREAM_FAILED);
    Py_RETURN_NONE;
}

static PyObject *Relay_connection_made(Relay *r, PyObject *Py_UNUSED(t)) { Py_RETURN_NONE; }
static PyObject *Relay_noop(Relay *r, PyObject *Py_UNUSED(ignored)) { Py_RETURN_NONE; }

/* The client's connection is writable again, or lost (h1 calls its on_writable from
 * connection_lost too): the upstream's reading goes on if it was held back, or the relay ends
 * before it could write to a number the closed transport no longer owns. */
static PyObject *Relay_resume(Relay *r, PyObject *Py_UNUSED(ignored)) {
    if (r->status != RUNNING) Py_RETURN_NONE;
    /* A failure here ends the relay as a send's does (LOCAL_FAILED, reported), instead of
     * raising into the client connection's callback (h1 calls this from connection_lost,
     * whose clean-up must run) and leaving the upstream paused for the watchdog to find. */
    int closing = client_closing(r);
    if (closing < 0) {
        local_failure(r, r->client, EIO);
        Py_RETURN_NONE;
    }
    if (closing) {
        finish_paused(r, CLIENT_GONE);
        Py_RETURN_NONE;
    }
    if (!r->paused) Py_RETURN_NONE;
    if (call0(r->upstream, s_resume_reading) < 0) {
        local_failure(r, r->upstream, EIO);
        Py_RETURN_NONE;
    }
    r->paused = 0;  /* only once reading goes on: a failed resume is not taken for one */
    Py_RETURN_NONE;
}

/* After a silence (gateway.http.watchdog): whether the client left, asked of its socket without
 * reading it (a pipelined request stays for the server). Its reads are paused, so nothing else
 * would tell before the next token; a client gone ends the relay (CLIENT_GONE). */
static PyObject *Relay_probe(Relay *r, PyObject *Py_UNUSED(ignored)) {
    if (r->status != RUNNING) Py_RETURN_FALSE;
    char c;
    ssize_t n = recv(r->client_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && client_failed(errno))) {
        finish_paused(r, CLIENT_GONE);
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *Relay_close(Relay *r, PyObject *Py_UNUSED(ignored)) {
    if (r->status == RUNNING) r->status = CLOSED;
    Py_CLEAR(r->on_done);
    Py_CLEAR(r->on_token);
    Py_RETURN_NONE;
}

/* --- set-up and the rest of the type ---------------------------------------------------- */

static int Relay_init(Relay *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"client_fd", "upstream", "client", "on_done", "on_token", "end_body",
                             "sse", "held", NULL};
    PyObject *upstream, *client, *on_done, *on_token = Py_None;
    int cl, end_body = 0, sse = 0;
    Py_buffer held = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOO|O$ppy*", kwlist, &cl, &upstream, &client,
                                     &on_done, &on_token, &end_body, &sse, &held))
        return -1;
    const char *refused = NULL;
    PyObject *kind = PyExc_ValueError;
    if (!PyCallable_Check(on_done) || (on_token != Py_None && !PyCallable_Check(on_token))) {
        refused = "on_done (and on_token, unless None) must be callable";
        kind = PyExc_TypeError;
    } else if (r->upstream != NULL) {
        refused = "a Relay is set up once";
        kind = PyExc_RuntimeError;
    } else if (cl < 0) {
        refused = "the client's descriptor must be open (>= 0)";
    } else if (held.buf != NULL && held.len > 0 && !sse) {
        refused = "held bytes are an SSE stream's: they need sse=True";
    } else if (sse && !end_body) {
        /* The held rest goes with the body's last chunk, which only end_body writes here. */
        refused = "sse=True needs end_body=True";
    }
    /* What the Python side held of an SSE stream when it handed the stream over. */
    int failed = refused == NULL && held.buf != NULL && held.len > 0 &&
                 hold(r, held.buf, (size_t)held.len) < 0;
    if (held.buf != NULL) PyBuffer_Release(&held);
    if (refused != NULL) PyErr_SetString(kind, refused);
    if (refused != NULL || failed) return -1;
    r->client_fd = cl;
    r->end_body = end_body;
    r->sse = sse;
    Py_INCREF(upstream);
    r->upstream = upstream;
    Py_INCREF(client);
    r->client = client;
    Py_INCREF(on_done);
    r->on_done = on_done;
    if (on_token != Py_None) {
        Py_INCREF(on_token);
        r->on_token = on_token;
    }
    r->last = monotonic_s();
    r->status = RUNNING;  /* only now: a relay never set up is CLOSED to every entry point */
    return 0;
}

static PyObject *Relay_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Relay *r = (Relay *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->client_fd = -1;
    r->state = S_SIZE;
    r->status = CLOSED;  /* RUNNING once __init__ has set it up */
    return (PyObject *)r;
}

static int Relay_traverse(Relay *r, visitproc visit, void *arg) {
    Py_VISIT(r->on_done);
    Py_VISIT(r->on_token);
    Py_VISIT(r->upstream);
    Py_VISIT(r->client);
    Py_VISIT(r->lost);
    return 0;
}

static int Relay_clear(Relay *r) {
    Py_CLEAR(r->on_done);
    Py_CLEAR(r->on_token);
    Py_CLEAR(r->upstream);
    Py_CLEAR(r->client);
    Py_CLEAR(r->lost);
    return 0;
}

static void Relay_dealloc(Relay *r) {
    PyObject_GC_UnTrack(r);
    Relay_clear(r);
    PyMem_Free(r->held);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *Relay_get_status(Relay *r, void *c) { return PyLong_FromLong(r->status); }
static PyObject *Relay_get_error(Relay *r, void *c) { return PyLong_FromLong(r->error); }
static PyObject *Relay_get_total(Relay *r, void *c) { return PyLong_FromUnsignedLongLong(r->total); }
static PyObject *Relay_get_reads(Relay *r, void *c) { return PyLong_FromUnsignedLongLong(r->reads); }
static PyObject *Relay_get_last(Relay *r, void *c) { return PyFloat_FromDouble(r->last); }
static PyObject *Relay_get_paused(Relay *r, void *c) { return PyBool_FromLong(r->paused); }
static PyObject *Relay_get_body_ended(Relay *r, void *c) { return PyBool_FromLong(r->body_ended); }
static PyObject *Relay_get_open_event(Relay *r, void *c) { return PyBool_FromLong(r->open_event); }
static PyObject *Relay_get_lost(Relay *r, void *c) {
    return Py_NewRef(r->lost != NULL ? r->lost : Py_None);
}

static PyGetSetDef Relay_getset[] = {
    {"status", (getter)Relay_get_status, NULL, "how the relay ended; RUNNING (0) until then", NULL},
    {"error", (getter)Relay_get_error, NULL, "the errno of a LOCAL_FAILED end", NULL},
    {"lost", (getter)Relay_get_lost, NULL,
     "the exception the upstream's connection was lost with (UPSTREAM_FAILED), else None", NULL},
    {"total", (getter)Relay_get_total, NULL, "body bytes written to the client", NULL},
    {"reads", (getter)Relay_get_reads, NULL, "upstream reads that brought bytes", NULL},
    {"last", (getter)Relay_get_last, NULL, "time.monotonic() of the last such read", NULL},
    {"paused", (getter)Relay_get_paused, NULL, "the upstream held back for the client", NULL},
    {"body_ended", (getter)Relay_get_body_ended, NULL,
     "the client's last chunk was sent or queued (end_body=True and the body's end reached)",
     NULL},
    {"open_event", (getter)Relay_get_open_event, NULL,
     "an SSE stream's last send ended inside an event (one longer than HOLD_MAX)", NULL},
    {NULL}};

static PyMethodDef Relay_methods[] = {
    {"data_received", (PyCFunction)Relay_data_received, METH_O,
     "the upstream transport's read: its chunks on to the client"},
    {"eof_received", (PyCFunction)Relay_eof_received, METH_NOARGS,
     "the upstream closed its side: UPSTREAM_CLOSED (the transport then closes)"},
    {"connection_lost", (PyCFunction)Relay_connection_lost, METH_O,
     "the upstream's connection is gone: UPSTREAM_FAILED (Relay.lost), or UPSTREAM_CLOSED "
     "for None"},
    {"connection_made", (PyCFunction)Relay_connection_made, METH_O, "nothing to do"},
    {"pause_writing", (PyCFunction)Relay_noop, METH_NOARGS, "nothing is written upstream"},
    {"resume_writing", (PyCFunction)Relay_noop, METH_NOARGS, "nothing is written upstream"},
    {"resume", (PyCFunction)Relay_resume, METH_NOARGS,
     "the client's connection is writable (the upstream's reading goes on if it was held "
     "back), or closing (CLIENT_GONE)"},
    {"probe", (PyCFunction)Relay_probe, METH_NOARGS,
     "after a silence: True (and CLIENT_GONE) when the client closed or reset its connection"},
    {"close", (PyCFunction)Relay_close, METH_NOARGS,
     "stop: nothing more is written (both connections stay open: the transports' own)"},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._splice.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One streamed body, the upstream transport's protocol, re-framed per read to the "
              "client's socket.",
    .tp_new = Relay_new,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_traverse = (traverseproc)Relay_traverse,
    .tp_clear = (inquiry)Relay_clear,
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

static PyObject *module_carries_token(PyObject *m, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int found = has_token(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyBool_FromLong(found);
}

static PyMethodDef module_methods[] = {
    {"carries_token", module_carries_token, METH_O,
     "the relay's first-token test on one read's data (gateway.traffic.carries_token's twin)"},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._splice",
    .m_doc = "A streamed body from an upstream connection to a client socket, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__splice(void) {
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_pause_reading, "pause_reading"}, {&s_resume_reading, "resume_reading"},
        {&s_write, "write"}, {&s_is_closing, "is_closing"}, {&s_buffered, "buffered"},
        {&s_flow, "flow"}, {&s_write_paused, "write_paused"}};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        if (*names[k].slot == NULL && (*names[k].slot = PyUnicode_InternFromString(names[k].name)) == NULL)
            return NULL;
    }
    if (scratch == NULL) {
        scratch = PyMem_Malloc(SCRATCH_BYTES);
        if (scratch == NULL) return PyErr_NoMemory();
        scratch_len = SCRATCH_BYTES;
    }
    if (PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        Py_DECREF(m);
        return NULL;
    }
    struct { const char *name; int value; } consts[] = {
        {"RUNNING", RUNNING}, {"END", END}, {"END_EXTRA", END_EXTRA},
        {"UPSTREAM_CLOSED", UPSTREAM_CLOSED}, {"UPSTREAM_FAILED", UPSTREAM_FAILED},
        {"BAD_FRAMING", BAD_FRAMING}, {"CLIENT_GONE", CLIENT_GONE}, {"CLOSED", CLOSED},
        {"LOCAL_FAILED", LOCAL_FAILED}};
    for (size_t k = 0; k < sizeof consts / sizeof consts[0]; k++) {
        if (PyModule_AddIntConstant(m, consts[k].name, consts[k].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
