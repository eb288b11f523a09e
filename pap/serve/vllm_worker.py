"""Greedy continuations and their log-probabilities from vLLM, run in vLLM's environment.

    VLLM_PYTHON pap/serve/vllm_worker.py REQUEST.json RESULT.json

Standalone: vLLM's environment has no pap. REQUEST: {"model": DIR, "prompts": [[ids]],
"max_tokens": N, "dtype": "float32"}; RESULT: {"tokens": [[ids]], "logprobs": [[float]],
"version": vLLM's}. Token ids in and out, no tokenizer needed.
"""

import json
import sys


def main(request_path: str, result_path: str) -> None:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    request = json.loads(open(request_path).read())
    llm = LLM(model=request["model"], trust_remote_code=True, dtype=request.get("dtype", "float32"),
              enforce_eager=True, skip_tokenizer_init=True, max_model_len=request.get("max_model_len", 256),
              max_num_seqs=len(request["prompts"]), seed=0)
    params = SamplingParams(temperature=0, max_tokens=request["max_tokens"], logprobs=1, detokenize=False,
                            ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]], params)
    tokens, logprobs = [], []
    for output in outputs:
        completion = output.outputs[0]
        tokens.append(list(completion.token_ids))
        logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)])
    with open(result_path, "w") as f:
        json.dump({"tokens": tokens, "logprobs": logprobs, "version": vllm.__version__}, f)


if __name__ == "__main__":  # vLLM starts its engine with `spawn`: the entry point must be guarded
    main(sys.argv[1], sys.argv[2])
