"""Prompt extension: the real DashScope SDK against a local server, miniature local Qwen models.

No network and no downloads: the DashScope answers come from an HTTP server on 127.0.0.1
that the tests start, and the Qwen2 / Qwen2.5-VL models are random-weight miniatures built
here from configs, with a byte-level BPE tokenizer trained on a few sentences.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate
from wan.utils import prompt_extend as pe
from wan.utils.prompt_extend import (DashScopePromptExpander, PromptExtendError,
                                     QwenPromptExpander, clean_prompt, make_prompt_expander,
                                     system_prompt_for)
from wan.utils.tiny_checkpoint import make_checkpoint

TEXT_PATH = "/api/v1/services/aigc/text-generation/generation"
MM_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
ANSWER = "A red fox trots through deep snow at dawn, soft golden light, tracking shot."


# ----------------------------------------------------------------------------------------------
# A DashScope-shaped HTTP server
# ----------------------------------------------------------------------------------------------

class FakeDashScope:
    """Answers like DashScope's generation API on 127.0.0.1 (random free port).

    ``mode``: ``ok``, ``401``, ``500``, ``malformed`` (200 with a broken JSON body) or
    ``slow`` (answers after ``delay`` seconds). Serves at most ``max_requests`` requests and
    stops itself after ``lifetime`` seconds.
    """

    def __init__(self, max_requests: int = 50, lifetime: float = 300.0):
        self.mode, self.answer, self.delay = "ok", ANSWER, 1.0
        self.requests: list[dict] = []
        self.max_requests, self.deadline = max_requests, time.monotonic() + lifetime
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.timeout = 0.1
        self.server.handle_error = lambda request, address: None  # client hung up (time-outs)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"

    def _serve(self) -> None:
        while (not self._stop.is_set() and len(self.requests) < self.max_requests
               and time.monotonic() < self.deadline):
            self.server.handle_request()
        self.server.server_close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reset(self, mode: str = "ok") -> None:
        self.mode, self.answer = mode, ANSWER
        self.requests.clear()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(body)})
                mode = fake.mode
                if self.path not in (TEXT_PATH, MM_PATH):
                    return self._send(404, {"code": "NotFound", "message": self.path})
                if mode == "401":
                    return self._send(401, {"code": "InvalidApiKey", "request_id": "r1",
                                            "message": "Invalid API-key provided."})
                if mode == "500":
                    return self._send(500, {"code": "InternalError", "request_id": "r2",
                                            "message": "simulated failure"})
                if mode == "malformed":
                    return self._send(200, b'{"output": {"choices": [{"mess')
                if mode == "slow":
                    time.sleep(fake.delay)
                content = fake.answer if self.path == TEXT_PATH else [{"text": fake.answer}]
                self._send(200, {"request_id": "r0",
                                 "output": {"choices": [{"finish_reason": "stop", "message": {
                                     "role": "assistant", "content": content}}]},
                                 "usage": {"input_tokens": 10, "output_tokens": 20}})

            def _send(self, status: int, payload) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client timed out and left
                    pass

        return Handler


@pytest.fixture(scope="module")
def server():
    s = FakeDashScope()
    yield s
    s.stop()


@pytest.fixture
def dash_env(server, monkeypatch):
    """DASH_API_KEY / DASH_API_URL pointing at the local server (no proxy for 127.0.0.1)."""
    server.reset()
    monkeypatch.setenv("DASH_API_KEY", "sk-test")
    monkeypatch.setenv("DASH_API_URL", server.url)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    return server


def _expander(**kw) -> DashScopePromptExpander:
    return DashScopePromptExpander(**{"backoff": 0.01, "timeout": 10, **kw})


# ----------------------------------------------------------------------------------------------
# System prompts and cleanup
# ----------------------------------------------------------------------------------------------

def test_system_prompts():
    assert system_prompt_for("ch") == system_prompt_for("zh") == system_prompt_for("ZH")
    prompts = {system_prompt_for(lang, vl) for lang in ("zh", "en") for vl in (False, True)}
    assert len(prompts) == 4
    assert "80 to 120 words" in system_prompt_for("en") and "100到200字" in system_prompt_for("ch")
    assert "first frame" in system_prompt_for("en", True)
    assert "第一帧" in system_prompt_for("zh", True)
    with pytest.raises(ValueError, match="unsupported target language"):
        system_prompt_for("fr")


@pytest.mark.parametrize("raw,expected", [
    ('"A cat on a surfboard."', "A cat on a surfboard."),
    ("Extended prompt: A cat\non a surfboard.", "A cat on a surfboard."),
    ("**Rewritten prompt:** “A cat.”", "A cat."),
    ("<think>hmm</think>\n改写后的提示词：「一只猫在冲浪。」", "一只猫在冲浪。"),
    ("Here is the rewritten prompt for the video:\n\nA fox.", "A fox."),
    ('"Breaking Bad" on a card, then "Heisenberg"', '"Breaking Bad" on a card, then "Heisenberg"'),
    ("《西游记》里的孙悟空", "《西游记》里的孙悟空"),
    ("   ", ""),
])
def test_clean_prompt(raw, expected):
    assert clean_prompt(raw) == expected


# ----------------------------------------------------------------------------------------------
# DashScope
# ----------------------------------------------------------------------------------------------

def test_dashscope_text(dash_env):
    out = _expander()("雪地里的狐狸", tar_lang="en", seed=5)
    assert out.status and out.prompt == ANSWER and out.seed == 5
    (req,) = dash_env.requests
    assert req["path"] == TEXT_PATH and req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "qwen-plus"
    assert body["input"]["messages"] == [{"role": "system", "content": system_prompt_for("en")},
                                         {"role": "user", "content": "雪地里的狐狸"}]
    assert body["parameters"]["seed"] == 5 and body["parameters"]["result_format"] == "message"


def test_dashscope_image_inline(dash_env):
    dash_env.answer = '"Extended prompt: the cat surfs a wave."'
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 900, 3), np.uint8))
    exp = _expander(is_vl=True, max_image_size=256 * 256)
    out = exp("a cat surfing", tar_lang="zh", image=img, seed=3)
    assert out.status and out.prompt == "the cat surfs a wave."
    (req,) = dash_env.requests  # one request: no upload through a second host
    assert req["path"] == MM_PATH and "X-DashScope-OssResourceResolve" not in req["headers"]
    body = req["body"]
    assert body["model"] == "qwen-vl-max"
    system, user = body["input"]["messages"]
    assert system == {"role": "system", "content": [{"text": system_prompt_for("zh", True)}]}
    assert user["role"] == "user" and user["content"][1] == {"text": "a cat surfing"}
    uri = user["content"][0]["image"]
    assert uri.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert sent.width * sent.height <= 256 * 256 and abs(sent.width / sent.height - 1.5) < 0.02


def test_dashscope_model_name_and_no_image(dash_env):
    out = make_prompt_expander("dashscope", "qwen-max")("a cat", tar_lang="ch", seed=1)
    assert out.status and dash_env.requests[0]["body"]["model"] == "qwen-max"
    out = _expander(is_vl=True)("a cat", image=None)
    assert not out.status and "no image" in out.message and out.prompt == "a cat"


def test_dashscope_missing_key(monkeypatch):
    monkeypatch.delenv("DASH_API_KEY", raising=False)
    with pytest.raises(PromptExtendError, match="DASH_API_KEY is not set"):
        DashScopePromptExpander()


def test_dashscope_401_not_retried(dash_env):
    dash_env.reset("401")
    out = _expander(retry_times=3)("a cat", tar_lang="en")
    assert not out.status and out.prompt == "a cat"
    assert "401" in out.message and "DASH_API_KEY" in out.message
    assert len(dash_env.requests) == 1


@pytest.mark.parametrize("mode,reason", [("500", "HTTP 500 InternalError: simulated failure"),
                                         ("malformed", "JSONDecodeError"),
                                         ("slow", "Timeout")])
def test_dashscope_failures_fall_back_after_retries(dash_env, mode, reason):
    dash_env.reset(mode)
    out = _expander(retry_times=3, timeout=0.3)("a cat", tar_lang="en")
    assert not out.status and out.prompt == "a cat"
    assert reason in out.message and "after 3 attempt(s)" in out.message
    assert len(dash_env.requests) == 3


def test_dashscope_retry_then_success(dash_env, monkeypatch):
    dash_env.reset("500")
    sleeps = []
    def sleep(seconds):  # the server recovers during the back-off
        sleeps.append(seconds)
        dash_env.mode = "ok"

    monkeypatch.setattr(pe.time, "sleep", sleep)
    out = DashScopePromptExpander(retry_times=4, backoff=0.5)("a cat", tar_lang="en")
    assert out.status and out.prompt == ANSWER and len(dash_env.requests) == 2
    assert sleeps == [0.5]


# ----------------------------------------------------------------------------------------------
# Local Qwen: miniature models
# ----------------------------------------------------------------------------------------------

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer():
    """A byte-level BPE tokenizer with Qwen's special tokens and a Qwen-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["A red fox trots through the snow, soft light, tracking shot.",
                             "清晨的松林里，一只赤狐在雪中小跑。"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def _text_config(tok) -> dict:
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)


def _sampling(model):
    model.generation_config.update(do_sample=True, temperature=1.0, top_k=50, top_p=1.0)
    return model


def write_tiny_qwen(folder: Path) -> Path:
    """A miniature local Qwen2 chat model (random weights, tiny vocabulary) in ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    _sampling(Qwen2ForCausalLM(Qwen2Config(**_text_config(tok)))).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return write_tiny_qwen(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def qwen_vl_dir(tmp_path_factory) -> Path:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    d = tmp_path_factory.mktemp("qwen2_5_vl")
    tok = _tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    pixels = dict(min_pixels=56 * 56, max_pixels=224 * 224)
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                        video_processor=Qwen2VLVideoProcessor(**pixels),
                        chat_template=CHAT_TEMPLATE).save_pretrained(d)
    text = _text_config(tok) | {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                    "mrope_section": [2, 3, 3]}}
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                  fullatt_block_indexes=[0], window_size=56)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    _sampling(Qwen2_5_VLForConditionalGeneration(cfg)).save_pretrained(d)
    return d


class Spy(QwenPromptExpander):
    """Records the model inputs the expander builds."""

    def _run(self, make_inputs, seed):
        def recording():
            self.inputs = make_inputs()
            return self.inputs
        return super()._run(recording, seed)


def test_local_qwen_text(qwen_dir):
    exp = Spy(str(qwen_dir), device="cpu", max_new_tokens=12)
    assert exp.model is None  # nothing is loaded before the first call
    a = exp("a fox in the snow", tar_lang="en", seed=7)
    assert a.status, a.message
    assert exp.model is None and exp.processor is None  # freed after use
    rendered = _tokenizer().decode(exp.inputs["input_ids"][0])
    assert rendered == (f"<|im_start|>system\n{system_prompt_for('en')}<|im_end|>\n"
                        f"<|im_start|>user\na fox in the snow<|im_end|>\n<|im_start|>assistant\n")
    assert a.prompt == clean_prompt(json.loads(a.message)["content"])
    b = exp("a fox in the snow", tar_lang="en", seed=7)
    c = exp("a fox in the snow", tar_lang="en", seed=8)
    assert b.prompt == a.prompt and c.prompt != a.prompt


def test_local_qwen_keep_loaded_and_rng(qwen_dir):
    exp = make_prompt_expander("local_qwen", str(qwen_dir), device=torch.device("cpu"),
                               keep_loaded=True, max_new_tokens=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert exp("一只狐狸", tar_lang="ch", seed=1).status
    model = exp.model
    assert model is not None and exp("一只狐狸", seed=2).status and exp.model is model
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    exp.unload()
    assert exp.model is None


def test_local_qwen_vl(qwen_vl_dir):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 300, 3), np.uint8))
    exp = Spy(str(qwen_vl_dir), device="cpu", is_vl=True, max_new_tokens=8, max_pixels=112 * 112)
    a = exp("a cat surfing", tar_lang="en", image=img, seed=3)
    assert a.status, a.message
    assert exp.model is None
    inputs = exp.inputs
    n_image_tokens = int(inputs["image_grid_thw"].prod()) // 4
    tok = _tokenizer()
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (inputs["input_ids"] == image_pad).sum() == n_image_tokens
    assert system_prompt_for("en", True) in tok.decode(inputs["input_ids"][0])
    b = exp("a cat surfing", tar_lang="en", image=img, seed=3)
    assert b.prompt == a.prompt
    out = exp("a cat surfing", image=None)
    assert not out.status and "no image" in out.message


def test_local_qwen_load_failures(tmp_path):
    out = QwenPromptExpander(str(tmp_path / "missing"), device="cpu")("a cat", seed=1)
    assert not out.status and out.prompt == "a cat" and "not found" in out.message
    (tmp_path / "empty").mkdir()
    out = QwenPromptExpander(str(tmp_path / "empty"), device="cpu")("a cat", seed=1)
    assert not out.status and "cannot load prompt-extension model" in out.message


def test_defaults_and_aliases(monkeypatch):
    monkeypatch.setenv("DASH_API_KEY", "k")
    assert make_prompt_expander("dashscope").model_name == "qwen-plus"
    assert make_prompt_expander("dashscope", is_vl=True).model_name == "qwen-vl-max"
    local = make_prompt_expander("local_qwen")
    assert local.model_name == "Qwen/Qwen2.5-14B-Instruct" and local.model is None
    vl = make_prompt_expander("local_qwen", is_vl=True)
    assert vl.model_name == "Qwen/Qwen2.5-VL-7B-Instruct"
    alias = QwenPromptExpander("QwenVL2.5_3B", is_vl=True)
    assert alias.model_name == "Qwen/Qwen2.5-VL-3B-Instruct"
    with pytest.raises(PromptExtendError, match="unknown prompt extension method"):
        make_prompt_expander("openai")


# ----------------------------------------------------------------------------------------------
# generate.py
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("pe_ckpt"), "t2v-1.3B", seed=31)


def _t2i(ckpt, out, *extra):
    return generate.main([str(a) for a in (
        "--task", "t2i-14B", "--size", "480*832", "--ckpt_dir", ckpt, "--sample_steps", "1",
        "--base_seed", "9", "--prompt", "a fox", "--save_file", out, "--use_prompt_extend",
        "--prompt_extend_method", "dashscope", "--prompt_extend_target_lang", "en", *extra)])


def test_generate_sidecar_has_extended_prompt(dash_env, tiny_ckpt, tmp_path):
    out = tmp_path / "fox.png"
    assert _t2i(tiny_ckpt, out) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == ANSWER and side["original_prompt"] == "a fox"
    assert side["prompt_extend_method"] == "dashscope"
    assert side["prompt_extend_model"] == "qwen-plus"
    (req,) = dash_env.requests
    assert req["body"]["input"]["messages"][1]["content"] == "a fox"
    assert req["body"]["parameters"]["seed"] == 9


def test_generate_goes_on_without_key(dash_env, tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DASH_API_KEY")
    out = tmp_path / "fox.png"
    assert _t2i(tiny_ckpt, out) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == side["original_prompt"] == "a fox" and not dash_env.requests
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "Prompt extension" in ln]
    assert len(lines) == 1 and "DASH_API_KEY is not set" in lines[0]
