"""A restricted unpickler for the ``refer`` annotation pickles (``refs(unc).p`` and friends).

``pickle.load`` runs whatever callable a file names, so a tampered ``refs(*.p)`` downloaded from
a mirror could execute code on the training machine. The refs pickles only ever hold dicts, lists,
strings, ints and floats, so :func:`safe_load` admits builtin containers and scalars and nothing
else: any other global (``os.system``, a custom class, ``numpy`` arrays, ...) raises
:class:`UnsafePickleError` *before* it is called.

The original files were written by Python 2 with protocol 2: their ``str`` objects are bytes.
Each is decoded on its own as UTF-8 and, if that fails, as latin-1 (which never fails), so every
string comes back as a Python 3 ``str`` (so would genuine ``bytes``: refs pickles have none).
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
from typing import IO, Any

__all__ = ["UnsafePickleError", "SafeUnpickler", "safe_load", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global that is not a builtin container or scalar (or is corrupt).

    Also a ``ValueError`` (a bad input file, whose message names it), so the ``coprs`` command
    reports it in one line as it does other unreadable data.
    """


def _checked_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` limited to builtin container/scalar types.

    Python 2 protocol-2 pickles of e.g. a ``dict`` subclass go through this helper; its arguments
    were themselves resolved by :meth:`SafeUnpickler.find_class`, and this check keeps it from
    ever constructing anything else.
    """
    if cls not in _SAFE_TYPES or (base is not object and base not in _SAFE_TYPES):
        raise UnsafePickleError(
            f"copyreg._reconstructor called with {cls!r}/{base!r}: only builtin containers and "
            "scalars may be reconstructed"
        )
    return copyreg._reconstructor(cls, base, state)


def _checked_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` at protocol <= 2 (latin-1 only)."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not the latin-1 bytes "
            "encoding pickle uses for plain bytes"
        )
    return obj.encode("latin-1", errors)


_SAFE_TYPES: frozenset[type] = frozenset(
    {dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool}
)

# (module, name) -> object; Python 2 names map onto their Python 3 builtins.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("builtins", "__builtin__"):
    for _type in _SAFE_TYPES:
        _ALLOWED[(_module, _type.__name__)] = _type
_ALLOWED[("__builtin__", "unicode")] = str
_ALLOWED[("__builtin__", "long")] = int
for _module in ("copy_reg", "copyreg"):
    _ALLOWED[(_module, "_reconstructor")] = _checked_reconstructor
_ALLOWED[("_codecs", "encode")] = _checked_codecs_encode


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose :meth:`find_class` admits only builtin containers and scalars.

    Args:
        file: Binary file object to read from.
        source: Name used in error messages (usually the file path).
        **kwargs: Passed to ``pickle.Unpickler`` (``encoding``, ``errors``).
    """

    def __init__(self, file: IO[bytes], source: str = "<stream>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if it is on the allow-list; never import anything."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load forbidden global '{module}.{name}'. This file is "
                "not a plain refs pickle (those contain only dicts, lists, strings and numbers), so "
                "it was not unpickled. Re-download the annotation from a trusted source."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Reject persistent ids (plain refs pickles have none)."""
        raise UnsafePickleError(
            f"{self.source}: persistent id {pid!r} found; this file is not a plain refs pickle"
        )


def _bytes_to_str(obj: Any) -> Any:
    """Recursively turn ``bytes`` (Python 2 ``str``) into ``str``: UTF-8, else latin-1."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_bytes_to_str(k): _bytes_to_str(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_bytes_to_str(v) for v in obj]
    if isinstance(obj, (tuple, set, frozenset)):
        return type(obj)(_bytes_to_str(v) for v in obj)
    return obj


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler` (see :func:`safe_load`).

    Args:
        data: The pickle bytes.
        source: Name used in error messages.

    Returns:
        The unpickled object (builtin containers and scalars only; every byte string decoded to
        ``str``, as UTF-8 when valid, else latin-1, string by string).

    Raises:
        UnsafePickleError: On a forbidden global or a corrupt/truncated pickle.
    """
    try:
        # encoding="bytes" keeps Python 2 str as bytes, so each one can be decoded on its own
        # (a file-wide latin-1 fallback would garble every valid UTF-8 sentence in the file).
        obj = SafeUnpickler(io.BytesIO(data), source, encoding="bytes").load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
        raise UnsafePickleError(
            f"{source}: not a readable pickle ({type(err).__name__}: {err}); the file may be "
            "truncated or corrupt"
        ) from err
    return _bytes_to_str(obj)


def safe_load(path_or_file: str | os.PathLike | IO[bytes]) -> Any:
    """Load a refs pickle without letting it run code.

    Args:
        path_or_file: Path of the pickle, or an open binary file object.

    Returns:
        The unpickled object; only ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``,
        ``int``, ``float``, ``complex``, ``bool`` and ``None`` can occur. Python 2 byte strings
        (and any bytes) come back as ``str`` (UTF-8, else latin-1, per string).

    Raises:
        FileNotFoundError: If the path does not exist.
        UnsafePickleError: (a ``pickle.UnpicklingError`` and ``ValueError``) naming the file and the forbidden
            ``module.name`` if the pickle references anything else, or if it is corrupt.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        source = os.fspath(path_or_file)
        with open(source, "rb") as f:
            data = f.read()
    else:
        source = str(getattr(path_or_file, "name", "<stream>"))
        data = path_or_file.read()
    return safe_loads(data, source)
