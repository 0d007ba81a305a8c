"""The model a ``multipart/form-data`` body names, and whether it asks for a stream: OpenAI's
uploads (audio transcriptions and translations, image edits and variations) send their
parameters as form fields beside the file, so the router reads the ``model`` and ``stream``
fields where a JSON body has them as keys.

Why python-multipart: it is the parser Starlette and FastAPI use, so the backends most of these
uploads go to (vLLM's and faster-whisper's servers are FastAPI) read a form as this reads it:
what routing sees is what the backend sees. It streams over the parts with callbacks, so a
file part is passed over (a find() for the boundary), not copied, and the gateway keeps only
the two fields it reads.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.defaults import FORM_FIELD_MAX_BYTES, FORM_MAX_HEADER_BYTES, FORM_MAX_PARTS
from gateway.errors import RequestInvalid

if TYPE_CHECKING:  # a TypedDict the module defines for type checkers only
    from python_multipart.multipart import MultipartCallbacks

_READ = frozenset({b"model", b"stream"})
# A form's "stream" is a string: these are the ones pydantic (FastAPI's forms) reads as true,
# so that a stream here is one to the backend too. The OpenAI SDK sends "true".
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
# The parser logs a WARNING for each malformed form before it raises: a client could fill the
# gateway's log with them. The client's 400 and its access line say it already.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)
_EXAMPLE = "send the fields as the OpenAI SDK does, such as model=whisper-1 beside file=@audio.wav"


# Whether a request's Content-Type says its body is a multipart form: a compiled pattern's
# match, a C call where a function would be one more Python frame on every request's path.
is_form = re.compile(r"\s*multipart/form-data\s*(?:;|$)", re.IGNORECASE).match


def form_model(body: bytes, content_type: str) -> tuple[str, bool]:
    """The model the form names, and whether it asks for a stream; a form that cannot be read
    (no boundary, bad framing, cut short) or names no model is the client's mistake (400),
    as a JSON body that cannot be read is (gateway.http.body_model)."""
    boundary = _boundary(content_type)
    fields = _Fields()
    try:
        parser = MultipartParser(boundary, fields.callbacks())
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, FormParserError) as exc:
        raise RequestInvalid(
            f"request body is not a valid multipart/form-data body ({exc}); {_EXAMPLE}"
        ) from None
    if not fields.ended:
        raise RequestInvalid(
            "request body ends before the form's closing boundary (--"
            f"{boundary.decode('latin-1')}--): it was cut short; send the whole form"
        )
    model = fields.values.get(b"model")
    if not model:
        what = 'has an empty "model" field' if model == "" else 'has no "model" field'
        raise RequestInvalid(
            f"the request's form {what}; name the model to use in a text field, "
            "model=... (GET /v1/models lists them)",
            param="model",
        )
    return model, fields.values.get(b"stream", "").strip().lower() in _TRUE


# A Content-Type parameter's name, for what parsers read differently (python-multipart takes
# the last of two boundaries, aiohttp the first: the model routed on would not be the one the
# backend reads). Quoted values are not skipped: a name inside one is refused too.
_PARAM_NAME = re.compile(r";\s*([^\s;=]+)\s*=")
# A part header's RFC 2231 name (name*=UTF-8''...), which python-multipart does not read and
# other parsers do: refused rather than read one way here and another at the backend.
_EXTENDED_NAME = re.compile(rb"(?:^|;)\s*name\*\s*=", re.IGNORECASE)
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a quoted string: a filename may hold "name*="
_NAME = re.compile(rb"(?:^|;)\s*name\s*=", re.IGNORECASE)  # a disposition's name parameter
_UTF8 = (b"utf-8", b"utf8", b"us-ascii", b"ascii")  # ASCII is UTF-8's subset


def _boundary(content_type: str) -> bytes:
    names = [n.lower() for n in _PARAM_NAME.findall(content_type)]
    if names.count("boundary") > 1 or "boundary*" in names:
        raise RequestInvalid(
            "Content-Type multipart/form-data names its boundary more than once (or as "
            "boundary*=): parsers take different ones; send one boundary=..."
        )
    _, params = parse_options_header(content_type)
    charset = params.get(b"charset")
    if charset is not None and charset.lower() not in _UTF8:
        raise RequestInvalid(
            f"Content-Type charset={charset.decode('latin-1')} is not supported for a form: "
            "send its fields as UTF-8"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestInvalid(
            "Content-Type multipart/form-data has no boundary parameter; send the one "
            "that separates the body's parts, as HTTP clients do for a form"
        )
    return boundary


class _Fields:
    """python-multipart's callbacks, keeping the fields in ``_READ`` (as text) and no more."""

    __slots__ = (
        "disposed",
        "encoded",
        "ended",
        "filename",
        "header",
        "header_bytes",
        "name",
        "parts",
        "value",
        "values",
    )

    def __init__(self) -> None:
        self.values: dict[bytes, str] = {}
        self.ended = False
        self.name: bytes | None = None  # the current part's field name, from its headers
        self.filename = False  # the current part is a file
        self.header = (bytearray(), bytearray())  # the current part header's name and value
        self.value: bytearray | None = None  # the current part's bytes, while it is one kept
        self.parts = self.header_bytes = 0
        self.disposed = False  # the current part's Content-Disposition was seen
        self.encoded = False  # the current part has a Content-Transfer-Encoding

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_name,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end_part,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self.parts += 1
        if self.parts > FORM_MAX_PARTS:
            # Each part costs Python calls on the event loop: a 4 MiB body of tiny parts, a
            # few KB gzipped, held it, and every other request and health probe with it.
            raise RequestInvalid(
                f"the form has more than {FORM_MAX_PARTS} parts; send the upload's fields "
                "and its file, not thousands of parts"
            )
        self.name, self.filename, self.value, self.disposed = None, False, None, False
        self.encoded = False

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._spend(end - start)
        self.header[0].extend(data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._spend(end - start)
        self.header[1].extend(data[start:end])

    def _spend(self, n: int) -> None:
        # The parts' headers are parsed here, in Python, on the event loop: under the part cap,
        # parts with 4 KB Content-Dispositions of ";" (a few KB gzipped) held it for seconds.
        self.header_bytes += n
        if self.header_bytes > FORM_MAX_HEADER_BYTES:
            raise RequestInvalid(
                f"the form's part headers are over {FORM_MAX_HEADER_BYTES} bytes in all; an "
                "upload's few fields and its file need a few hundred"
            )

    def _header_end(self) -> None:
        name, value = self.header
        lname = name.strip().lower()
        if lname == b"content-disposition":
            bare = _QUOTED.sub(b'""', value)
            if self.disposed or _EXTENDED_NAME.search(bare) or len(_NAME.findall(bare)) > 1:
                raise RequestInvalid(
                    "a part of the form has two Content-Disposition headers, or names its "
                    'field twice or as name*=: parsers read these differently; send one name="..."'
                )
            self.disposed = True
            _, params = parse_options_header(bytes(value))
            self.name = params.get(b"name")
            self.filename = b"filename" in params
        elif lname == b"content-transfer-encoding":
            self.encoded = True  # a field in base64 is read decoded by some parsers, not here
        name.clear()
        value.clear()

    def _headers_finished(self) -> None:
        if self.name not in _READ:
            return
        shown = self.name.decode("latin-1")
        if self.encoded:
            raise RequestInvalid(
                f'the form\'s "{shown}" field has a Content-Transfer-Encoding: parsers read '
                "it differently; send it as plain text",
                param=shown,
            )
        if self.filename:
            raise RequestInvalid(
                f'the form\'s "{shown}" is a file; send it as a text field, {shown}=...',
                param=shown,
            )
        if self.name in self.values:
            # Which one a backend takes is its parser's choice: routing on the other would
            # send the request where its model is not served.
            raise RequestInvalid(
                f'the request\'s form has more than one "{shown}" field; send one', param=shown
            )
        self.value = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.value is None:
            return
        self.value.extend(data[start:end])
        if len(self.value) > FORM_FIELD_MAX_BYTES:
            shown = (self.name or b"").decode("latin-1")
            raise RequestInvalid(
                f'the form\'s "{shown}" field is over {FORM_FIELD_MAX_BYTES} bytes; '
                "send the model's name",
                param=shown,
            )

    def _end_part(self) -> None:
        if self.value is None or self.name is None:
            return
        try:
            self.values[self.name] = self.value.decode("utf-8")
        except UnicodeDecodeError:
            shown = self.name.decode("latin-1")
            raise RequestInvalid(
                f'the form\'s "{shown}" field is not UTF-8 text; send it as UTF-8', param=shown
            ) from None
        self.value = None

    def _end(self) -> None:
        self.ended = True
