"""The progress bar class: tqdm's notebook widget where ``ipywidgets`` is installed, else text.

``tqdm.auto`` in a notebook without ``ipywidgets`` warns ("IProgress not found") and falls back
to the text bar; choosing the text bar up front gives the same bar without the warning.
"""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm import tqdm

__all__ = ["tqdm"]
