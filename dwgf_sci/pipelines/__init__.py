"""End-to-end jobs behind the CLI, usable from Python: simulate, reconstruct, demo."""

from __future__ import annotations

from .reconstruct import ReconstructionResult, reconstruct_file, reconstruct_files
from .simulate import simulate

__all__ = ["ReconstructionResult", "reconstruct_file", "reconstruct_files", "simulate"]
