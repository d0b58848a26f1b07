"""LLM back-ends for LOVE behind one interface (`complete(prompts) -> answers`), and the `--llm` parser.

- `HFCausalLM`: a local Hugging Face causal LM (default meta-llama/Llama-2-7b-chat-hf), batched greedy
  generation with left padding; the tokenizer's chat template is used when it has one.
- `OpenAIChatLM`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp server, ...),
  with the standard library only (urllib); prompts of a batch are sent concurrently.
- `wordnet`: no LLM at all (selfseg_fast.evaluation.wordnet_mapper), the default.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from selfseg_fast.errors import SelfSegError, WeightsError
from selfseg_fast.evaluation.love import LLMMapper, NounMapper, WordNetNounMapper

DEFAULT_HF_LLM = "meta-llama/Llama-2-7b-chat-hf"
DEFAULT_MAX_NEW_TOKENS = 24  # a class name in quotes, with room for a short lead-in


class LLMError(SelfSegError):
    """An LLM back-end that cannot be reached or answers in an unexpected format."""


class HFCausalLM:
    """A local causal LM from a hub id or folder; `model`/`tokenizer` may be passed in (tests)."""

    def __init__(
        self,
        model_id: str = DEFAULT_HF_LLM,
        *,
        model=None,
        tokenizer=None,
        device: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        import torch

        self.name = f"hf:{model_id}"
        self.max_new_tokens = max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None or tokenizer is None:
            model, tokenizer = _load_hf(model_id, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues every row at its end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def format(self, prompt: str) -> str:
        """The prompt as the model expects it: its chat template if it has one, else the plain text."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def complete(self, prompts: list[str]) -> list[str]:
        """Greedy answers, one per prompt, decoded from the new tokens only."""
        import torch

        if not prompts:
            return []
        batch = self.tokenizer([self.format(p) for p in prompts], return_tensors="pt", padding=True)
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _load_hf(model_id: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype=dtype, local_files_only=offline)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot load the LOVE LLM {model_id!r} ({first}); fix: download it (huggingface-cli download "
            f"{model_id}, after accepting its licence) or pass --llm hf:/local/folder, or use --llm wordnet"
        ) from None
    return model, tokenizer


class OpenAIChatLM:
    """An OpenAI-compatible chat endpoint: POST {base}/v1/chat/completions, temperature 0."""

    def __init__(
        self,
        url: str,
        model: str = "default",
        *,
        timeout_s: float = 60.0,
        max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        concurrency: int = 8,
        api_key: str | None = None,
    ) -> None:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise LLMError(f"--llm-url {url!r}: expected an http:// or https:// address")
        if not url.endswith("/chat/completions"):
            url = url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")
        self.url = url
        self.model = model
        self.name = f"url:{url}|{model}"
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.api_key = api_key if api_key is not None else os.environ.get("SELFSEG_LLM_API_KEY")

    def _ask(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise LLMError(
                f"{self.url}: HTTP {exc.code} {exc.reason}; check --llm-url and the model name"
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LLMError(f"{self.url}: cannot reach the LLM server ({reason}); is it running?") from None
        except json.JSONDecodeError:
            raise LLMError(
                f"{self.url}: the answer is not JSON; is this an OpenAI-compatible server?"
            ) from None
        try:
            return str(data["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.url}: no choices[0].message.content in the answer") from None

    def complete(self, prompts: list[str]) -> list[str]:
        if len(prompts) <= 1:
            return [self._ask(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(self._ask, prompts))


def build_mapper(
    llm: str | None = None, llm_url: str | None = None, *, batch_size: int = 16, model: str | None = None
) -> NounMapper:
    """The LOVE back-end from CLI values: `--llm wordnet | hf | hf:ID | http(s)://...`, `--llm-url URL`.

    No LLM configured (or `wordnet`): the offline WordNet mapper. `--llm-url` alone: the endpoint.
    """
    if llm_url and llm in (None, "url"):
        return LLMMapper(OpenAIChatLM(llm_url, model or "default"), batch_size)
    if llm in (None, "wordnet"):
        return WordNetNounMapper()
    if llm.startswith(("http://", "https://")):
        return LLMMapper(OpenAIChatLM(llm, model or "default"), batch_size)
    if llm == "hf" or llm.startswith("hf:"):
        model_id = llm[3:] or DEFAULT_HF_LLM
        return LLMMapper(HFCausalLM(model_id or DEFAULT_HF_LLM), batch_size)
    if llm == "url":
        raise LLMError("--llm url needs --llm-url http://host:port (an OpenAI-compatible server)")
    raise LLMError(f"--llm {llm!r}: expected wordnet, hf, hf:MODEL_ID_OR_FOLDER, or an http(s):// address")
