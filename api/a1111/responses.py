"""A succeeded job -> A1111's txt2img/img2img answer: ``images``, ``parameters``, ``info``.

``images`` are base64 PNGs exactly as stored (their infotext included); ``parameters`` echoes
the request as A1111 does (init images and mask left out, as A1111 blanks them; the model's
defaults filled in where the request left a field out); ``info`` is
A1111's ``Processed.js()``: a JSON *string* (clients ``json.loads`` it) with the seeds, prompts,
infotexts, sampler, size and model of what actually ran.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from PIL import Image

from api.a1111.models import GenerationRequest
from core.jobs import JobRecord
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES
from core.schemas import JobPayload
from core.storage import LocalStore, S3Store

#: Echoed as null: A1111 blanks the uploads in ``parameters`` (they can be megabytes).
_BLANKED = ("init_images", "mask")
#: Never echoed: not A1111's fields, and ``auth`` holds a password (api/a1111/models.py).
_DROPPED = {"url", "auth"}


def _infotext(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        text = image.info.get("parameters")
    return text if isinstance(text, str) else ""


def echoed_parameters(body: GenerationRequest, payload: JobPayload) -> dict[str, Any]:
    """A1111's ``parameters``: the request with its defaults filled in. A1111's defaults are
    constants (512 x 512, 50 steps...); ours are the model's, known only once resolved, so the
    fields left out are filled from the job. ``seed`` stays as sent (-1), as in A1111."""
    unset_extras = {"clip_skip"} if body.clip_skip is None else set()  # SD.Next's, not A1111's
    parameters = body.model_dump(mode="json", exclude=_DROPPED | unset_extras)
    for field in _BLANKED:
        if field in parameters:
            parameters[field] = None
    resolved = {
        "steps": payload.steps,
        "cfg_scale": payload.guidance_scale,
        "width": payload.width,
        "height": payload.height,
        "sampler_name": SCHEDULER_DISPLAY_NAMES.get(payload.scheduler, payload.scheduler),
    }
    for field, value in resolved.items():
        if parameters.get(field) is None:
            parameters[field] = value
    return parameters


def generation_response(body: GenerationRequest, record: JobRecord, store: LocalStore | S3Store) -> dict[str, Any]:
    """The answer for ``body`` once its job succeeded (blocking: reads the images from the store)."""
    assert record.result is not None
    payload = record.payload
    blobs = [store.get(image.key) for image in record.result.images]
    infotexts = [_infotext(blob) for blob in blobs]
    seeds = [image.seed for image in record.result.images]
    prompt = payload.prompt if payload.prompt_as_written is None else payload.prompt_as_written
    info = {
        "prompt": prompt,
        "all_prompts": [prompt] * len(seeds),
        "negative_prompt": payload.negative_prompt,
        "all_negative_prompts": [payload.negative_prompt] * len(seeds),
        "seed": seeds[0] if seeds else payload.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": payload.width,
        "height": payload.height,
        "sampler_name": SCHEDULER_DISPLAY_NAMES.get(payload.scheduler, payload.scheduler),
        "cfg_scale": payload.guidance_scale,
        "steps": payload.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": payload.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": payload.strength,
        "extra_generation_params": {"Sfumato job": payload.job_id},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(payload.created_at)),
        "clip_skip": payload.clip_skip + 1,
        "is_using_inpainting_conditioning": False,
        "version": "sfumato",
    }
    parameters = echoed_parameters(body, payload)
    images = [base64.b64encode(blob).decode() for blob in blobs] if body.send_images else []
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}
