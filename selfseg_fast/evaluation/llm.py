"""LLM back-ends for LOVE behind one interface (`complete(prompts) -> answers`, `settings()`), and the
`--llm` parser.

- `HFCausalLM`: a local Hugging Face causal LM (default meta-llama/Llama-2-7b-chat-hf), batched greedy
  generation with left padding; the tokenizer's chat template is used when it has one. Offline and not
  in the HF cache: one error line at once (no minute of hub retries).
- `OpenAIChatLM`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp server, ...)
  through `httpx` (async, the prompts of a batch concurrently). Retries 408/429/5xx and connection
  errors with exponential backoff (Retry-After honoured); a total deadline per request (not per socket
  read); answers larger than `max_response_bytes` are refused; redirects are never followed (so an API
  key is never sent to another host).
- `wordnet`: no LLM at all (selfseg_fast.evaluation.wordnet_mapper), the offline default; a stand-in.

Answers are not cut short: 512 new tokens by default (the authors' successor, ozzyou/AutoSeg
LAVE/lave.py:211, uses 512), since chat models open with a sentence or two before the class name.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from pathlib import Path

from selfseg_fast.errors import SelfSegError, WeightsError
from selfseg_fast.evaluation.love import LLMMapper, NounMapper, WordNetNounMapper
from selfseg_fast.hub import hub_reachable, looks_like_path

DEFAULT_HF_LLM = "meta-llama/Llama-2-7b-chat-hf"
DEFAULT_MAX_NEW_TOKENS = 512
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class LLMError(SelfSegError):
    """An LLM back-end that cannot be reached or answers in an unexpected format."""


# ---- Hugging Face -------------------------------------------------------------------------------------
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
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None or tokenizer is None:
            model, tokenizer = _load_hf(model_id, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues every row at its end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def settings(self) -> dict:
        return {
            "kind": "hf",
            "model": self.model_id,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
        }

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

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    is_folder = looks_like_path(model_id)
    attempts = [{"local_files_only": not is_folder}]
    if not is_folder and hub_reachable():
        attempts.append({})
    reason = "not in the local Hugging Face cache and the hub is unreachable (offline)"
    if is_folder and not Path(model_id).expanduser().is_dir():
        attempts, reason = [], "no such folder"
    for kwargs in attempts:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, **kwargs)  # 4.56+ and 5.x
            return model, tokenizer
        except (OSError, ValueError) as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0][:160] if text else type(exc).__name__
    raise WeightsError(
        f"cannot load the LOVE LLM {model_id!r} ({reason}); fix: download it once with network access "
        f"(huggingface-cli download {model_id}, after accepting its licence), pass --llm hf:/local/folder, "
        f"use --llm-url with a running server, or use --llm wordnet (offline stand-in)"
    )


# ---- OpenAI-compatible HTTP ---------------------------------------------------------------------------
class OpenAIChatLM:
    """An OpenAI-compatible chat endpoint: POST {base}/v1/chat/completions, temperature 0."""

    def __init__(
        self,
        url: str,
        model: str = "default",
        *,
        timeout_s: float = 120.0,
        max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        concurrency: int = 8,
        api_key: str | None = None,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_response_bytes: int = 4 << 20,
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
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_response_bytes = max_response_bytes

    def settings(self) -> dict:
        return {"kind": "openai", "url": self.url, "model": self.model, "temperature": 0,
                "max_tokens": self.max_tokens}  # fmt: skip

    def complete(self, prompts: list[str]) -> list[str]:
        """One answer per prompt (concurrently, at most `concurrency` in flight)."""
        if not prompts:
            return []
        return _run_async(self._complete_all(prompts))

    async def _complete_all(self, prompts: list[str]) -> list[str]:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency)
        # Per-operation timeouts are a backstop; the total deadline per request is `_ask`'s wait_for.
        async with httpx.AsyncClient(follow_redirects=False, timeout=self.timeout_s, limits=limits) as client:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(prompt: str) -> str:
                async with gate:
                    return await self._ask_with_retries(client, prompt)

            return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _ask_with_retries(self, client, prompt: str) -> str:
        for attempt in range(self.retries + 1):
            try:
                return await asyncio.wait_for(self._ask(client, prompt), self.timeout_s)
            except _Retryable as exc:
                if attempt == self.retries:
                    raise LLMError(f"{self.url}: {exc.reason} after {attempt + 1} attempts") from None
                delay = exc.retry_after if exc.retry_after is not None else self.backoff_s * 2**attempt
                await asyncio.sleep(min(delay, 60.0) * (1.0 + 0.25 * random.random()))
            except asyncio.TimeoutError:
                if attempt == self.retries:
                    raise LLMError(
                        f"{self.url}: no complete answer within {self.timeout_s:g} s "
                        f"({attempt + 1} attempts); is the server overloaded?"
                    ) from None
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ask(self, client, prompt: str) -> str:
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            async with client.stream("POST", self.url, json=body, headers=headers) as response:
                if response.is_redirect:
                    where = response.headers.get("location", "?")
                    raise LLMError(
                        f"{self.url}: the server redirects to {where[:120]}; redirects are not followed "
                        f"(an API key must not travel to another address): pass the final URL to --llm-url"
                    )
                if response.status_code in RETRY_STATUS:
                    raise _Retryable(f"HTTP {response.status_code}", _retry_after(response.headers))
                if response.status_code >= 400:
                    raise LLMError(
                        f"{self.url}: HTTP {response.status_code} {response.reason_phrase}; "
                        f"check --llm-url, --llm-model and SELFSEG_LLM_API_KEY"
                    )
                raw = await self._read_capped(response)
        except httpx.TransportError as exc:
            raise _Retryable(
                f"cannot reach the LLM server ({type(exc).__name__}: {exc}); is it running?"
            ) from None
        return self._content(raw)

    async def _read_capped(self, response) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise LLMError(
                f"{self.url}: answer of {declared} bytes exceeds the {self.max_response_bytes} byte cap"
            )
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise LLMError(f"{self.url}: answer exceeds the {self.max_response_bytes} byte cap")
            chunks.append(chunk)
        return b"".join(chunks)

    def _content(self, raw: bytes) -> str:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LLMError(
                f"{self.url}: the answer is not JSON; is this an OpenAI-compatible server?"
            ) from None
        try:
            return str(data["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.url}: no choices[0].message.content in the answer") from None


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _run_async(coro):
    """Run `coro` to completion from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---- --llm ---------------------------------------------------------------------------------------------
def build_mapper(
    llm: str | None = None,
    llm_url: str | None = None,
    *,
    batch_size: int = 16,
    model: str | None = None,
    template: str = "paper",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> NounMapper:
    """The LOVE back-end from CLI values: `--llm wordnet | hf | hf:ID | http(s)://...`, `--llm-url URL`.

    No LLM configured (or `wordnet`): the offline WordNet mapper. `--llm-url` alone: the endpoint.
    """
    if llm_url and llm in (None, "url"):
        return LLMMapper(
            OpenAIChatLM(llm_url, model or "default", max_tokens=max_new_tokens), batch_size, template
        )
    if llm in (None, "wordnet"):
        return WordNetNounMapper()
    if llm.startswith(("http://", "https://")):
        return LLMMapper(
            OpenAIChatLM(llm, model or "default", max_tokens=max_new_tokens), batch_size, template
        )
    if llm == "hf" or llm.startswith("hf:"):
        model_id = llm[3:] or DEFAULT_HF_LLM
        return LLMMapper(HFCausalLM(model_id, max_new_tokens=max_new_tokens), batch_size, template)
    if llm == "url":
        raise LLMError("--llm url needs --llm-url http://host:port (an OpenAI-compatible server)")
    raise LLMError(f"--llm {llm!r}: expected wordnet, hf, hf:MODEL_ID_OR_FOLDER, or an http(s):// address")
