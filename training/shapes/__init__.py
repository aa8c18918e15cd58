"""The shapes world: a deterministic scene generator with captions (``scenes``), a model-free
scorer that reads a generated image back (``scorer``), the recipe that trains the built-in
shapes model (``train``) and its evaluation (``evaluate``). The trained model is served from
``worker/builtin/shapes/model`` as ``SFUMATO_MODEL=shapes``."""
