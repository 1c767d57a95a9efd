"""The tests' SSE reader splits events where SSE does (LF, CRLF), not where ``str.splitlines`` does: a generated
token may be U+2028 or U+0085, sent raw inside a JSON string."""

import httpx
import pytest

from tests.support.load import read_stream, sse_lines

pytestmark = pytest.mark.unit


def _response(body: bytes) -> httpx.Response:
    return httpx.Response(200, stream=httpx.ByteStream(body))


def test_a_line_separator_inside_a_json_string_does_not_cut_the_event():
    body = ('data: {"choices":[{"index":0,"text":"a\u2028b\x85c","finish_reason":"length"}]}\r\n\r\n'
            "data: [DONE]\n\n").encode()
    assert [line for line in sse_lines(_response(body)) if line] == [
        'data: {"choices":[{"index":0,"text":"a\u2028b\x85c","finish_reason":"length"}]}', "data: [DONE]"]
    assert read_stream(_response(body)) == (None, 1)
