"""The one exception verification raises."""

from __future__ import annotations

__all__ = ["VerificationError", "SigningError", "printable"]


def printable(text: str) -> str:
    """Render a file name or value on one line: control characters, newlines and undecodable bytes escaped."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


class VerificationError(Exception):
    """A model or a bundle failed verification; verification always fails closed with one of these.

    ``str(err)`` is one line naming the cause and, when there is one, the file (``hash mismatch: weights/a.bin``).
    ``reason`` is a CamelCase word for machines (status conditions, metrics); ``path`` is the file's POSIX path
    relative to the model directory, or None.

    Reasons: MalformedBundle, UnsupportedBundle, UntrustedKey, BadSignature, WrongPayloadType, WrongStatementType,
    WrongPredicateType, InconsistentManifest, PathTraversal, UnsupportedHash, HashMismatch, MissingFile, ExtraFile,
    Symlink, SpecialFile, UnreadableFile, NotFound.
    """

    def __init__(self, reason: str, message: str, path: str | None = None):
        message = printable(message)  # control characters escaped: always one line
        super().__init__(message)
        self.reason = reason
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"VerificationError(reason={self.reason!r}, message={self.message!r}, path={self.path!r})"

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.reason, self.message, self.path))


class SigningError(Exception):
    """Signing could not produce a bundle (no files, a symlink, an unsupported key or option)."""
