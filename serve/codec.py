"""Request bodies in, response bodies out: base64 PNG frames in JSON, or a raw `.npy` upload.

Every check runs before anything large is decoded (frame count before base64, PNG size and mode
before pixels, the `.npy` header before its data), and every failure is a `RequestError` naming
what is wrong, so bad input costs the server little and never reaches a model.
Status codes: 400 the body cannot be parsed (JSON, base64, PNG, .npy); 422 it parses but does not
fit the model (types, frame count, size, dtype); 413 too large; 415 unsupported media type.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from framecast.models.nbp import MAX_SEED

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> 8-bit PIL mode
ENTROPY_PNG_BITS = 8.0 / 255.0  # an entropy PNG pixel p means p * 8/255 bits (0..8 bits)
JSON_TYPES = ("application/json",)
NPY_TYPES = ("application/x-npy", "application/octet-stream")
NPZ_TYPE = "application/x-npz"


class RequestError(Exception):
    """A client error: an HTTP status, a short machine-readable code, one line for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class InputSpec:
    """What a deployed model accepts: frames of (height, width, channels), a context of
    `min_context_frames` (default: one step) plus a multiple of `frames_per_step` frames, up to
    `max_context_frames`."""

    height: int
    width: int
    channels: int
    frames_per_step: int
    max_context_frames: int
    max_future_frames: int
    min_context_frames: int = 0  # 0: frames_per_step

    @property
    def least(self) -> int:
        return self.min_context_frames or self.frames_per_step


# Every `error` code a response can carry (ErrorBody.error's enum in the OpenAPI schema; a test
# checks each RequestError raised in serve/ is listed).
ERROR_CODES = ("bad_json", "invalid_field", "bad_base64", "too_many_frames", "bad_frame_count",
               "png_unsupported", "not_png", "bad_png", "wrong_frame_size", "wrong_png_mode",
               "bad_npy", "wrong_dtype", "wrong_shape", "body_too_large",
               "too_many_future_frames", "rejected_by_model", "unavailable", "wrong_route",
               "unknown_model", "unsupported_media_type", "internal", "http_error")
ErrorCode = Literal[ERROR_CODES]  # type: ignore[valid-type]

# One frame as JSON carries it: the schema says so (OpenAPI 3.1: base64 PNG bytes).
PngFrame = Annotated[StrictStr, Field(json_schema_extra={
    "format": "byte", "contentEncoding": "base64", "contentMediaType": "image/png"})]


class PredictRequest(BaseModel):
    """Context frames, oldest first, each a base64-encoded 8-bit PNG of the model's frame size."""

    model_config = ConfigDict(extra="forbid")
    frames: list[PngFrame] = Field(min_length=1, description="base64 PNG frames, oldest first")


class RolloutRequest(PredictRequest):
    """Context frames plus how many future frames to predict, feeding predictions back."""

    future_frames: StrictInt = Field(gt=0, description="frames to predict after the context")


class GenerateRequest(PredictRequest):
    """Context frames, how many frames to generate after them, and how to sample the tokens."""

    future_frames: StrictInt = Field(gt=0, description="frames to generate after the context")
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False,
                               description="sampling temperature; 0 = greedy")
    top_k: StrictInt | None = Field(None, ge=1, description="sample among the k likeliest "
                                                            "tokens; absent = all")
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED,
                            description="the same seed gives the same frames (64 bits)")


def check_content_type(content_type: str | None) -> str:
    """'json' or 'npy' from a Content-Type header (absent means JSON)."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media in JSON_TYPES:
        return "json"
    if media in NPY_TYPES:
        return "npy"
    raise RequestError(415, "unsupported_media_type",
                       f"Content-Type {media!r} is not accepted; send application/json "
                       f"(base64 PNG frames) or application/x-npy (a uint8 .npy array)")


def parse_json(body: bytes, schema: type[BaseModel]) -> BaseModel:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, "bad_json", f"body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "bad_json", "body is JSON nested too deeply") from None
    try:
        return schema.model_validate(document)
    except ValidationError as err:
        raise RequestError(422, "invalid_field", validation_message(err)) from None


def validation_message(err: ValidationError) -> str:
    """Pydantic's errors as one line: 'frames.2: Input should be a valid string; ...'."""
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def check_count(count: int, spec: InputSpec) -> None:
    step, most, least = spec.frames_per_step, spec.max_context_frames, spec.least
    if count > most:
        raise RequestError(422, "too_many_frames",
                           f"{count} context frames; this model takes at most {most}")
    if count < least or (count - least) % step:
        what = (f"a positive multiple of {step}" if least == step else
                f"{least} plus a multiple of {step}")
        raise RequestError(422, "bad_frame_count",
                           f"{count} context frames; send {what} (the model reads {step} "
                           f"frames per time step), at most {most}")


def decode_png_frames(encoded: list[str], spec: InputSpec) -> np.ndarray:
    """base64 PNG strings -> uint8 (T, H, W, C), each checked against the model's frame shape."""
    check_count(len(encoded), spec)
    mode = PNG_MODES.get(spec.channels)
    if mode is None:
        raise RequestError(415, "png_unsupported", f"the model reads {spec.channels} channels, "
                           "which PNG cannot hold; send a .npy array")
    frames = np.empty((len(encoded), spec.height, spec.width, spec.channels), dtype=np.uint8)
    for i, text in enumerate(encoded):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(400, "bad_base64", f"frames[{i}] is not valid base64: {err}"
                               ) from None
        if not data.startswith(PNG_SIGNATURE):
            raise RequestError(400, "not_png", f"frames[{i}] is not a PNG image (its bytes "
                               f"start {data[:8]!r}, not the PNG signature)")
        try:
            image = Image.open(io.BytesIO(data), formats=["PNG"])
        except Exception as err:  # PIL raises many types for damaged headers
            raise RequestError(400, "bad_png",
                               f"frames[{i}] is a damaged PNG: {_no_repr(err)}") from None
        if image.size != (spec.width, spec.height):
            raise RequestError(422, "wrong_frame_size",
                               f"frames[{i}] is {image.size[0]}x{image.size[1]} (WxH); this "
                               f"model takes {spec.width}x{spec.height}")
        if image.mode != mode:
            raise RequestError(422, "wrong_png_mode",
                               f"frames[{i}] is a PNG of mode {image.mode}; this model reads "
                               f"{spec.channels} channel(s): send 8-bit mode {mode}")
        try:
            pixels = np.asarray(image)
        except Exception as err:
            raise RequestError(400, "bad_png",
                               f"frames[{i}] is a damaged PNG: {_no_repr(err)}") from None
        frames[i] = pixels.reshape(spec.height, spec.width, spec.channels)
    return frames


def _no_repr(err: Exception) -> str:
    """PIL's message without the object it read from ("cannot identify image file <_io.BytesIO
    object at 0x7f...>"): a client learns nothing from our memory addresses."""
    return re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__


def decode_npy(body: bytes, spec: InputSpec) -> np.ndarray:
    """A `.npy` upload -> uint8 (T, H, W, C); (T, H, W) is accepted for one-channel models.

    The header is read and checked first (dtype, shape, byte count), so an object array is refused
    before anything could be unpickled, and a header claiming a huge shape allocates nothing.
    """
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as err:
        raise RequestError(400, "bad_npy", f"body is not a .npy array: {err}") from None
    if dtype != np.uint8:
        raise RequestError(422, "wrong_dtype", f"the .npy array is {dtype}; send uint8 pixels")
    if len(shape) == 3 and spec.channels == 1:
        shape = (*shape, 1)
    if len(shape) != 4:
        raise RequestError(422, "wrong_shape", f"the .npy array has shape {shape}; send "
                           f"(T, H, W, C) = (T, {spec.height}, {spec.width}, {spec.channels})")
    check_count(shape[0], spec)
    if tuple(shape[1:]) != (spec.height, spec.width, spec.channels):
        raise RequestError(422, "wrong_frame_size",
                           f"frames are {tuple(shape[1:])} (H, W, C); this model takes "
                           f"{(spec.height, spec.width, spec.channels)}")
    if len(body) - stream.tell() != int(np.prod(shape)):
        raise RequestError(400, "bad_npy", f"the .npy data holds {len(body) - stream.tell()} "
                           f"bytes; its header promises {int(np.prod(shape))}")
    array = np.load(io.BytesIO(body), allow_pickle=False)
    return np.ascontiguousarray(array.reshape(shape))


def encode_png(frame: np.ndarray) -> str:
    """uint8 (H, W, C) -> base64 PNG."""
    channels = frame.shape[-1]
    image = Image.fromarray(frame[..., 0] if channels == 1 else frame, PNG_MODES[channels])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    """base64 PNG -> uint8 (H, W, C), unchecked: for clients reading the answers."""
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(text)), formats=["PNG"]))
    return pixels.reshape(*pixels.shape[:2], -1)


def encode_png_frames(frames: np.ndarray) -> list[str]:
    return [encode_png(frame) for frame in frames]


def entropy_to_png_bytes(entropy: np.ndarray) -> np.ndarray:
    """Entropy in bits (0..8) -> uint8 pixels, p = round(bits / ENTROPY_PNG_BITS): a viewable map
    (255 = the 8 bits of a uniform byte); the exact floats come with the .npy output."""
    return np.clip(np.rint(entropy / ENTROPY_PNG_BITS), 0, 255).astype(np.uint8)


def encode_npz(**arrays: np.ndarray) -> bytes:
    """Arrays -> `.npz` bytes (plain arrays: loadable with allow_pickle=False)."""
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()
