"""A local lm-eval task for the demo models: which word ends a line of Python?

    python -m pap.eval example-task --out runs/eval_tasks
    python -m pap.eval harness --model runs/tiny_pap/hf --include-path runs/eval_tasks --tasks stdlib_cloze

Examples come from this interpreter's standard library (the text the demo trains on, so
this checks a model end to end; it is no held-out benchmark): lines whose last word is
one of a few Python constants and keywords, the four lines before them as context, and
the true word plus three others as the choices. Deterministic for a given Python version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK = "stdlib_cloze"
WORDS = ("None", "True", "False", "self", "pass", "break", "continue")


def _examples(count: int, seed: int) -> list:
    from data_prep.embedded_corpus import stdlib_files

    rng = random.Random(seed)
    candidates = []
    for path in stdlib_files():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i in range(4, len(lines)):
            head, space, last = lines[i].rpartition(" ")
            if space and last in WORDS and head.strip():
                candidates.append((lines[i - 4:i] + [head], last))
    picked = rng.sample(candidates, min(count, len(candidates)))
    examples = []
    for context_lines, answer in picked:
        choices = rng.sample([w for w in WORDS if w != answer], 3) + [answer]
        rng.shuffle(choices)
        examples.append({"context": "\n".join(context_lines), "choices": choices, "label": choices.index(answer)})
    return examples


def write(out: str, count: int = 200, seed: int = 0) -> Path:
    """Write `<out>/stdlib_cloze.yaml` and its data `<out>/stdlib_cloze.jsonl`; returns the YAML."""
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in _examples(count, seed)))
    yaml_path = root / f"{TASK}.yaml"
    # The context ends before the word; lm-eval joins it to each choice with one space.
    yaml_path.write_text(
        f"task: {TASK}\n"
        f"dataset_path: json\n"
        f"dataset_kwargs:\n"
        f"  data_files:\n"
        f"    test: {json.dumps(str(data))}\n"
        f"test_split: test\n"
        f"output_type: multiple_choice\n"
        f"doc_to_text: \"{{{{context}}}}\"\n"
        f"doc_to_target: \"{{{{label}}}}\"\n"
        f"doc_to_choice: \"{{{{choices}}}}\"\n"
        f"metric_list:\n"
        f"  - metric: acc\n"
        f"    aggregation: mean\n"
        f"    higher_is_better: true\n"
        f"  - metric: acc_norm\n"
        f"    aggregation: mean\n"
        f"    higher_is_better: true\n"
        f"metadata:\n"
        f"  version: 1.0\n")
    return yaml_path
