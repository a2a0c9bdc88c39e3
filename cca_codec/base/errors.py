"""Error types of ccacodec, each tied to the process exit code the CLI returns for it.

Exit codes (documented in README.md):

====  ==========================================================
 0    success
 1    internal error (a bug: please report it)
 2    usage error (bad option or argument)
 3    unreadable or unsupported input image, or unwritable output
 4    corrupt, truncated or unsupported ``.cca`` file
 5    model missing, unreadable, or not the one a file was made with
 130  interrupted (Ctrl-C)
====  ==========================================================
"""
from __future__ import annotations


class CodecError(Exception):
    """Base class of every error ccacodec reports to users as a one-line message."""

    exit_code: int = 1


class UsageError(CodecError):
    """An option or argument combination that cannot work."""

    exit_code = 2


class InputError(CodecError):
    """An input image that cannot be read, or an output path that cannot be written."""

    exit_code = 3


class FormatError(CodecError):
    """A ``.cca`` file that is corrupt, truncated, or of a version or feature we do not support."""

    exit_code = 4


class ModelError(CodecError):
    """A model that is missing, unreadable, or does not match the file being decoded."""

    exit_code = 5


EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """``text`` with its lines joined by "; ", so that every message is one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
