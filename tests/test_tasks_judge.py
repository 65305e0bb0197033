"""The judge: rating parsing, a local model judge, and the HTTP judge against a real OpenAI-compatible server
process on 127.0.0.1 (`python -m harness.judge`, backed by the tiny random model), end to end through the
judged tasks. The API key must reach the server and nothing else."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY, records, run_cli
from harness.judge import KEY_ENV, URL_ENV, HttpJudge, LocalJudge, parse_rating, redact_url
from harness.tasks.instruction_following import RATING as TEN_POINT
from harness.tasks.summarization import RATING as FIVE_POINT

KEY = "sk-test-do-not-leak-4f9a"
URL_SECRETS = ("judge-user", "url-secret-77c1", "query-secret-9d2e")


def with_url_secrets(base: str) -> str:
    """The server's base URL with a user:password and a token in the query, as some gateways take them."""
    return base.replace("http://", f"http://{URL_SECRETS[0]}:{URL_SECRETS[1]}@") + f"?api_key={URL_SECRETS[2]}"


@pytest.fixture
def one_thread(monkeypatch):
    # 2 shared CPU cores: one thread is many times faster for the tiny model than two spinning ones.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def judge_server():
    """A judge server process on 127.0.0.1 requiring KEY, shared by this module's tests; yields its base
    URL. Bounded: it stops by itself after 60 requests, and is terminated when the tests end."""
    env = os.environ | {KEY_ENV: KEY, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "harness.judge", "--model", "tiny-random", "--max-requests", "60"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = server.stdout.readline()  # printed once listening
        assert line.startswith("listening on http://127.0.0.1:"), server.stderr.read()
        yield line.split()[-1]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize(
    "reply, pattern, low, high, expected",
    [
        ("The summary is clear.\nRating: 4", FIVE_POINT, 1, 5, 4.0),
        ("Rating: **3**", FIVE_POINT, 1, 5, 3.0),
        ("Rating: 9", FIVE_POINT, 1, 5, None),  # out of range: no digit 1-5 after 'Rating:'
        ("Mostly right. Rating: [[7]]", TEN_POINT, 1, 10, 7.0),
        ("Rating: [[11]]", TEN_POINT, 1, 10, None),
        ("I would say seven.", TEN_POINT, 1, 10, None),
    ],
)
def test_ratings_are_parsed_only_when_stated_in_range(reply, pattern, low, high, expected):
    assert parse_rating(reply, pattern, low, high) == expected


def test_local_judge_answers_every_prompt(one_thread):
    judge = LocalJudge("tiny-random", max_tokens=8)
    replies = judge.complete(["Rate this: good.", "Rate that: bad."])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert judge.describe() == {"kind": "local", "model": "tiny-random", "max_tokens": 8, "decoding": "greedy"}


def test_http_judge_sends_the_key_and_reports_refusals_without_it(judge_server, one_thread, monkeypatch):
    monkeypatch.setenv(URL_ENV, judge_server)
    monkeypatch.setenv(KEY_ENV, KEY)
    (reply,) = HttpJudge("tiny-random", max_tokens=4).complete(["Rate: fine."])
    assert isinstance(reply, str)
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with pytest.raises(RuntimeError, match="HTTP 401") as refused:
        HttpJudge("tiny-random", max_tokens=4).complete(["Rate: fine."])
    assert "wrong-key" not in str(refused.value)


def test_urls_are_described_without_credentials():
    assert redact_url("https://u:p%40ss@api.example.com:8443/v1?api_key=abc&x=1#frag") == "https://api.example.com:8443/v1"
    assert redact_url("http://127.0.0.1:9000/v1") == "http://127.0.0.1:9000/v1"
    assert redact_url("http://tok@[::1]:80/v1/") == "http://[::1]:80/v1/"


def test_judged_tasks_through_an_http_judge_record_ratings_but_never_the_key(judge_server, one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, with_url_secrets(judge_server))
    monkeypatch.setenv(KEY_ENV, KEY)
    proc = run_cli(
        *TINY, "method=none", "tasks=[fictional_summaries,fact_instructions]", "++max_samples=3",
        "++judge.kind=http", "++judge.model=tiny-judge", "++judge.max_tokens=12", results_dir=tmp_path,
    )
    (record,) = records(tmp_path)
    summaries, instructions = record["tasks"]["fictional_summaries"], record["tasks"]["fact_instructions"]
    assert summaries["samples_per_bucket"] == {"short": 1, "medium": 1, "long": 1}
    assert summaries["judge"] == {"kind": "http", "model": "tiny-judge", "url": judge_server, "max_tokens": 12}
    assert len(summaries["ratings"]) == 3 and all(len(s["ratings"]) == 4 for s in summaries["ratings"])
    assert all(isinstance(r["reply"], str) for s in summaries["ratings"] for r in s["ratings"].values())
    assert instructions["samples"] == 3 and all(len(c["ratings"]) == 2 for c in instructions["ratings"])
    for name, replies, unrated in (("fictional_summaries", 12, summaries["unrated"]), ("fact_instructions", 6, instructions["unrated"])):
        assert record["metrics"][f"{name}/rated_fraction"] == (replies - unrated) / replies
        assert record["metrics"][f"{name}/n"] == 3
    assert summaries["prompt_version"] and instructions["prompt_version"] and instructions["judge"]["kind"] == "http"
    # Every file the run left (record, Hydra's config and log) and everything it printed.
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert list(tmp_path.rglob("*.log")), "the run's log file is among what is searched"
    for secret in (KEY, *URL_SECRETS):
        assert secret not in written + proc.stdout + proc.stderr


def test_a_failing_judge_names_its_url_without_credentials(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, with_url_secrets("http://127.0.0.1:9/v1"))  # port 9 (discard): refused
    monkeypatch.setenv(KEY_ENV, KEY)
    proc = run_cli(*TINY, "method=none", "tasks=[fact_instructions]", "++max_samples=1", "++judge.kind=http",
                   "++judge.model=x", "++judge.timeout_s=5", results_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "judge at http://127.0.0.1:9/v1 failed" in proc.stderr
    (record,) = records(tmp_path)
    assert record["status"] == "failed" and "http://127.0.0.1:9/v1" in record["error"]
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    for secret in (KEY, *URL_SECRETS):
        assert secret not in written + proc.stdout + proc.stderr


def test_a_key_in_the_judge_settings_is_refused_before_anything_is_recorded(tmp_path):
    proc = run_cli(*TINY, "method=none", "tasks=[fact_instructions]", "++judge.kind=http", "++judge.api_key=sk-in-config",
                   results_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "judge.api_key" in proc.stderr and HttpJudge.__name__ not in proc.stderr
    assert not (tmp_path / "runs").exists()
