"""Shared pieces of the evaluation tests: a tokenizer, a local lm-eval task, and an
independent log-likelihood scorer of its multiple-choice examples."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ("def", "class", "import", "return", "print", "open", "self", "yield", "lambda", "with", "value",
         "items", "None", "True", "False", "list")
EOD = "<|endoftext|>"


def train_tokenizer(out_dir: Path) -> Path:
    """A byte-level BPE tokenizer (290 ids, one special token, no tokenizer_config.json:
    what `data_prep` and the demo leave), saved as `out_dir/tokenizer.json`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    text = [" ".join(WORDS) + "\nQuestion: Answer:", "def add(a, b):\n    return a + b\n"] * 50
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=290, show_progress=False, special_tokens=[EOD],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir / "tokenizer.json"


def write_task(root: Path, name: str = "pap_toy_mc", count: int = 16, seed: int = 0) -> list:
    """A multiple-choice lm-eval task read from a local JSON-lines file; returns its examples."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        docs.append({"question": question, "choices": choices, "label": rng.randrange(4)})
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {json.dumps(str(root / (name + '.jsonl')))}\n"
        "validation_split: validation\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \"{{label}}\"\n"
        "doc_to_choice: \"{{choices}}\"\nmetric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    return docs


def choice_loglikelihoods(logits_fn, tokenizer_file: Path, doc: dict) -> list:
    """log p(" " + choice | prompt) for every choice of `doc`, summed over the choice's tokens.

    `logits_fn(ids [1, T]) -> [1, T, vocab]`. The choice's tokens are those of prompt + choice
    beyond the prompt's own, the prompt's tokens being a prefix of them (checked).
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    prompt = f"Question: {doc['question']}\nAnswer:"
    context = tokenizer.encode(prompt).ids
    out = []
    for choice in doc["choices"]:
        whole = tokenizer.encode(prompt + " " + choice).ids
        assert whole[:len(context)] == context, (prompt, choice)
        with torch.no_grad():
            logprobs = torch.log_softmax(logits_fn(torch.tensor([whole[:-1]]))[0].double(), -1)
        out.append(sum(float(logprobs[position - 1, whole[position]]) for position in range(len(context), len(whole))))
    return out


def predictions(lls: list, choices: list) -> tuple:
    """(acc choice, acc_norm choice): highest log-likelihood, and per character of the choice."""
    acc = max(range(len(lls)), key=lambda i: lls[i])
    norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
    return acc, norm
