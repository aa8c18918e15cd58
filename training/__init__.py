"""How the built-in models were made: never shipped in a package or an image.

Like diffusers' ``examples/``, this lives outside the packages that ship; the worker ships only
the trained files (``worker/builtin/shapes/model``).
"""
