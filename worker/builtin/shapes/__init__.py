"""The built-in shapes model (``SFUMATO_MODEL=shapes``, make run's default): a small Stable
Diffusion pipeline that draws coloured shapes at named places, committed as a diffusers folder of
safetensors. How it was trained and measured lives outside the shipped packages, in
``training/shapes/``."""

from pathlib import Path

#: The committed, trained shapes model (a diffusers folder of safetensors).
MODEL_DIR = Path(__file__).resolve().parent / "model"
