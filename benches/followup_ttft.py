"""Time to first token of a follow-up turn in a long conversation: a Session (the REPL's local
backend), which keeps the KV cache and prefills only the new turn, against re-prefilling the
whole conversation (what a front end without a kept cache does).

    uv run --frozen python benches/followup_ttft.py [--model smollm2] [--tokens 2000] [--threads 2]

Builds a conversation of at least ``--tokens`` tokens with the chat template, then times one
greedy token of a follow-up question both ways (the re-prefill is timed before and after the
Session's turn, and the better of the two counts). The issue's bar: the follow-up at most a
fifth of the re-prefill. Prints one line of JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch
from llm_infer import Session, load

FILLER = (
    "Here is some more context about the project we are discussing: it reads models, "
    "quantizes them, serves them over HTTP and chats with them in a terminal. "
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a load() source (default smollm2)")
    parser.add_argument("--tokens", type=int, default=2000, help="conversation length")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    llm = load(args.model, compile=False)  # prefill is what differs; no compilation to wait for
    session = Session(llm)
    greedy = dict(temperature=0, max_tokens=1)
    messages: list[dict[str, str]] = []
    while (
        len(llm.tokenizer.encode(llm.chat_prompt(messages or [{"role": "user", "content": ""}])))
        < args.tokens
    ):
        messages += [
            {"role": "user", "content": FILLER * 2},
            {"role": "assistant", "content": "Understood. " + FILLER},
        ]
    history, last = messages[:-2], messages[-2]
    session.chat([*history, last], temperature=0, max_tokens=32)  # fills the cache
    follow_up = [*session.messages, {"role": "user", "content": "So what does it do first?"}]
    prompt = llm.chat_prompt(follow_up)

    def reprefill() -> float:
        start = time.perf_counter()
        llm.generate(prompt, **greedy)
        return time.perf_counter() - start

    before = reprefill()
    start = time.perf_counter()
    reply = session.chat(follow_up, **greedy)
    session_s = time.perf_counter() - start
    after = reprefill()
    full = min(before, after)
    print(
        json.dumps(
            {
                "bench": "followup_ttft",
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": f"{os.cpu_count()}-core {platform.machine()}",
                "load_average_1m": os.getloadavg()[0],
                "model": args.model,
                "conversation_tokens": len(llm.tokenizer.encode(prompt)),
                "follow_up_prefilled_tokens": reply.usage.prompt_tokens,
                "follow_up_cached_tokens": reply.usage.cached_tokens,
                "session_ttft_s": session_s,
                "reprefill_ttft_s": full,
                "ratio": session_s / full,
                "within_a_fifth": session_s <= full / 5,
            }
        )
    )


if __name__ == "__main__":
    main()
