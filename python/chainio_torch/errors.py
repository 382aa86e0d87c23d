"""Exceptions of chainio_torch."""

from __future__ import annotations

try:  # code that catches safetensors' error must catch ours too
    from safetensors import SafetensorError as _UpstreamError
except Exception:  # safetensors not installed (or too old to export it)
    _UpstreamError = None

if _UpstreamError is not None:

    class SafetensorError(ValueError, _UpstreamError):
        """A malformed safetensors file: the message names the file, the tensor and the reason.

        Subclasses ``ValueError`` and, when the ``safetensors`` package is installed, its
        ``SafetensorError``.
        """

else:

    class SafetensorError(ValueError):  # type: ignore[no-redef]
        """A malformed safetensors file: the message names the file, the tensor and the reason."""
