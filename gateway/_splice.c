/* gateway._splice: a streamed response body carried from the upstream's socket to the
 * client's in C, on an epoll set of its own that the event loop watches as one descriptor.
 *
 * Why: under load each streamed token cost geogate about 18 us of CPU outside the kernel in
 * Python, llhttp and uvloop's protocol calls (bench/results/round10/frames_streams16.md), the
 * largest single part of its CPU per stream, and compiling that Python with mypyc or cutting
 * a quarter of it changed nothing measurable. Here a readable upstream costs one read(), one
 * pass of a chunked-framing scanner over the bytes read and one sendmsg() of the data they
 * carried, re-framed as one chunk: no Python frame, no bytes object, no protocol call per
 * token, and one callback from the loop for all the streams that are ready at once.
 *
 * What it does not do: TLS (either side), HTTP/2, bodies that are not chunked. The Python
 * side (gateway.http.splice) hands a stream over only where none of those apply, where the
 * upstream's bytes stand at a chunk boundary (as a rule right after the first read), and takes
 * both connections back at the body's end. The first token, for the dashboard's time to first
 * token, is looked for here (has_token) until found.
 *
 * The sockets are the transports' own descriptors, not duplicates: a duplicate per side would
 * double the descriptors an open stream holds (server.max_streams is sized at two). Both
 * transports stay open and paused while a relay holds their descriptors, and the Python side
 * closes the relay (unwatching both) before either transport may close. Should one close
 * regardless, the kernel drops its registration with it; the owner table below keeps a later
 * relay that got the same number from being unwatched or written to by the earlier one, and an
 * identity check (fstat) before each new watch keeps the earlier from adopting a socket it
 * did not start with.
 *
 * Epoll events carry the relay's address; a relay stays alive while registered (Relay.held),
 * and its registrations go before that reference does: by EPOLL_CTL_DEL, or by the kernel
 * when its socket's last descriptor closes. Nothing in this process duplicates the
 * transports' sockets (no dup, no fork while serving), so that close is the last one.
 *
 * Threading: none. Every entry point runs on the event loop's thread with the GIL held, so the
 * one read buffer below is shared by all relays of the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* One read's most: a stream's token is tens of bytes; 64 KiB bounds what a relay ever holds
 * unsent (uvloop reads up to 256 000 bytes at a time). */
#define READ_BYTES 65536
/* A chunk size past 2^40 bytes is no streamed body: refused as bad framing. */
#define MAX_CHUNK ((uint64_t)1 << 40)
/* Events taken per epoll_wait; more stay ready (level-triggered) for the loop's next turn. */
#define BATCH 256

static char read_buf[READ_BYTES];

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
    UPSTREAM_FAILED = 4,  /* a read failed (Relay.error: its errno) */
    BAD_FRAMING = 5,      /* the bytes are not chunked framing */
    CLIENT_GONE = 6,      /* the client closed or reset its connection */
    CLOSED = 7,           /* close() before any of the above */
    YIELDED = 8,          /* the client sent bytes: stopped between chunks, on both sides, for
                             the Python relay to go on (the server reads what the client said) */
    LOCAL_FAILED = 9      /* this side failed (memory, epoll, a socket replaced under it:
                             Relay.error); a chunk may be cut short on the client's side */
};

typedef struct Relay Relay;

typedef struct {
    PyObject_HEAD
    int epfd;
    Relay **owners;  /* by descriptor: the relay that registered it (borrowed: see Relay.held) */
    int owners_len;
} Poller;

struct Relay {
    PyObject_HEAD
    Poller *poller;
    int upstream_fd;
    int client_fd;
    uint32_t up_events;     /* what the poller watches on each side; 0: not registered */
    uint32_t cl_events;
    int held;               /* a reference to itself while registered: events carry its address */
    int state;
    int status;
    int error;
    int digits;
    int quiet;              /* the client sent bytes mid-chunk: its reads are not watched */
    int end;                /* END or END_EXTRA, seen while bytes were still pending */
    uint64_t size;          /* the chunk size being read, then what is left of its data */
    unsigned long long total; /* payload bytes written to the client */
    unsigned long long reads;
    double last;            /* CLOCK_MONOTONIC seconds of the last read that brought bytes */
    char *pending;          /* what the client's socket did not take yet */
    size_t pending_len;
    size_t pending_off;
    PyObject *on_done;
    PyObject *on_token;     /* called once, at the first read whose data carries a token */
    dev_t up_dev, cl_dev;   /* which sockets the numbers named at the start: checked before */
    ino_t up_ino, cl_ino;   /* each change of watch, so a number reused is never adopted */
};

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

/* Whether data[0:n] carries generated text: gateway.traffic.carries_token's pattern,
 * "(?:content|text|delta)":\s*"[^"], matched the same way (tests/gateway/http/test_splice.py
 * holds the two equal). */
static int has_token(const char *data, size_t n) {
    static const char *const keys[] = {"content", "text", "delta"};
    const char *end = data + n;
    for (const char *q = memchr(data, '"', n); q != NULL;
         q = memchr(q + 1, '"', (size_t)(end - q - 1))) {
        for (int k = 0; k < 3; k++) {
            size_t kl = strlen(keys[k]);
            const char *c = q + 1;
            if ((size_t)(end - c) < kl + 2 || memcmp(c, keys[k], kl) != 0) continue;
            c += kl;
            if (c[0] != '"' || c[1] != ':') continue;
            c += 2;
            while (c < end && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' ||
                               *c == '\f' || *c == '\v'))
                c++;
            if (c + 1 < end && c[0] == '"' && c[1] != '"') return 1;
        }
        if (q + 1 >= end) break;
    }
    return 0;
}

static int owns(Relay *r, int fd) {
    return fd >= 0 && fd < r->poller->owners_len && r->poller->owners[fd] == r;
}

static int client_failed(int err) {
    return err != EAGAIN && err != EWOULDBLOCK && err != EINTR;
}

/* Writes what is pending; 1 when it all went, 0 when the socket is full, -1 when the client
 * is gone. */
static int flush_pending(Relay *r) {
    if (!owns(r, r->client_fd)) return -1;
    while (r->pending_off < r->pending_len) {
        ssize_t w = send(r->client_fd, r->pending + r->pending_off,
                         r->pending_len - r->pending_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (client_failed(errno)) return -1;
            return 0;
        }
        r->pending_off += (size_t)w;
    }
    PyMem_Free(r->pending);
    r->pending = NULL;
    r->pending_len = r->pending_off = 0;
    return 1;
}

/* Sends data[0:len] as one chunk. 1: all sent; 0: the rest is pending; -1: client gone; -2: no
 * memory for the rest (which is lost: the client's chunk is cut short). */
static int send_chunk(Relay *r, const char *data, size_t len) {
    if (!owns(r, r->client_fd)) return -1;  /* its number is another relay's: gone */
    char head[24];
    int hlen = snprintf(head, sizeof head, "%zx\r\n", len);
    struct iovec iov[3] = {
        {head, (size_t)hlen}, {(void *)data, len}, {(void *)"\r\n", 2}};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    size_t want = (size_t)hlen + len + 2;
    ssize_t w = sendmsg(r->client_fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
        if (client_failed(errno)) return -1;
        w = 0;
    }
    r->total += len;
    if ((size_t)w == want) return 1;
    size_t rest = want - (size_t)w;
    r->pending = PyMem_Malloc(rest);
    if (r->pending == NULL) return -2;
    r->pending_len = rest;
    r->pending_off = 0;
    size_t at = 0, skip = (size_t)w;
    for (int k = 0; k < 3; k++) {
        size_t l = iov[k].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(r->pending + at, (char *)iov[k].iov_base + skip, l - skip);
        at += l - skip;
        skip = 0;
    }
    return 0;
}

/* Between chunks on both sides: the upstream's next byte starts a size line, and every chunk
 * begun on the client's side went whole. */
static int at_boundary(Relay *r) {
    return r->state == S_SIZE && r->digits == 0 && r->pending == NULL;
}


/* Registers, changes or drops what the poller watches on one side. -1 with errno set when the
 * kernel refuses (the descriptor closed meanwhile, or not a socket). */
static int same_socket(int fd, dev_t dev, ino_t ino) {
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

/* Takes both numbers in the owner table: a relay acts on a number only while it holds it. A
 * later relay given the same number (the first's socket closed under it) takes it over. */
static int claim(Relay *r) {
    Poller *p = r->poller;
    int top = r->upstream_fd > r->client_fd ? r->upstream_fd : r->client_fd;
    if (top >= p->owners_len) {
        int len = top + 1 > 2 * p->owners_len ? top + 1 : 2 * p->owners_len;
        Relay **grown = PyMem_Realloc(p->owners, (size_t)len * sizeof *grown);
        if (grown == NULL) return -1;
        memset(grown + p->owners_len, 0, (size_t)(len - p->owners_len) * sizeof *grown);
        p->owners = grown;
        p->owners_len = len;
    }
    p->owners[r->upstream_fd] = p->owners[r->client_fd] = r;
    return 0;
}

/* Registers, changes or drops what the poller watches on one side. -1 with errno set when it
 * cannot: the socket is no longer the one the relay started with, or the kernel refuses. */
static int set_watch(Relay *r, int client_side, uint32_t events) {
    Poller *p = r->poller;
    int fd = client_side ? r->client_fd : r->upstream_fd;
    uint32_t *now = client_side ? &r->cl_events : &r->up_events;
    if (events == *now) return 0;
    if (!owns(r, fd)) {
        *now = 0;  /* its registration went with the socket it named */
        if (events == 0) return 0;
        errno = EBADF;
        return -1;
    }
    if (events == 0) {
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL);  /* fails only if closed: dropped then */
        *now = 0;
        return 0;
    }
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = (uint64_t)(uintptr_t)r | (uint64_t)client_side;
    if (*now == 0) {
        /* Added again (after the client drained): the number must still name its socket. */
        if (client_side ? !same_socket(fd, r->cl_dev, r->cl_ino)
                        : !same_socket(fd, r->up_dev, r->up_ino)) {
            errno = EBADF;
            return -1;
        }
        if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return -1;
    } else if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        return -1;
    }
    *now = events;
    return 0;
}

/* The watches a running relay wants: the upstream's reads unless bytes wait for the client;
 * the client's writability while they do, and its reads (a close, a reset, a pipelined
 * request) unless it already spoke. */
static int rewatch(Relay *r) {
    int waiting = r->pending != NULL;
    if (set_watch(r, 0, waiting ? 0 : EPOLLIN) < 0) return -1;
    uint32_t cl = (r->quiet ? 0 : EPOLLIN) | (waiting ? EPOLLOUT : 0);
    return set_watch(r, 1, cl);
}

static void unwatch(Relay *r) {
    set_watch(r, 0, 0);
    set_watch(r, 1, 0);
    if (owns(r, r->upstream_fd)) r->poller->owners[r->upstream_fd] = NULL;
    if (owns(r, r->client_fd)) r->poller->owners[r->client_fd] = NULL;
    if (r->held) {
        r->held = 0;
        Py_DECREF(r);  /* never the last: the owner holds one till close() */
    }
}

/* Ends the relay and tells its owner; -1 when the owner's callback raised. */
static int finish(Relay *r, int status) {
    if (r->status != RUNNING) return 0;
    r->status = status;
    unwatch(r);
    PyObject *on_done = r->on_done;
    if (on_done == NULL) return 0;
    Py_INCREF(on_done);  /* the callback may close() the relay, which drops its own reference */
    PyObject *res = PyObject_CallNoArgs(on_done);
    Py_DECREF(on_done);
    if (res == NULL) return -1;
    Py_DECREF(res);
    return 0;
}

static int watch_or_fail(Relay *r) {
    if (rewatch(r) == 0) return 0;
    r->error = errno;
    return finish(r, LOCAL_FAILED);
}

/* The first token's callback, once. What it raises is reported (sys.unraisablehook), not
 * passed on: the stream goes on whatever the dashboard's bookkeeping does. */
static void tell_token(Relay *r) {
    PyObject *on_token = r->on_token;
    r->on_token = NULL;  /* once; the reference is this call's now */
    PyObject *res = PyObject_CallNoArgs(on_token);
    if (res == NULL) PyErr_WriteUnraisable(on_token);
    Py_XDECREF(res);
    Py_DECREF(on_token);
}

static int on_upstream(Relay *r) {
    if (r->pending != NULL) return 0;
    ssize_t n = recv(r->upstream_fd, read_buf, READ_BYTES, 0);
    if (n == 0) return finish(r, UPSTREAM_CLOSED);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        r->error = errno;
        return finish(r, UPSTREAM_FAILED);
    }
    r->reads++;
    r->last = monotonic_s();
    size_t out = 0, used = 0;
    if (scan(r, read_buf, (size_t)n, &out, &used) < 0) return finish(r, BAD_FRAMING);
    int ended = r->state == S_DONE ? (used < (size_t)n ? END_EXTRA : END) : 0;
    int token = r->on_token != NULL && out > 0 && has_token(read_buf, out);
    int sent = out > 0 ? send_chunk(r, read_buf, out) : 1;
    if (token) tell_token(r);  /* after the send: read_buf is no longer needed */
    if (sent == -2) {
        r->error = ENOMEM;
        return finish(r, LOCAL_FAILED);
    }
    if (sent == -1) return finish(r, CLIENT_GONE);
    if (sent == 0) {
        r->end = ended;  /* told once the client took the rest */
        return watch_or_fail(r);
    }
    if (ended) return finish(r, ended);
    if (r->quiet && at_boundary(r)) return finish(r, YIELDED);
    return 0;
}

static int on_client(Relay *r, uint32_t events) {
    if (r->pending != NULL && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int rc = flush_pending(r);
        if (rc < 0) return finish(r, CLIENT_GONE);
        if (rc == 0) return 0;
        if (r->end) return finish(r, r->end);
        if (r->quiet && at_boundary(r)) return finish(r, YIELDED);
        if (watch_or_fail(r) < 0) return -1;
    }
    if (r->status != RUNNING || r->quiet || !(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return 0;
    char c;
    ssize_t n = recv(r->client_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return finish(r, CLIENT_GONE);
    if (n < 0) return client_failed(errno) ? finish(r, CLIENT_GONE) : 0;
    if (at_boundary(r)) return finish(r, YIELDED);
    r->quiet = 1;  /* stop at the next boundary; meanwhile a failed send says it left */
    return watch_or_fail(r);
}

/* --- Poller ------------------------------------------------------------------------------ */

static PyObject *Poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Poller() takes no arguments");
        return NULL;
    }
    Poller *p = (Poller *)type->tp_alloc(type, 0);
    if (p == NULL) return NULL;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static void Poller_dealloc(Poller *p) {
    if (p->epfd >= 0) close(p->epfd);
    PyMem_Free(p->owners);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *Poller_fileno(Poller *p, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(p->epfd);
}

/* The loop's callback when the poller's descriptor is readable: every ready relay, served. */
static PyObject *Poller_dispatch(Poller *p, PyObject *Py_UNUSED(ignored)) {
    struct epoll_event evs[BATCH];
    int n = epoll_wait(p->epfd, evs, BATCH, 0);
    if (n < 0) {
        if (errno == EINTR) return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Each relay of the batch kept alive through it: an owner's callback may close one whose
     * event comes later in the same batch (it is then no longer RUNNING, and skipped). */
    for (int i = 0; i < n; i++) Py_INCREF((PyObject *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1));
    int failed = 0;
    for (int i = 0; i < n && !failed; i++) {
        Relay *r = (Relay *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1);
        if (r->status != RUNNING) continue;
        int rc = (evs[i].data.u64 & 1) ? on_client(r, evs[i].events) : on_upstream(r);
        failed = rc < 0;
    }
    for (int i = 0; i < n; i++) Py_DECREF((PyObject *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1));
    if (failed) return NULL;
    return PyLong_FromLong(n);
}

static PyMethodDef Poller_methods[] = {
    {"fileno", (PyCFunction)Poller_fileno, METH_NOARGS, "the epoll descriptor, for the loop to watch"},
    {"dispatch", (PyCFunction)Poller_dispatch, METH_NOARGS,
     "serve the relays that are ready (the loop calls this when fileno() is readable); returns "
     "how many events it took"},
    {NULL}};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._splice.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The relays of one event loop, on one epoll descriptor.",
    .tp_new = Poller_new,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_methods = Poller_methods,
};

/* --- Relay ------------------------------------------------------------------------------- */

static PyObject *Relay_close(Relay *r, PyObject *Py_UNUSED(ignored)) {
    if (r->status == RUNNING) r->status = CLOSED;
    unwatch(r);
    Py_CLEAR(r->on_done);
    Py_CLEAR(r->on_token);
    Py_RETURN_NONE;
}

static int Relay_init(Relay *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"poller", "upstream_fd", "client_fd", "on_done", "on_token", NULL};
    PyObject *poller, *on_done, *on_token = Py_None;
    int up, cl;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iiO|O", kwlist, &PollerType, &poller, &up,
                                     &cl, &on_done, &on_token))
        return -1;
    if (!PyCallable_Check(on_done) || (on_token != Py_None && !PyCallable_Check(on_token))) {
        PyErr_SetString(PyExc_TypeError, "on_done (and on_token, unless None) must be callable");
        return -1;
    }
    if (r->poller != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Relay is set up once");
        return -1;
    }
    if (up < 0 || cl < 0 || up == cl) {
        PyErr_SetString(PyExc_ValueError, "two distinct open descriptors are needed");
        return -1;
    }
    Py_INCREF(poller);
    r->poller = (Poller *)poller;
    r->upstream_fd = up;
    r->client_fd = cl;
    Py_INCREF(on_done);
    r->on_done = on_done;
    if (on_token != Py_None) {
        Py_INCREF(on_token);
        r->on_token = on_token;
    }
    r->last = monotonic_s();
    struct stat st;
    if (fstat(up, &st) < 0) return PyErr_SetFromErrno(PyExc_OSError), -1;
    r->up_dev = st.st_dev;
    r->up_ino = st.st_ino;
    if (fstat(cl, &st) < 0) return PyErr_SetFromErrno(PyExc_OSError), -1;
    r->cl_dev = st.st_dev;
    r->cl_ino = st.st_ino;
    if (claim(r) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(r);
    r->held = 1;
    if (rewatch(r) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        r->status = CLOSED;
        unwatch(r);
        return -1;
    }
    return 0;
}

static PyObject *Relay_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Relay *r = (Relay *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->upstream_fd = r->client_fd = -1;
    r->state = S_SIZE;
    return (PyObject *)r;
}

static int Relay_traverse(Relay *r, visitproc visit, void *arg) {
    Py_VISIT(r->on_done);
    Py_VISIT(r->on_token);
    Py_VISIT(r->poller);
    return 0;
}

static int Relay_clear(Relay *r) {
    Py_CLEAR(r->on_done);
    Py_CLEAR(r->on_token);
    return 0;
}

static void Relay_dealloc(Relay *r) {
    PyObject_GC_UnTrack(r);
    Relay_clear(r);
    PyMem_Free(r->pending);
    Py_CLEAR(r->poller);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *Relay_get_status(Relay *r, void *c) { return PyLong_FromLong(r->status); }
static PyObject *Relay_get_error(Relay *r, void *c) { return PyLong_FromLong(r->error); }
static PyObject *Relay_get_total(Relay *r, void *c) { return PyLong_FromUnsignedLongLong(r->total); }
static PyObject *Relay_get_reads(Relay *r, void *c) { return PyLong_FromUnsignedLongLong(r->reads); }
static PyObject *Relay_get_last(Relay *r, void *c) { return PyFloat_FromDouble(r->last); }
static PyObject *Relay_get_pending(Relay *r, void *c) {
    return PyLong_FromSize_t(r->pending_len - r->pending_off);
}
static PyObject *Relay_get_watching(Relay *r, void *c) {
    return PyBool_FromLong(r->up_events != 0 || r->cl_events != 0);
}

static PyGetSetDef Relay_getset[] = {
    {"status", (getter)Relay_get_status, NULL, "how the relay ended; RUNNING (0) until then", NULL},
    {"error", (getter)Relay_get_error, NULL, "the errno of a failed read or watch", NULL},
    {"total", (getter)Relay_get_total, NULL, "body bytes written to the client", NULL},
    {"reads", (getter)Relay_get_reads, NULL, "upstream reads that brought bytes", NULL},
    {"last", (getter)Relay_get_last, NULL, "time.monotonic() of the last such read", NULL},
    {"pending", (getter)Relay_get_pending, NULL, "bytes the client's socket has not taken", NULL},
    {"watching", (getter)Relay_get_watching, NULL, "either descriptor still in the poller", NULL},
    {NULL}};

static PyMethodDef Relay_methods[] = {
    {"close", (PyCFunction)Relay_close, METH_NOARGS,
     "stop: both descriptors out of the poller (they stay open: the transports' own)"},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._splice.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One streamed body, upstream socket to client socket, re-framed per read.",
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
    .m_doc = "A streamed body from an upstream socket to a client socket, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__splice(void) {
    if (PyType_Ready(&PollerType) < 0 || PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&PollerType);
    if (PyModule_AddObject(m, "Poller", (PyObject *)&PollerType) < 0) {
        Py_DECREF(&PollerType);
        Py_DECREF(m);
        return NULL;
    }
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
        {"YIELDED", YIELDED}, {"LOCAL_FAILED", LOCAL_FAILED}, {"READ_BYTES", READ_BYTES}};
    for (size_t k = 0; k < sizeof consts / sizeof consts[0]; k++) {
        if (PyModule_AddIntConstant(m, consts[k].name, consts[k].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
