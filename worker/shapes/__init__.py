"""The built-in shapes world: a deterministic scene generator with captions, a scorer that
reads a generated image back (colours, shape, position), the script that trains a small model
that draws what the prompt says, and that model (``SFUMATO_MODEL=shapes``, make run's default)."""

from pathlib import Path

#: The committed, trained shapes model (a diffusers folder of safetensors; see train.py).
MODEL_DIR = Path(__file__).resolve().parent / "model"
