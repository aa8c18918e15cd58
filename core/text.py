"""Text the worker can encode: one check for every text field the API accepts.

JSON may carry a lone UTF-16 surrogate (``"\\ud800"``), which Python decodes into a ``str``
that cannot be encoded as UTF-8: the CLIP tokenizer raises on it (``TypeError: TextEncodeInput
must be ...``), and so do the PNG and EXIF metadata writers. Such a request used to be
accepted and fail on the worker, together with every job batched with it. NUL is refused too:
it means nothing in a prompt or a name, and it cuts the text short for C-string consumers
(log pipelines, image viewers reading the PNG ``parameters`` chunk). Other control characters
are harmless in free text (the tokenizer treats them as whitespace or bytes) but never belong in
a name (model, scheduler, LoRA, webhook URL), where they are refused as well.

Use the annotated types: :data:`Text` for free text (prompts), :data:`Name` for identifiers and
URLs. They run *before* pydantic's own ``str`` checks, so every field fails the same way, with a
message that names the character and its position (the API adds the field as ``param``).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

#: pydantic error type of a refused text; the API turns it into a 422 ``invalid_request``.
ERROR_TYPE = "invalid_text"


def _is_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udfff"


def encodable(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD, so it can be written as UTF-8.

    For echoing stored text back (a job view's prompt): the API refuses such text, but a job
    that reached the queue another way (an old API replica, a hand-made job) must still be
    viewable; without this its view could not be encoded and answered 500."""
    if not any(_is_surrogate(char) for char in value):
        return value
    return "".join("\ufffd" if _is_surrogate(char) else char for char in value)


def text_problem(value: str, *, name: bool = False) -> str | None:
    """Why ``value`` cannot be accepted, or None. ``name``: also refuse control characters."""
    for position, char in enumerate(value):
        if _is_surrogate(char):
            return (
                f"contains a lone UTF-16 surrogate (U+{ord(char):04X}) at character {position}, which is not "
                "valid Unicode text; send the character itself, or a surrogate pair that forms one"
            )
        if char == "\x00":
            return f"contains a NUL character (U+0000) at character {position}; remove it"
        if name and unicodedata.category(char) == "Cc":
            return f"contains a control character (U+{ord(char):04X}) at character {position}; remove it"
    return None


def _checked(name: bool) -> Any:
    def check(value: Any) -> Any:
        # Anything but a str is left to pydantic's own type check, which names the field.
        if isinstance(value, str):
            problem = text_problem(value, name=name)
            if problem is not None:
                raise PydanticCustomError(ERROR_TYPE, problem)
        return value

    return BeforeValidator(check)


#: Free text (prompt, negative prompt): no lone surrogate, no NUL.
Text = Annotated[str, _checked(name=False)]
#: A name or URL (model, scheduler, LoRA, ControlNet, webhook URL, OpenAI ``user``): no lone
#: surrogate and no control character at all.
Name = Annotated[str, _checked(name=True)]
