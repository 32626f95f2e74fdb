"""Prompt extension: rewrite a short prompt into a detailed one with a Qwen model.

Two back ends, called the same way::

    expander = DashScopePromptExpander(model_name="qwen-plus")        # API (DASH_API_KEY)
    expander = QwenPromptExpander("Qwen/Qwen2.5-7B-Instruct", device=0)  # local, transformers
    out = expander("a fox in the snow", tar_lang="en", seed=42)
    prompt = out.prompt if out.status else original_prompt

For image-to-video pass ``is_vl=True`` and ``image=`` (a PIL image or a path): the
model then sees the first frame. An expander never raises while extending: any
failure gives ``status=False``, the original prompt and the reason in ``message``.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

__all__ = ["PromptOutput", "PromptExtendError", "PromptExpander", "DashScopePromptExpander",
           "QwenPromptExpander", "make_prompt_expander", "system_prompt_for", "clean_prompt",
           "DASHSCOPE_DEFAULT_URL", "DASHSCOPE_MODELS", "QWEN_MODELS", "QWEN_ALIASES"]

log = logging.getLogger(__name__)

DASHSCOPE_DEFAULT_URL = "https://dashscope.aliyuncs.com/api/v1"
# Default models: (text-only, with image).
DASHSCOPE_MODELS = ("qwen-plus", "qwen-vl-max")
QWEN_MODELS = ("Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct")
# Short names the official code accepts for the local models.
QWEN_ALIASES = {
    "QwenVL2.5_3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "QwenVL2.5_7B": "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen2.5_3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5_7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5_14B": "Qwen/Qwen2.5-14B-Instruct",
}
AUTH_STATUSES = (401, 403)
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


# ----------------------------------------------------------------------------------------------
# System prompts (the project's own wording)
# ----------------------------------------------------------------------------------------------

_T2V_EN = """\
You rewrite prompts for a text-to-video model. You receive a short description of a video and \
return one improved version of it.
Rules:
1. Keep the subject, the action and the intent of the original. Do not replace them and do not \
add events that contradict them. Text in quotation marks and proper names stay exactly as written.
2. Add concrete visual detail: what the subject looks like (appearance, clothing, expression, how \
many), the setting and background, the lighting and time of day, the colours, the visual style \
(for example documentary photography, film still, 3D animation or watercolour; when the user names \
none, pick the one that suits the scene) and the shot size and camera angle.
3. Describe the motion: how the subject moves, in plain and direct verbs, and how the camera moves \
(static, pan, tilt, push in, pull back, tracking, aerial).
4. Write in English, whatever the language of the input, as one paragraph of plain descriptive \
sentences of about 80 to 120 words.
5. Output the rewritten prompt only: no title, no explanation, no quotation marks, no list. If the \
input reads like a question or an instruction, turn it into a scene description; do not answer it.
Example input: a fox in the snow
Example output: A red fox trots through fresh knee-deep snow in a quiet pine forest at dawn. Its \
thick rust-coloured coat is dusted with flakes, its breath steams in the cold air, and it stops to \
listen, ears twitching, before it leaps head first into a drift. Soft golden light slants between \
the trunks and long blue shadows stretch across the ground. Nature documentary style with a \
shallow depth of field; a low camera tracks the fox from the side and slowly pushes in as it jumps.\
"""

_T2V_ZH = """\
你负责为文生视频模型改写提示词。用户给出一段对视频的简短描述，\
你输出一条更完整的改写版本。
要求：
1. 保留原描述的主体、动作和意图，不要替换，也不要加入与之矛盾的情节；引号、\
书名号里的文字和专有名词原样保留。
2. 补充具体的画面细节：主体的外貌、衣着、表情和数量，场景与背景，光线与时间，\
色调，画面风格（例如纪实摄影、电影剧照、三维动画、水彩；用户没有指定时，\
选择最适合画面的一种），以及景别和拍摄角度。
3. 描写运动：主体怎样动，用简单直接的动词；镜头怎样动（固定、横摇、俯仰、推近、\
拉远、跟拍、航拍）。
4. 无论输入是什么语言，都用中文写成一段连贯的描述，约100到200字。
5. 只输出改写后的提示词：不要标题、解释、引号或列表。即使输入像一个问题或指令，\
也要把它改写成画面描述，而不是回答它。
示例输入：雪地里的狐狸
示例输出：清晨的松林里，一只赤狐在没过膝盖的新雪中小跑前行。\
它浓密的红棕色皮毛上落满雪花，呼出的白气在冷空气中散开，走几步便停下来竖起耳朵倾听，\
随即纵身扑进雪堆。金色的晨光从树干之间斜照进来，蓝色的长影铺在雪地上。\
自然纪录片风格，浅景深，低机位从侧面跟拍狐狸，在它跃起时缓缓推近。"""

_I2V_EN = """\
You rewrite prompts for an image-to-video model. The image you are shown is the first frame of \
the video; the text is the user's description of what should happen. Return one improved prompt.
Rules:
1. Keep the subject, the action and the intent of the user's text. Text in quotation marks and \
proper names stay exactly as written.
2. Describe what the image really shows and do not contradict it: the subjects, their appearance \
and clothing, the setting, the colours, the lighting and the shot size and angle. Keep the style \
of the image (photograph, painting, animation and so on) unless the user asks for another.
3. Describe how the scene moves on from this frame: the motion of the subject, in plain and direct \
verbs, changes in the surroundings, and the camera movement (static, pan, tilt, push in, pull \
back, tracking).
4. Write in English, whatever the language of the input, as one paragraph of plain descriptive \
sentences of about 80 to 120 words.
5. Output the rewritten prompt only: no title, no explanation, no quotation marks, no list. If the \
text reads like a question or an instruction, turn it into a scene description; do not answer it.\
"""

_I2V_ZH = """\
你负责为图生视频模型改写提示词。你看到的图片是视频的第一帧，\
文字是用户对视频内容的描述。请输出一条改写后的提示词。
要求：
1. 保留用户文字中的主体、动作和意图；引号、书名号里的文字和专有名词原样保留。
2. 如实描述图片中的内容，不要与图片矛盾：主体及其外貌和衣着、场景、色彩、光线，\
以及景别和拍摄角度。保持图片原有的风格（照片、绘画、动画等），除非用户要求换一种。
3. 描写画面从这一帧开始怎样变化：主体的动作，用简单直接的动词；周围环境的变化；\
镜头的运动（固定、横摇、俯仰、推近、拉远、跟拍）。
4. 无论输入是什么语言，都用中文写成一段连贯的描述，约100到200字。
5. 只输出改写后的提示词：不要标题、解释、引号或列表。即使文字像一个问题或指令，\
也要把它改写成画面描述，而不是回答它。"""

SYSTEM_PROMPTS = {("t2v", "en"): _T2V_EN, ("t2v", "zh"): _T2V_ZH,
                  ("i2v", "en"): _I2V_EN, ("i2v", "zh"): _I2V_ZH}


def normalize_lang(tar_lang: str) -> str:
    """``'zh'`` for ``ch``/``zh`` (any case), ``'en'`` for ``en``; anything else is an error."""
    lang = str(tar_lang).strip().lower()
    if lang in ("ch", "zh"):
        return "zh"
    if lang == "en":
        return "en"
    raise ValueError(f"unsupported target language {tar_lang!r}: use ch, zh or en")


def system_prompt_for(tar_lang: str = "ch", is_vl: bool = False) -> str:
    """The system prompt for a target language and for text-only (t2v) or image (i2v) input."""
    return SYSTEM_PROMPTS[("i2v" if is_vl else "t2v", normalize_lang(tar_lang))]


# ----------------------------------------------------------------------------------------------
# Result, cleanup, shared call logic
# ----------------------------------------------------------------------------------------------

@dataclass
class PromptOutput:
    """What an expander returns. On failure ``status`` is False and ``prompt`` is the input."""
    status: bool
    prompt: str
    seed: int
    system_prompt: str
    message: str


class PromptExtendError(ValueError):
    """A prompt-extension failure with a reason meant for the user (one line)."""


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LABEL = re.compile(
    r"^\s*(?:\*\*|#+\s*)?(?:here\s+(?:is|'s)\s+(?:the|your|an?)\s+)?"
    r"(?:(?:extended|rewritten|revised|improved|enhanced|expanded|final|new|optimi[sz]ed)\s+)?"
    r"(?:prompt|output|answer)\b[^:：\n]{0,40}?(?:\*\*)?\s*[:：]\s*(?:\*\*)?"
    r"|^\s*(?:改写后的?|扩写后的?|优化后的?|扩展后的?|最终的?)?\s*"
    r"(?:提示词|prompt|Prompt|描述|输出)\s*[:：]\s*", re.IGNORECASE)
_QUOTES = (("```", "```"), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("「", "」"),
           ("『", "』"), ("`", "`"))


def clean_prompt(text: str) -> str:
    """Strip what models wrap around an answer: think blocks, labels, quotes, line breaks."""
    text = _THINK.sub("", text or "").strip()
    previous = None
    while text != previous:
        previous = text
        text = _LABEL.sub("", text, count=1).strip()
        for left, right in _QUOTES:  # one pair around the whole answer, not '"A" and "B"'
            inner = text[len(left):-len(right)]
            if len(text) > len(left) + len(right) and text.startswith(left) \
                    and text.endswith(right) and left not in inner and right not in inner:
                text = inner.strip()
    return re.sub(r"\s+", " ", text).strip()


def _load_image(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, a path or an HxWx3 uint8 array."""
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise PromptExtendError(f"expected one image, got {len(image)}")
        image = image[0]
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(image).convert("RGB")


def _fit_area(image: Image.Image, max_area: int) -> Image.Image:
    """``image`` scaled down (aspect kept) so that width * height <= ``max_area``."""
    w, h = image.size
    if w * h <= max_area:
        return image
    scale = math.sqrt(max_area / (w * h))
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BICUBIC)


class PromptExpander:
    """Base class: picks the system prompt and seed, turns any failure into ``status=False``."""

    def __init__(self, model_name: str, is_vl: bool = False, device: Any = 0, **kwargs: Any):
        self.model_name = model_name
        self.is_vl = is_vl
        self.device = device

    def extend(self, prompt: str, system_prompt: str, seed: int) -> str:
        """The rewritten prompt (raw model text) for a text-only request."""
        raise NotImplementedError

    def extend_with_img(self, prompt: str, system_prompt: str, image: Image.Image,
                        seed: int) -> str:
        """The rewritten prompt (raw model text) for a request with an image."""
        raise NotImplementedError

    def __call__(self, prompt: str, system_prompt: str | None = None, tar_lang: str = "ch",
                 image: Any = None, seed: int = -1, **kwargs: Any) -> PromptOutput:
        if seed is None or seed < 0:
            seed = random.randint(0, sys.maxsize)
        system_prompt = system_prompt or ""
        try:
            system_prompt = system_prompt or system_prompt_for(tar_lang, self.is_vl)
            if not prompt or not prompt.strip():
                raise PromptExtendError("the prompt is empty")
            if self.is_vl:
                if image is None:
                    raise PromptExtendError(f"model {self.model_name} extends prompts with an "
                                            f"image, but no image was given")
                raw = self.extend_with_img(prompt, system_prompt, _load_image(image), seed)
            else:
                raw = self.extend(prompt, system_prompt, seed)
            extended = clean_prompt(raw)
            if not extended:
                raise PromptExtendError(f"model {self.model_name} returned an empty answer")
        except Exception as e:  # noqa: BLE001 - the caller goes on with the original prompt
            reason = str(e) if isinstance(e, PromptExtendError) else f"{type(e).__name__}: {e}"
            return PromptOutput(False, prompt, seed, system_prompt, reason)
        return PromptOutput(True, extended, seed, system_prompt,
                            json.dumps({"model": self.model_name, "content": raw},
                                       ensure_ascii=False))


# ----------------------------------------------------------------------------------------------
# DashScope API
# ----------------------------------------------------------------------------------------------

@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library logger (the SDK logs a traceback for each failed request)."""
    logger = logging.getLogger(name)
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def _image_data_uri(image: Image.Image) -> str:
    """``image`` as an inline ``data:image/jpeg;base64,...`` URI."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _response_text(response: Any) -> str:
    """The answer text of a DashScope ``result_format='message'`` response."""
    content = response.output["choices"][0]["message"]["content"]
    if isinstance(content, list):  # multimodal: [{"text": ...}, ...]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise TypeError(f"unexpected answer content {content!r:.80}")
    return content


class DashScopePromptExpander(PromptExpander):
    """Prompt extension through the DashScope API (Alibaba Cloud Model Studio).

    Args:
        api_key: the API key; default: the ``DASH_API_KEY`` environment variable.
        model_name: default ``qwen-plus``, or ``qwen-vl-max`` with ``is_vl``.
        is_vl: send the image too (image-to-video).
        retry_times: attempts per request (time-outs, network errors, 429 and 5xx are retried;
            401/403 and other 4xx are not).
        max_image_size: the image is scaled down to at most this many pixels before sending.
        timeout: seconds one request may take.
        backoff: seconds before the first retry, doubled each time up to ``max_backoff``.
        base_url: the API endpoint; default ``DASH_API_URL`` or the mainland China endpoint.
    """

    def __init__(self, api_key: str | None = None, model_name: str | None = None,
                 is_vl: bool = False, retry_times: int = 4, max_image_size: int = 512 * 512,
                 timeout: float = 60.0, backoff: float = 1.0, max_backoff: float = 8.0,
                 base_url: str | None = None, **kwargs: Any):
        try:
            import dashscope  # noqa: F401 - fail here, clearly, when the SDK is missing
        except ImportError as e:
            raise PromptExtendError("the dashscope package is not installed: "
                                    "pip install dashscope") from e

        model_name = model_name or DASHSCOPE_MODELS[int(is_vl)]
        super().__init__(model_name, is_vl, **kwargs)
        self.api_key = api_key or os.environ.get("DASH_API_KEY") or None
        if not self.api_key:
            raise PromptExtendError("DASH_API_KEY is not set: export DASH_API_KEY=<your "
                                    "DashScope API key> to use --prompt_extend_method dashscope")
        self.base_url = base_url or os.environ.get("DASH_API_URL") or DASHSCOPE_DEFAULT_URL
        self.retry_times = max(1, int(retry_times))
        self.max_image_size = max_image_size
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff

    def extend(self, prompt: str, system_prompt: str, seed: int) -> str:
        from dashscope import Generation

        messages = [{"role": "system", "content": system_prompt},
                    {"role": "user", "content": prompt}]
        return self._request(lambda: Generation.call(self.model_name, messages=messages,
                                                     **self._call_kwargs(seed)))

    def extend_with_img(self, prompt: str, system_prompt: str, image: Image.Image,
                        seed: int) -> str:
        from dashscope import MultiModalConversation

        # The SDK uploads user text that names an existing local file; never let it.
        if os.path.isfile(os.path.expanduser(prompt.strip())):
            raise PromptExtendError("the prompt is the name of a local file; not sending it")
        image_uri = _image_data_uri(_fit_area(image, self.max_image_size))
        messages = [{"role": "system", "content": [{"text": system_prompt}]},
                    {"role": "user", "content": [{"image": image_uri}, {"text": prompt}]}]
        return self._request(lambda: MultiModalConversation.call(
            self.model_name, messages=messages, **self._call_kwargs(seed)))

    def _call_kwargs(self, seed: int) -> dict[str, Any]:
        import dashscope

        dashscope.base_http_api_url = self.base_url
        return dict(api_key=self.api_key, seed=seed % 2**31, result_format="message",
                    request_timeout=self.timeout)

    def _request(self, send: Callable[[], Any]) -> str:
        """Send with bounded retries and exponential back-off; the answer text or an error."""
        reason = "no attempt made"
        for attempt in range(1, self.retry_times + 1):
            if attempt > 1:
                time.sleep(min(self.backoff * 2 ** (attempt - 2), self.max_backoff))
            try:
                with _quiet_logger("dashscope"):
                    response = send()
            except Exception as e:  # noqa: BLE001 - time-outs, connection errors, bad JSON
                reason = f"{type(e).__name__}: {e}"
                continue
            status = int(getattr(response, "status_code", 0) or 0)
            if status == 200:
                try:
                    return _response_text(response)
                except (KeyError, IndexError, TypeError, AttributeError) as e:
                    reason = f"malformed answer ({type(e).__name__}: {e})"
                    continue
            reason = (f"HTTP {status} {getattr(response, 'code', '') or ''}: "
                      f"{getattr(response, 'message', '') or ''}").strip()
            if status in AUTH_STATUSES:
                raise PromptExtendError(f"DashScope refused the API key ({reason}); "
                                        f"check DASH_API_KEY and DASH_API_URL")
            if status not in RETRY_STATUSES:
                raise PromptExtendError(f"DashScope request failed ({reason})")
        raise PromptExtendError(f"DashScope request failed after {self.retry_times} "
                                f"attempt(s) to {self.base_url}: {reason}")


# ----------------------------------------------------------------------------------------------
# Local Qwen through transformers
# ----------------------------------------------------------------------------------------------

def _resolve_device(device: Any) -> torch.device:
    """``0`` -> ``cuda:0`` (CPU when CUDA is missing); strings and devices as given."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(name) \
        or name.count("/") > 1 or "\\" in name


class QwenPromptExpander(PromptExpander):
    """Prompt extension with a local Qwen2.5 (text) or Qwen2.5-VL (image) model.

    Args:
        model_name: a local folder, a hub name or an alias (``Qwen2.5_7B``, ``QwenVL2.5_3B``,
            ...); default ``Qwen/Qwen2.5-14B-Instruct``, or ``Qwen/Qwen2.5-VL-7B-Instruct``
            with ``is_vl``.
        device: where the model runs: a CUDA index, ``"cpu"``, a ``torch.device``...
        is_vl: use the image (image-to-video).
        keep_loaded: keep the model in memory between calls (default: load on each call and
            free it afterwards, so it does not hold memory while the video model runs).
        max_new_tokens: upper bound on the answer length.
        max_pixels: the image is scaled down to at most this many pixels.
        dtype: ``"auto"`` (the checkpoint's dtype) or a ``torch.dtype``.

    Nothing is loaded at construction: the model is loaded by the first call.
    """

    def __init__(self, model_name: str | None = None, device: Any = 0, is_vl: bool = False,
                 keep_loaded: bool = False, max_new_tokens: int = 512,
                 max_pixels: int = 1280 * 28 * 28, dtype: Any = "auto", **kwargs: Any):
        model_name = model_name or QWEN_MODELS[int(is_vl)]
        model_name = QWEN_ALIASES.get(model_name, model_name) \
            if not os.path.exists(model_name) else model_name
        super().__init__(model_name, is_vl, device, **kwargs)
        self.keep_loaded = keep_loaded
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self.dtype = dtype
        self.model = None
        self.processor = None  # the tokenizer, or the processor of a VL model
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and its tokenizer/processor onto the device (once)."""
        if self.model is not None:
            return
        name = self.model_name
        if _looks_like_path(name) and not Path(name).expanduser().is_dir():
            raise PromptExtendError(f"prompt-extension model folder not found: '{name}'")
        name = str(Path(name).expanduser()) if _looks_like_path(name) else name
        device = _resolve_device(self.device)
        log.info("Loading prompt-extension model %s on %s", name, device)
        try:
            if self.is_vl:
                from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
                processor = AutoProcessor.from_pretrained(name)
                model = Qwen2_5_VLForConditionalGeneration.from_pretrained(name, dtype=self.dtype)
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer
                processor = AutoTokenizer.from_pretrained(name)
                model = AutoModelForCausalLM.from_pretrained(name, dtype=self.dtype)
        except Exception as e:  # noqa: BLE001 - one clear line for the user
            raise PromptExtendError(f"cannot load prompt-extension model '{name}': "
                                    f"{type(e).__name__}: {e}") from e
        self.model, self.processor = model.to(device).eval(), processor

    def unload(self) -> None:
        """Free the model (and the GPU memory it held)."""
        if self.model is None:
            return
        on_cuda = self.model.device.type == "cuda"
        self.model = self.processor = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    # -- generation -------------------------------------------------------------------------

    def extend(self, prompt: str, system_prompt: str, seed: int) -> str:
        messages = [{"role": "system", "content": system_prompt},
                    {"role": "user", "content": prompt}]
        return self._run(lambda: self._text_inputs(messages), seed)

    def extend_with_img(self, prompt: str, system_prompt: str, image: Image.Image,
                        seed: int) -> str:
        image = _fit_area(image, self.max_pixels)
        messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]},
                    {"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": prompt}]}]
        return self._run(lambda: self._vl_inputs(messages, image), seed)

    def _text_inputs(self, messages: list[dict]) -> dict[str, torch.Tensor]:
        text = self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.processor([text], return_tensors="pt")

    def _vl_inputs(self, messages: list[dict], image: Image.Image) -> dict[str, torch.Tensor]:
        text = self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.processor(text=[text], images=[image], return_tensors="pt")

    def _run(self, make_inputs: Callable[[], Any], seed: int) -> str:
        """Load, generate with ``seed``, decode the new tokens, free (unless kept)."""
        with self._lock:
            try:
                self.load()
                inputs = make_inputs().to(self.model.device)
                return self._generate(inputs, seed)
            finally:
                if not self.keep_loaded:
                    self.unload()

    @torch.inference_mode()
    def _generate(self, inputs: Any, seed: int) -> str:
        device = self.model.device
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed % 2**63)
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)[0]


# ----------------------------------------------------------------------------------------------

def make_prompt_expander(method: str, model_name: str | None = None, is_vl: bool = False,
                         device: Any = 0, **kwargs: Any) -> PromptExpander:
    """The expander for ``--prompt_extend_method`` (``dashscope`` or ``local_qwen``).

    Raises:
        PromptExtendError: unknown method, or DashScope without an API key.
    """
    if method == "dashscope":
        return DashScopePromptExpander(model_name=model_name, is_vl=is_vl, **kwargs)
    if method == "local_qwen":
        return QwenPromptExpander(model_name=model_name, device=device, is_vl=is_vl, **kwargs)
    raise PromptExtendError(f"unknown prompt extension method {method!r}: "
                            f"use dashscope or local_qwen")
