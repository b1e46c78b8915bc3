"""Where torch work runs: one rule for every command's ``--device``."""

from __future__ import annotations

from pipeline.errors import UserError

DEVICES = ("auto", "cuda", "cpu")


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; anything else, or 'cuda' without a
    GPU, is a one-line ``UserError``."""
    import torch

    if device not in DEVICES:
        raise UserError(f"--device must be auto, cuda or cpu (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available "
                        "(torch.cuda.is_available() is False); use --device cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
