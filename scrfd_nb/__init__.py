__version__ = "0.1.0"
"""SCRFD face detection in literate, pure PyTorch.

The modules are exported from the notebooks in `nbs/`; this file (the one module nbdev does not generate)
only re-exports the main entry points, lazily, so `import scrfd_nb` stays cheap and has no import cycles."""

_ENTRY_POINTS = {
    'get_config': 'config', 'PRESETS': 'config',
    'build_model': 'model', 'load_model': 'model', 'SCRFD': 'model',
    'load_reference_state_dict': 'model',
    'atss_assign': 'assign',
    'evaluate_widerface': 'evaluate',
    'shared_dir': 'core',
}

def __getattr__(name):
    mod = _ENTRY_POINTS.get(name)
    if mod is None: raise AttributeError(f"module 'scrfd_nb' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f'scrfd_nb.{mod}'), name)

def __dir__(): return sorted(list(globals()) + list(_ENTRY_POINTS))
