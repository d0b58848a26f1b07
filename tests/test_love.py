"""LOVE: App. A prompts word for word, chat-style answers parsed, every class's own name maps to itself
(847 ADE / 21 VOC / 19 Cityscapes), the synonym shortcut off by default, the cache key, the HF back-end
with a tiny random Llama, and WordNet pairs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from selfseg_fast.errors import NLPDataError
from selfseg_fast.evaluation.datasets.ade20k import class_keys, packaged_class_names
from selfseg_fast.evaluation.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_SYNONYMS
from selfseg_fast.evaluation.datasets.voc import VOC_CLASSES, VOC_DEVKIT_NAMES, VOC_SYNONYMS
from selfseg_fast.evaluation.llm import DEFAULT_MAX_NEW_TOKENS, HFCausalLM, LLMError, build_mapper
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

# App. A of the paper, as printed (typeset quotes).
APP_A_LIST = (
    "To which class in the list <dataset> is <name> exclusively most similar to? If <name> is not similar "
    "to any class in the list or if the term describes stuff instead of things, answer with \u2018background"
    "\u2019. Reply in single quotation marks with the class name that is part of the list <dataset> and do "
    "not link it to any other class name which is not part of the given list or \u2018background\u2019."
)
APP_A_ADE = (
    "To which class in the ADE20K dataset exclusively most similar to? If <noun> is not similar to any "
    "class in ADE20K or if the term describes stuff instead of things, answer with \u2018background\u2019. "
    "Reply in single quotation marks with the class name that is part of ADE20K and do not link it to any "
    "other class name which is not part of the given list or \u2018background\u2019."
)


def voc_vocab() -> Vocabulary:
    return Vocabulary(
        "voc",
        list(VOC_CLASSES),
        [VOC_DEVKIT_NAMES.get(c, []) for c in VOC_CLASSES],
        [VOC_SYNONYMS.get(c, []) for c in VOC_CLASSES],
    )


def cs_vocab() -> Vocabulary:
    return Vocabulary(
        "cityscapes",
        list(CITYSCAPES_CLASSES),
        [],
        [CITYSCAPES_SYNONYMS.get(c, []) for c in CITYSCAPES_CLASSES],
    )


def ade_vocab() -> Vocabulary:
    keys, aliases = class_keys(packaged_class_names())
    return Vocabulary("ade20k", keys, aliases, [])


def noun_of(prompt: str) -> str:
    found = re.search(r"If (.+?) is not similar", prompt) or re.search(r"object '(.+?)' belong", prompt)
    return found.group(1)


class ScriptedLLM:
    """Answers from a table keyed by the noun found in the prompt; records every prompt."""

    name = "scripted"

    def __init__(self, answers: dict[str, str], settings: dict | None = None) -> None:
        self.answers = answers
        self.prompts: list[list[str]] = []
        self._settings = settings or {"kind": "scripted"}

    def settings(self):
        return self._settings

    def complete(self, prompts):
        self.prompts.append(list(prompts))
        return [self.answers[noun_of(p)] for p in prompts]


class FailingMapper:
    name = "failing"
    is_llm = True

    def describe(self):
        return {"backend": "failing"}

    def map_nouns(self, nouns, vocabulary):
        raise AssertionError(f"mapper called for {nouns}")


# ---- App. A prompts ------------------------------------------------------------------------------------
def _typeset_to_plain(text: str) -> str:
    return text.replace("\u2018", "'").replace("\u2019", "'")


@pytest.mark.parametrize("vocab", [voc_vocab(), cs_vocab()], ids=["voc", "cityscapes"])
def test_list_prompt_is_app_a_word_for_word(vocab):
    expected = (
        _typeset_to_plain(APP_A_LIST).replace("<dataset>", str(list(vocab.names))).replace("<name>", "sedan")
    )
    assert build_prompt("sedan", vocab) == expected
    assert "stuff instead of things" in expected and "'traffic light'" in build_prompt("x", cs_vocab())


def test_ade_prompt_is_app_a_word_for_word_and_lists_no_classes():
    prompt = build_prompt("sedan", ade_vocab())
    assert prompt == _typeset_to_plain(APP_A_ADE).replace("<noun>", "sedan")
    assert "wall" not in prompt and "edifice" not in prompt  # the 847 classes are not listed
    assert "sedan" in build_prompt("sedan", ade_vocab(), "ours") and "'wall'" in build_prompt(
        "x", ade_vocab(), "ours"
    )
    with pytest.raises(ValueError, match="unknown LOVE template"):
        build_prompt("x", ade_vocab(), "nope")


# ---- parsing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, expected",
    [
        ("I'm happy to help! The term 'sedan' is most similar to 'car'.", "car"),
        (
            '  Sure! I\'d be glad to help. Based on the list you provided, "sedan" is exclusively most '
            "similar to 'car'. Sedans are a type of car, so 'car' is the closest match in the list.",
            "car",
        ),  # fmt: skip
        ("The answer is \u2018traffic light\u2019.", "traffic light"),
        ("I'd say it's most similar to 'Traffic Light'", "traffic light"),
        (
            "I apologize, but 'banana' is not similar to any class in the list, so I would answer with "
            "'background'.",
            "background",
        ),  # fmt: skip
        ("It isn't 'truck', it's rather 'car'.", "car"),  # a class after a negation is skipped
        ("**'bus'**", "bus"),
        ("Car.", "car"),  # no quotes, but exactly a class name
        ("car is a nice word", "background"),  # no quotes and not exactly a class name
        ("'fruit'", "background"),  # not in the vocabulary
        ("The term 'lorry' is most similar to 'truck'.", "truck"),
        ("Based on the given list, 'pedestrian' would be mapped to 'person'.", "person"),
        (
            "  Of the classes ['road', 'sidewalk', 'building', 'car'], the term sedan is most similar to "
            "'car'.",
            "car",
        ),  # the echoed class list names nothing
    ],
)
def test_chat_style_answers(answer, expected):
    assert parse_answer(answer, cs_vocab()) == expected


def test_the_queried_noun_is_not_its_own_answer():
    # "vegetation"'s synonym tree must not be read as the answer when the noun itself is quoted first
    assert parse_answer("The term 'tree' is most similar to 'terrain'.", cs_vocab(), noun="tree") == "terrain"


def test_long_answers_are_not_cut_short():
    assert DEFAULT_MAX_NEW_TOKENS >= 256  # a chat model's lead-in sentence fits with the class name


# ---- own names win -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [ade_vocab, voc_vocab, cs_vocab], ids=["ade20k", "voc", "cityscapes"])
def test_every_class_name_maps_to_itself(make):
    vocab = make()
    expected_len = {"ade20k": 847, "voc": 21, "cityscapes": 19}[vocab.dataset]
    assert len(vocab.names) == len(set(vocab.names)) == expected_len
    love = LOVE(FailingMapper(), vocab)  # no LLM call may happen
    assert love.map(vocab.names) == {name: name for name in vocab.names}
    np.testing.assert_array_equal(love.class_ids(vocab.names), np.arange(expected_len))
    for name in vocab.names:  # and an LLM answer naming the class gives the class
        assert parse_answer(f"I'm sure it's '{name}'.", vocab) == name


def test_ade_collisions_resolve_to_the_class_of_that_name():
    vocab = ade_vocab()
    love = LOVE(FailingMapper(), vocab)
    for word in ("stool", "can", "throne", "machine", "wheel", "closet", "pot", "screen", "bag"):
        assert love.map([word])[word] == word or love.map([word])[word].startswith(word + ",")
    assert love.map(["pot"])["pot"] == "pot"  # trainId 188, not "pot, flowerpot" or toilet
    assert vocab.index_of("pot, flowerpot") == 130 and vocab.index_of("flowerpot") == 130
    assert vocab.index_of("edifice") == 1 and vocab.index_of("building, edifice") == 1
    assert vocab.index_of("commode") == 58  # toilet's other names still reach it


# ---- Algorithm 1 -------------------------------------------------------------------------------------
def test_prompts_batches_background_and_shortcut_off(tmp_path):
    answers = {
        "sedan": "'car'",
        "lorry": "Answer: 'truck'",
        "banana": "'fruit'",
        "cab": "car",
        "tree": "'vegetation'",
    }
    llm = ScriptedLLM(answers)
    love = LOVE(LLMMapper(llm, batch_size=2), cs_vocab(), LoveCache(tmp_path / "c.json"))
    nouns = ["car", "sedan", "tree", "lorry", "banana", "sedan", "cab", "Road"]
    assert love.map(nouns) == {
        "car": "car", "sedan": "car", "tree": "vegetation", "lorry": "truck", "banana": "background",
        "cab": "car", "Road": "road",
    }  # fmt: skip
    # Own names (car, Road) never reach the LLM; our synonym "tree" does (shortcut off), in batches of 2.
    assert [len(b) for b in llm.prompts] == [2, 2, 1]
    assert any("is tree exclusively" in p for batch in llm.prompts for p in batch)
    pred = np.array([[0, 1, 2], [3, 4, -1]])
    np.testing.assert_array_equal(
        love.apply(pred, ["car", "sedan", "tree", "lorry", "banana"]), [[13, 13, 8], [14, -1, -1]]
    )
    assert love.answers["lorry"] == "Answer: 'truck'"


def test_synonym_shortcut_is_an_option():
    love = LOVE(FailingMapper(), voc_vocab(), synonym_shortcut=True)
    assert love.map(["tv", "motorcycle"]) == {"tv": "tv monitor", "motorcycle": "motorbike"}
    with pytest.raises(AssertionError, match="mapper called"):
        LOVE(FailingMapper(), voc_vocab()).map(["tv"])  # off by default: the LLM is asked
    assert LOVE(FailingMapper(), voc_vocab()).map(["tvmonitor"]) == {"tvmonitor": "tv monitor"}  # devkit name


def test_voc_background_is_class_zero():
    love = LOVE(FailingMapper(), voc_vocab())
    np.testing.assert_array_equal(love.class_ids(["background", "dog", "motorbike"]), [0, 12, 14])
    assert voc_vocab().background_index == 0 and cs_vocab().background_index == -1
    np.testing.assert_array_equal(apply_mapping(np.array([[0, 5, -1]]), np.array([7])), [[7, -1, -1]])


# ---- cache ---------------------------------------------------------------------------------------------
def test_cache_is_reused_only_when_nothing_that_changes_an_answer_changed(tmp_path):
    path = tmp_path / "cache.json"
    first = ScriptedLLM({"sedan": "'car'"})
    LOVE(LLMMapper(first), cs_vocab(), LoveCache(path)).map(["sedan"])
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    assert entry["mapping"] == {"sedan": "car"} and entry["answers"] == {"sedan": "'car'"}
    assert entry["about"]["mapper"]["template"] == "paper"

    def rerun(llm, vocab=None, template="paper"):
        love = LOVE(LLMMapper(llm, template=template), vocab or cs_vocab(), LoveCache(path))
        love.map(["sedan"])
        return love

    same = ScriptedLLM({"sedan": "'truck'"})
    assert rerun(same).mapping == {"sedan": "car"} and same.prompts == []  # cached: the LLM is not asked
    # A changed prompt template, model/decoding settings or class list asks again.
    for llm, vocab, template in [
        (ScriptedLLM({"sedan": "'truck'"}), None, "ours"),
        (ScriptedLLM({"sedan": "'truck'"}, {"kind": "scripted", "max_new_tokens": 7}), None, "paper"),
        (ScriptedLLM({"sedan": "'truck'"}), Vocabulary("cityscapes", list(CITYSCAPES_CLASSES)[:-1]), "paper"),
    ]:
        love = rerun(llm, vocab, template)
        assert love.mapping == {"sedan": "truck"} and len(llm.prompts) == 1
    assert len(json.loads(path.read_text())["entries"]) == 4


def test_answers_are_cached_batch_by_batch_so_an_outage_keeps_them(tmp_path):
    class DyingLLM(ScriptedLLM):
        def complete(self, prompts):
            if len(self.prompts) == 1:
                raise RuntimeError("server went away")
            return super().complete(prompts)

    path = tmp_path / "cache.json"
    llm = DyingLLM({"sedan": "'car'", "lorry": "'truck'", "cab": "'car'"})
    with pytest.raises(RuntimeError):
        LOVE(LLMMapper(llm, batch_size=2), cs_vocab(), LoveCache(path)).map(["sedan", "lorry", "cab"])
    again = ScriptedLLM({"cab": "'car'"})
    love = LOVE(LLMMapper(again, batch_size=2), cs_vocab(), LoveCache(path))
    assert love.map(["sedan", "lorry", "cab"]) == {"sedan": "car", "lorry": "truck", "cab": "car"}
    assert again.prompts == [[build_prompt("cab", cs_vocab())]]  # only the unanswered noun is asked again


def test_old_or_corrupt_cache_is_started_afresh(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"scripted": {"cityscapes": {"sedan": "bus"}}}))  # format 1
    llm = ScriptedLLM({"sedan": "'car'"})
    assert LOVE(LLMMapper(llm), cs_vocab(), LoveCache(path)).map(["sedan"]) == {"sedan": "car"}
    path.write_text("{not json")
    assert LoveCache(path).entries == {}


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
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
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
    mapping = LLMMapper(llm, batch_size=2).map_nouns(nouns, vocab)
    assert set(mapping) == set(nouns) and set(mapping.values()) <= {"background", *VOC_CLASSES}
    assert llm.settings()["max_new_tokens"] == 6 and llm.settings()["decoding"] == "greedy"


def test_hf_backend_prompt_and_parsing(monkeypatch):
    vocab, nouns = voc_vocab(), ["puppy", "sedan"]
    model, tokenizer = tiny_llama(prompt_words(vocab, nouns) + ["I", "'", "m", "happy", "to", "help", "!"])
    llm = HFCausalLM("tiny-random-llama", model=model, tokenizer=tokenizer, device="cpu")
    seen = []
    replies = {"puppy": "I ' m happy to help ! the answer is ' dog '", "sedan": "' car '"}

    def fake_generate(input_ids, attention_mask, **kwargs):
        rows = []
        assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS
        for ids, mask in zip(input_ids, attention_mask):
            text = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            seen.append(text)
            noun = "puppy" if "puppy" in text else "sedan"
            reply = tokenizer(replies[noun], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            rows.append(torch.cat([ids, reply, torch.full((16 - len(reply),), tokenizer.pad_token_id)]))
        return torch.stack(rows)

    monkeypatch.setattr(model, "generate", fake_generate)
    mapping = LLMMapper(llm, batch_size=2).map_nouns(nouns, vocab)
    assert mapping == {"puppy": "dog", "sedan": "car"}
    assert len(seen) == 2 and "puppy" in seen[0] and "aeroplane" in seen[0] and "background" in seen[0]


def test_hf_missing_weights_fail_fast_with_one_line(monkeypatch):
    import time

    from selfseg_fast.errors import WeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for source in ("/nonexistent/llama-folder", "someone/not-cached-llama"):
        start = time.perf_counter()
        with pytest.raises(WeightsError) as info:
            HFCausalLM(source, device="cpu")
        assert time.perf_counter() - start < 10  # no minute of hub retries
        assert "\n" not in str(info.value) and "--llm wordnet" in str(info.value)


def test_build_mapper_specs():
    assert build_mapper().name == "wordnet" and build_mapper("wordnet").name == "wordnet"
    assert build_mapper().is_llm is False
    mapper = build_mapper("http://localhost:8000/v1", template="ours")
    assert mapper.llm.url == "http://localhost:8000/v1/chat/completions" and mapper.template == "ours"
    assert mapper.is_llm and mapper.llm.max_tokens == DEFAULT_MAX_NEW_TOKENS
    with pytest.raises(LLMError, match="expected wordnet"):
        build_mapper("gpt")
    with pytest.raises(LLMError, match="--llm-url"):
        build_mapper("url")


# ---- WordNet -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wordnet_mapper():
    try:
        return WordNetNounMapper()._mapper
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
    assert wordnet_mapper.map_nouns([noun], voc_vocab().classes())[noun] == voc
    assert wordnet_mapper.map_nouns([noun], cs_vocab().classes())[noun] == cityscapes
