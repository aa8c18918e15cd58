"""AUTOMATIC1111 ``/sdapi/v1`` compatibility: request shapes, translation to :class:`ImageRequest`,
per-key options, the caller's current job, PNG infotext. The routes live in api/routes/sdapi.py."""
