"""The GPU side, in rooms: ``runtime/`` (RQ loop, batching, execution, uploads, health,
metrics, progress), ``pipelines/`` (model residency and families) and ``builtin/`` (the
built-in models). ``python -m worker`` (``sfumato-worker``) starts one worker."""
