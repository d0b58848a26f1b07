"""LOVE: Algorithm 1 (self-mapping, prompts, single-quote parsing, background), the HF back-end with a
tiny random Llama, the HTTP back-end against a real local server, WordNet pairs, and the cache."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from selfseg_fast.errors import NLPDataError
from selfseg_fast.evaluation.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_SYNONYMS
from selfseg_fast.evaluation.datasets.voc import VOC_CLASSES, VOC_SYNONYMS
from selfseg_fast.evaluation.llm import HFCausalLM, LLMError, OpenAIChatLM, build_mapper
from selfseg_fast.evaluation.love import (
    LOVE,
    LLMMapper,
    LoveCache,
    Vocabulary,
    WordNetNounMapper,
    apply_mapping,
    build_prompt,
    parse_answer,
)


def voc_vocab() -> Vocabulary:
    return Vocabulary("voc", list(VOC_CLASSES), [[c, *VOC_SYNONYMS.get(c, [])] for c in VOC_CLASSES])


def cs_vocab() -> Vocabulary:
    syn = [[c, *CITYSCAPES_SYNONYMS.get(c, [])] for c in CITYSCAPES_CLASSES]
    return Vocabulary("cityscapes", list(CITYSCAPES_CLASSES), syn)


class ScriptedLLM:
    """Answers from a table keyed by the noun found in the prompt; records every prompt."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.prompts: list[list[str]] = []

    def complete(self, prompts):
        self.prompts.append(list(prompts))
        return [self.answers[re.search(r"'([^']+)' (?:belong|is)", p).group(1)] for p in prompts]


class FailingMapper:
    name = "failing"

    def map_nouns(self, nouns, vocabulary):
        raise AssertionError(f"mapper called for {nouns}")


# ---- Algorithm 1 ---------------------------------------------------------------------------------------
def test_parse_answer_takes_first_quoted_vocabulary_word():
    vocab = cs_vocab()
    assert parse_answer("It is a 'vehicle', more precisely a 'car'.", vocab) == "car"
    assert parse_answer("'Traffic Light'", vocab) == "traffic light"  # case and spaces normalised
    assert parse_answer("' truck '", vocab) == "truck"
    assert parse_answer("car", vocab) == "background"  # not in single quotes
    assert parse_answer("'banana'", vocab) == "background"  # not in the vocabulary


def test_prompts_batches_and_self_mapping(tmp_path):
    llm = ScriptedLLM({"sedan": "'car'", "lorry": "Answer: 'truck'", "banana": "'fruit'", "cab": "car"})
    love = LOVE(LLMMapper(llm, batch_size=2), cs_vocab(), LoveCache(tmp_path / "c.json"))
    nouns = ["car", "sedan", "tree", "lorry", "banana", "sedan", "cab", "Road"]
    mapping = love.map(nouns)
    assert mapping == {
        "car": "car", "sedan": "car", "tree": "vegetation", "lorry": "truck", "banana": "background",
        "cab": "background", "Road": "road",
    }  # fmt: skip
    # Only nouns outside the vocabulary reach the LLM, once each, in batches of 2.
    assert [len(b) for b in llm.prompts] == [2, 2]
    prompt = llm.prompts[0][0]
    assert (
        "'sedan'" in prompt
        and "Cityscapes" in prompt
        and "'traffic light'" in prompt
        and "'background'" in prompt
    )
    assert prompt == build_prompt("sedan", cs_vocab())
    # Relabelling masks: [H, W] noun indices -> train ids; Cityscapes has no background class -> -1.
    pred = np.array([[0, 1, 2], [3, 4, -1]])
    ids = love.apply(pred, ["car", "sedan", "tree", "lorry", "banana"])
    np.testing.assert_array_equal(ids, [[13, 13, 8], [14, -1, -1]])


def test_voc_background_is_class_zero():
    love = LOVE(FailingMapper(), voc_vocab())
    np.testing.assert_array_equal(love.class_ids(["background", "dog", "motorcycle"]), [0, 12, 14])
    assert voc_vocab().background_index == 0 and cs_vocab().background_index == -1
    np.testing.assert_array_equal(apply_mapping(np.array([[0, 5, -1]]), np.array([7])), [[7, -1, -1]])


def test_cache_is_reused_and_keyed_by_backend(tmp_path):
    path = tmp_path / "cache.json"
    llm = ScriptedLLM({"sedan": "'car'"})
    LOVE(LLMMapper(llm), cs_vocab(), LoveCache(path)).map(["sedan"])
    data = json.loads(path.read_text())
    assert data == {"scripted": {"cityscapes": {"sedan": "car"}}}

    # A new run with the same back-end reads the cache and never calls the mapper.
    class Named(FailingMapper):
        name = "scripted"

    assert LOVE(Named(), cs_vocab(), LoveCache(path)).map(["sedan"]) == {"sedan": "car"}
    # Another back-end does not see it.
    with pytest.raises(AssertionError, match="mapper called"):
        LOVE(FailingMapper(), cs_vocab(), LoveCache(path)).map(["sedan"])


# ---- HF back-end ---------------------------------------------------------------------------------------
def tiny_llama(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


def prompt_words(vocab: Vocabulary, nouns: list[str]) -> list[str]:
    text = " ".join(build_prompt(n, vocab) for n in nouns) + " answer is"
    return re.findall(r"\w+|[^\w\s]+", text)


def test_hf_backend_real_generation_batched_equals_single():
    vocab, nouns = voc_vocab(), ["puppy", "sedan", "armchair"]
    model, tokenizer = tiny_llama(prompt_words(vocab, nouns))
    llm = HFCausalLM("tiny-random-llama", model=model, tokenizer=tokenizer, device="cpu", max_new_tokens=6)
    prompts = [build_prompt(n, vocab) for n in nouns]
    batched = llm.complete(prompts)  # left-padded batch: rows of different lengths
    single = [llm.complete([p])[0] for p in prompts]
    assert len(batched) == 3 and all(isinstance(a, str) and a for a in batched)
    assert batched == single
    # A random model names no class in quotes: every noun falls back to background.
    mapping = LLMMapper(llm, batch_size=2).map_nouns(nouns, vocab)
    assert set(mapping) == set(nouns) and set(mapping.values()) <= {"background", *VOC_CLASSES}


def test_hf_backend_prompt_and_parsing(monkeypatch):
    vocab, nouns = voc_vocab(), ["puppy", "sedan"]
    model, tokenizer = tiny_llama(prompt_words(vocab, nouns))
    llm = HFCausalLM("tiny-random-llama", model=model, tokenizer=tokenizer, device="cpu")
    seen = []
    replies = {"puppy": "the answer is ' dog '", "sedan": "' car '"}

    def fake_generate(input_ids, attention_mask, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            text = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            seen.append(text)
            noun = "puppy" if "puppy" in text else "sedan"
            reply = tokenizer(replies[noun], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            rows.append(torch.cat([ids, reply, torch.full((8 - len(reply),), tokenizer.pad_token_id)]))
        assert kwargs["do_sample"] is False
        return torch.stack(rows)

    monkeypatch.setattr(model, "generate", fake_generate)
    mapping = LLMMapper(llm, batch_size=2).map_nouns(nouns, vocab)
    assert mapping == {"puppy": "dog", "sedan": "car"}
    assert len(seen) == 2 and "puppy" in seen[0] and "aeroplane" in seen[0] and "background" in seen[0]


def test_hf_missing_weights_is_one_line():
    from selfseg_fast.errors import WeightsError

    with pytest.raises(WeightsError) as info:
        HFCausalLM("/nonexistent/llama-folder", device="cpu")
    assert "\n" not in str(info.value) and "--llm wordnet" in str(info.value)


# ---- HTTP back-end -------------------------------------------------------------------------------------
class ChatHandler(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.calls.append({"path": self.path, "body": body})
        prompt = body["messages"][0]["content"]
        noun = re.search(r"'([^']+)' (?:belong|is)", prompt).group(1)
        answer = {"sedan": "It is a 'car'.", "lorry": "'truck'"}.get(noun, "'fruit'")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    ChatHandler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_backend_against_local_server(chat_server, tmp_path):
    mapper = build_mapper(None, chat_server, batch_size=4, model="test-model")
    love = LOVE(mapper, cs_vocab(), LoveCache(tmp_path / "c.json"))
    assert love.map(["sedan", "lorry", "banana", "car"]) == {
        "sedan": "car", "lorry": "truck", "banana": "background", "car": "car"
    }  # fmt: skip
    assert len(ChatHandler.calls) == 3  # "car" is in the vocabulary
    call = ChatHandler.calls[0]
    assert call["path"] == "/v1/chat/completions"
    assert call["body"]["model"] == "test-model" and call["body"]["temperature"] == 0
    # Cached: a second run sends nothing.
    again = LOVE(
        build_mapper("url", chat_server, model="test-model"), cs_vocab(), LoveCache(tmp_path / "c.json")
    )
    assert again.map(["sedan"]) == {"sedan": "car"} and len(ChatHandler.calls) == 3


def test_http_backend_unreachable_is_one_line():
    llm = OpenAIChatLM("http://127.0.0.1:9", timeout_s=2)  # discard port: nothing listens
    with pytest.raises(LLMError) as info:
        llm.complete(["x"])
    assert "cannot reach" in str(info.value) and "\n" not in str(info.value)


def test_build_mapper_specs():
    assert build_mapper().name == "wordnet" and build_mapper("wordnet").name == "wordnet"
    assert build_mapper("http://localhost:8000/v1").llm.url == "http://localhost:8000/v1/chat/completions"
    with pytest.raises(LLMError, match="expected wordnet"):
        build_mapper("gpt")
    with pytest.raises(LLMError, match="--llm-url"):
        build_mapper("url")


# ---- WordNet -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wordnet_mapper():
    try:
        return WordNetNounMapper()._mapper, __import__("selfseg_fast.nlp_data").nlp_data.wordnet()
    except NLPDataError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize(
    "noun, voc, cityscapes",
    [
        ("sedan", "car", "car"),
        ("puppy", "dog", "background"),
        ("lorry", "background", "truck"),
        ("kitten", "cat", "background"),
        ("couch", "sofa", "background"),
        ("man", "person", "person"),
        ("pony", "horse", "background"),
        ("jet", "aeroplane", "background"),
        ("pavement", "background", "sidewalk"),
        ("skyscraper", "background", "building"),
        ("highway", "background", "road"),
        ("jeep", "car", "car"),
        ("banana", "background", "background"),
    ],
)
def test_wordnet_known_pairs(wordnet_mapper, noun, voc, cityscapes):
    mapper, _ = wordnet_mapper
    assert mapper.map_nouns([noun], voc_vocab().classes())[noun] == voc
    assert mapper.map_nouns([noun], cs_vocab().classes())[noun] == cityscapes
