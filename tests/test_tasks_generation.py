"""Batched generation and choice scoring on the tiny random model in float32: a left-padded batch gives
what each prompt gives alone, choice log-likelihoods equal a plain forward's and lm-eval's own
loglikelihood (on a SentencePiece-style tokenizer too), and a chat template's BOS is not doubled."""
import pytest
import torch

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness import models
from harness.generation import choice_logprobs, greedy_generate, left_padded
from harness.judge import as_chat
from harness.tasks.multiple_choice import build_prompt

TINY_MODEL = {
    "name": "tiny-random",
    "random": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096,
    },
}
PROMPTS = ["Q: what is the capital of France?\nA:", "Hi", "The answer is ", "x" * 40]


@pytest.fixture(scope="module")
def tiny():
    # One thread: the 2 CPU cores are shared, and OpenMP threads spinning against other processes are
    # many times slower than one thread on this model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield models.load_tokenizer(TINY_MODEL), models.load_model(TINY_MODEL, "cpu", torch.float32, seed=0)
    torch.set_num_threads(threads)


def test_left_padding_right_aligns_rows_and_counts_positions_from_the_first_token():
    ids, mask, positions = left_padded([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny):
    tokenizer, model = tiny
    batched = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
    alone = [greedy_generate(model, tokenizer, [p], max_new_tokens=10, batch_size=1)[0] for p in PROMPTS]
    assert batched == alone
    assert len({len(tokenizer(p).input_ids) for p in PROMPTS}) == len(PROMPTS)  # the batch really was padded
    assert all(batched)


def test_generation_stops_at_the_stop_string(tiny):
    tokenizer, model = tiny
    free = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
    stop = [text[2:4] for text in free if len(text) >= 4][:1]  # a string the model is known to produce
    cut = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4, stop=stop)
    assert all(stop[0] not in text for text in cut)
    assert all(full.startswith(part) for full, part in zip(free, cut))


@torch.no_grad()
def test_choice_log_likelihoods_equal_a_plain_forward(tiny):
    tokenizer, model = tiny
    requests = [("Question: 2+2?\nAnswer:", [" A", " B", " four"]), ("Short", [" yes", " no thanks"])]
    scored = choice_logprobs(model, tokenizer, requests, batch_size=3)
    for (context, choices), scores in zip(requests, scored):
        for choice, score in zip(choices, scores):
            ctx = tokenizer(context).input_ids
            target = tokenizer(choice, add_special_tokens=False).input_ids
            log_probs = torch.log_softmax(model(torch.tensor([ctx + target])).logits[0].float(), -1)
            expected = sum(log_probs[len(ctx) - 1 + i, t].item() for i, t in enumerate(target))
            assert score == pytest.approx(expected, abs=1e-4)


def sentencepiece_tokenizer(**special) -> PreTrainedTokenizerFast:
    """A Llama-style SentencePiece tokenizer (BPE over characters with '▁' pieces, a '▁' prepended to
    the text): ' A' alone is '▁', '▁A', while in 'Answer: A' the choice is the single piece '▁A'."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?:.,!'+<>|\n":
        vocab.setdefault(ch, len(vocab))
    letters = [ch for ch in vocab if len(ch) == 1 and ch.isalpha()]
    vocab |= {f"▁{ch}": len(vocab) + i for i, ch in enumerate(letters)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", ch) for ch in letters], unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **special)


@pytest.fixture(scope="module")
def sentencepiece_model():
    tokenizer = sentencepiece_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    return tokenizer, LlamaForCausalLM(config).eval()


@torch.no_grad()
def test_choice_log_likelihoods_equal_lm_evals_on_a_sentencepiece_tokenizer(sentencepiece_model):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tokenizer, model = sentencepiece_model
    assert tokenizer.convert_ids_to_tokens(tokenizer(" A", add_special_tokens=False).input_ids) == ["▁", "▁A"]
    requests = [("Question: 2+2?\nAnswer:", [" A", " B", " four"]), ("The answer is ", ["Paris", "Rome"])]
    scored = choice_logprobs(model, tokenizer, requests, batch_size=2)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    instances = [
        Instance("loglikelihood", {}, (context, choice), idx=0)
        for context, choices in requests for choice in choices
    ]
    expected = [score for score, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    assert [s for row in scored for s in row] == pytest.approx(expected, abs=1e-4)


def test_a_chat_template_that_writes_bos_gets_no_second_one(sentencepiece_model):
    """Gemma's template starts with {{ bos_token }} and its tokenizer adds one too."""
    from tokenizers import processors

    _, model = sentencepiece_model
    tokenizer = sentencepiece_tokenizer(chat_template="{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    prompt = as_chat(tokenizer, [{"role": "user", "content": "Hi"}])
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        greedy_generate(model, tokenizer, [prompt, "Hi"], max_new_tokens=1, batch_size=1)
    finally:
        hook.remove()
    assert sorted(row.count(tokenizer.bos_token_id) for row in seen) == [1, 1]  # the chat prompt and the plain one
    assert all(row[0] == tokenizer.bos_token_id for row in seen)


def test_shots_are_dropped_until_the_prompt_fits():
    shot = {"question": "Q?", "choices": ["w", "x", "y", "z"], "answer": 1, "topic": "t"}
    question = shot | {"question": "Asked?"}
    full, used = build_prompt(question, [shot] * 5, 5, len, 10_000)
    assert used == 5 and full.count("Answer: B") == 5 and full.endswith("Asked?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    limit = len(build_prompt(question, [shot] * 5, 2, len, 10_000)[0]) + len(" A")  # 2 shots and the answer
    fitted, used = build_prompt(question, [shot] * 5, 5, len, limit)
    assert used == 2 and len(fitted) + len(" A") <= limit
    words, used = build_prompt(question, [shot] * 5, 1, len, 10_000, answer_format="text")
    assert used == 1 and "Answer: x\n\nAsked?" in words
    with pytest.raises(ValueError, match="longer than max_prompt_tokens"):
        build_prompt(question, [shot] * 5, 5, len, 20)
