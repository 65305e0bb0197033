"""Batched generation and choice scoring on the tiny random model in float32: a left-padded batch gives
what each prompt gives alone, and choice log-likelihoods equal a plain forward's."""
import pytest
import torch

from harness import models
from harness.generation import choice_logprobs, greedy_generate, left_padded
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
