"""The word-cache encoder gives the `tokenizers` library's ids on every text, or hands the text back.

Each test encodes texts twice, with `--encoder auto` (the word cache) and `--encoder
library`, and compares. The texts are built to hit every branch of the split: all
probed code points, each white-space kind, numbers of every Unicode kind, contractions,
added tokens inside text, private-use and unassigned planes, lone surrogates.
"""

from __future__ import annotations

import random

import pytest

from data_prep import bytelevel
from data_prep.tokenizer_loader import resolve
from tests.data_prep.conftest import EOD

# Characters that stress the split: white space of every kind (\x1c-\x1f are not
# White_Space), numbers (decimal, superscript, roman, fractions, other scripts),
# letters and marks of several scripts, apostrophes, symbols, emoji.
POOL = (list("abcXYZ'sStTdDmlrev _-.,;:!?()[]{}<>|/\\\"#@0123456789") + list("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
        + list("\x85\xa0\u1680\u2000\u2009\u2028\u2029\u202f\u205f\u3000\u180e\u200b")
        + list("²³¹½¼٣٤०१߀Ⅻⅻ①〇𝟘") + list("éßøÆ東京данныеλόγος한국어עבריתالعربيةà́ñ̃") + list("€£©®™°…—–“”‘’«»")
        + ["🙂", "👩\u200d💻", "\U000f0001", "\U00050000", "\U000e0041"])
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "''"]


def _texts(seed: int, count: int, extra=()) -> list:
    rng = random.Random(seed)
    pool = POOL + CONTRACTIONS + list(extra)
    texts = []
    for _ in range(count):
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 60))]
        if rng.random() < 0.3:
            parts = [p * rng.randint(1, 4) for p in parts]
        texts.append("".join(parts))
    ascii_words = ["def", " f", "(x", "):", "\n", "    ", "return", " x", "  ", "\t", "'s", " 12", "3", "'ll"]
    texts += ["".join(rng.choice(ascii_words) for _ in range(rng.randint(1, 80))) for _ in range(count)]
    return texts


def _both(path: str):
    fast = resolve(path, encoder="auto")
    library = resolve(path, encoder="library")
    assert fast.fast is not None, fast.encoder_note
    return fast.load(), library.load()


def _train(docs, digits: bool, template: bool = False) -> "Tokenizer":  # noqa: F821
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=[EOD, "<bos>", "<|im_start|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs + _texts(1, 200), trainer=trainer)
    if template:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tok


@pytest.fixture(scope="module", params=["gpt2", "digits", "template"])
def tokenizer_path(request, tmp_path_factory, docs) -> str:
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    _train(docs, digits=request.param == "digits", template=request.param == "template").save(str(path))
    return str(path)


def test_same_ids_as_the_library_on_stress_texts(tokenizer_path, docs):
    fast, library = _both(tokenizer_path)
    probe_sample = fast.spec.fast.fallback_chars[::max(1, len(fast.spec.fast.fallback_chars) // 50)]
    texts = _texts(0, 1500, extra=list(probe_sample) + [EOD, " <|im_start|>user", "<bos>"]) + docs
    texts += ["ok \udc80 then", "\ud800"]  # lone surrogates: neither encoder can take them
    ours, theirs = fast.encode_batch(texts), library.encode_batch(texts)
    assert ours == theirs
    assert ours[-2:] == [None, None]
    # The word cache did the work, not the fallback: every ASCII text without an added token.
    plain_ascii = [t for t in texts if t.isascii() and EOD not in t and "<bos>" not in t and "<|im_start|>" not in t]
    assert len(plain_ascii) > 1000
    assert all(fast._fast.encode(t) is not None for t in plain_ascii)


def test_every_probed_code_point_is_exact_or_handed_back(tokenizer_path):
    """All of planes 0-3 and 14, each character beside letters, numbers and spaces; the rest sampled."""
    fast, library = _both(tokenizer_path)
    fallback = set(fast.spec.fast.fallback_chars)
    chars = [c for c in bytelevel._probed_characters() if c not in fallback]
    rng = random.Random(0)
    rng.shuffle(chars)
    contexts = ["a", "1", " ", "  ", "'s", "\n", "é", "٣", "."]
    texts = []
    for i in range(0, len(chars), 120):
        texts.append("".join(c + rng.choice(contexts) + (" " if j % 3 else "") for j, c in enumerate(chars[i:i + 120])))
    ours = fast.encode_batch(texts)
    assert ours == library.encode_batch(texts)
    assert all(fast._fast.encode(t) is not None for t in texts)  # none of them needed the library
    # And a character the engines disagree on is handed to the library.
    assert fallback
    for c in list(fallback)[:20]:
        assert fast._fast.encode(f"x {c} y") is None
    # The unassigned and private-use planes, a sample: in no class on either side.
    rest = bytelevel._characters(bytelevel.REST)[::997]
    texts = [f"a{c}1 {c}{c}\n{c}'s" for c in rest]
    assert fast.encode_batch(texts) == library.encode_batch(texts)
    assert all(fast._fast.encode(t) is not None for t in texts)


def test_a_small_cache_restarts_and_gives_the_same_ids(tokenizer_path, docs, monkeypatch):
    monkeypatch.setattr(bytelevel, "CACHE_ENTRIES", 50)
    fast, library = _both(tokenizer_path)
    assert fast.encode_batch(docs) == library.encode_batch(docs)
    assert len(fast._fast._ids) <= 50


def test_ascii_expression_matches_the_unicode_one_on_ascii():
    import re

    import regex

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)] + CONTRACTIONS
    for pattern in (bytelevel.GPT2_PATTERN, bytelevel.DIGITS_PATTERN):
        ascii_split, unicode_split = re.compile(bytelevel.ascii_pattern(pattern)), regex.compile(pattern)
        for _ in range(3000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            assert ascii_split.findall(text) == unicode_split.findall(text), repr(text)


@pytest.mark.parametrize("change, reason", [
    (lambda t, n, p: setattr(t, "normalizer", n.NFC()), "normalizer NFC"),
    (lambda t, n, p: setattr(t, "pre_tokenizer", p.ByteLevel(add_prefix_space=True)), "pre-tokenizer"),
    (lambda t, n, p: setattr(t, "pre_tokenizer", p.Metaspace()), "pre-tokenizer"),
    (lambda t, n, p: t.enable_truncation(16), "truncation"),
])
def test_other_pipelines_use_the_library(tmp_path, docs, change, reason):
    from tokenizers import normalizers, pre_tokenizers

    tok = _train(docs[:50], digits=False)
    change(tok, normalizers, pre_tokenizers)
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    spec = resolve(path, encoder="auto")
    assert spec.fast is None and reason in spec.encoder_note
    assert "library encoder" in spec.describe()
    assert spec.load().encode_batch(docs[:20]) == resolve(path).load().encode_batch(docs[:20])


def test_template_tokens_requested_use_the_library(tmp_path, docs):
    path = str(tmp_path / "tokenizer.json")
    _train(docs[:50], digits=False, template=True).save(path)
    spec = resolve(path, encoder="auto", include_special_tokens=True)
    assert spec.fast is None and "template tokens" in spec.encoder_note
    assert spec.load().encode("def f") == [1] + resolve(path).load().encode("def f")
