"""``CHAINIO_AUTOPATCH=1 python your_script.py``: patch safetensors as soon as it is imported.

``chainio_autopatch.pth`` (installed at the root of site-packages) runs one line at every
interpreter start; unless ``CHAINIO_AUTOPATCH`` is set to something other than ``0``/``false``/
``no``/``off`` it does nothing else than read that variable. When it is set, it calls
``install()`` below, which puts a finder at the front of ``sys.meta_path``. The finder imports
nothing: it only notices when ``safetensors`` and ``safetensors.torch`` are imported, lets the
normal machinery find and execute them, and right after each one's code has run it calls the
hook's patch for what is loaded by then. Once ``safetensors.torch`` is patched the finder removes
itself; ``chainio_torch.unpatch()`` removes it too.
"""

from __future__ import annotations

import sys

_WATCHED = ("safetensors", "safetensors.torch")
# Watched while the hook is patched, whichever way it was turned on: the hook also replaces a
# function of this module (from_pretrained's shard lookup, to prefetch), if it is ever imported.
_TRANSFORMERS = "transformers.modeling_utils"
_FALSE = ("", "0", "false", "no", "off")


def enabled(value) -> bool:
    """Whether a ``CHAINIO_AUTOPATCH`` value turns the hook on (what the .pth line tests)."""
    return value is not None and value.strip().lower() not in _FALSE


class _PatchAfterExec:
    """Wraps a module's loader: runs the module, then patches. Everything else is delegated."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch_now()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """Meta path finder that hands out the real spec of the watched modules with its loader
    wrapped; returns None for every other module."""

    watched = _WATCHED + (_TRANSFORMERS,)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.watched:
            return None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _Finder):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchAfterExec(spec.loader)
        return spec

    def invalidate_caches(self):
        return None


class _TransformersFinder(_Finder):
    """Installed by patch() while transformers.modeling_utils is not loaded yet."""

    watched = (_TRANSFORMERS,)


def _patch_now() -> None:
    try:
        from . import hook

        if hook.is_patched() or any(type(f) is _Finder for f in sys.meta_path):
            hook._patch_loaded()
    except Exception as e:  # never break the user's import
        print(f"chainio_torch: CHAINIO_AUTOPATCH could not patch safetensors "
              f"({type(e).__name__}: {e}); loading without ChainIO", file=sys.stderr)
    if all(m in sys.modules for m in _WATCHED + (_TRANSFORMERS,)):
        uninstall()


def watch_transformers() -> None:
    """Patch transformers.modeling_utils when it gets imported (the hook is active)."""
    if _TRANSFORMERS not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersFinder())


def install() -> None:
    """Patch now what is imported already, and install the finder for the rest."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    if "safetensors" in sys.modules:
        _patch_now()
    if "safetensors.torch" not in sys.modules:
        sys.meta_path.insert(0, _Finder())


def installed() -> bool:
    return any(isinstance(f, _Finder) for f in sys.meta_path)


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
