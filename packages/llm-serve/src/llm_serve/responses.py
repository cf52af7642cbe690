"""Engine results as OpenAI responses: waiting (cancelled if the client leaves), SSE streams,
usage, logprobs, and chat messages as the template takes them.

A streamed request whose client disconnects is cancelled: Starlette cancels the response's
generator, whose ``finally`` cancels the engine requests, which leave the batch at the end of
the current step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from llm_infer import Completion, TokenLogprob
from llm_infer.engine import RequestHandle

from llm_serve.errors import error_body
from llm_serve.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from llm_serve.state import Server
from llm_serve.tools import ParsedToolCall, ToolCallParser, render_tool_calls, tools_prompt


async def wait_all(handles: list[RequestHandle], request: Request) -> list[Completion] | None:
    """The completions of ``handles``; None (and every handle cancelled) if the client leaves."""

    async def client_left() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    results = asyncio.ensure_future(asyncio.gather(*(h.result() for h in handles)))
    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({results, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not results.done():  # the client left (or the server stops): free the slots
            for handle in handles:
                handle.cancel()
    return results.result() if results.done() else None


async def merged(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, str | Completion]]:
    """``(choice index, text delta or final Completion)`` from every handle, as they come.
    Leaving early cancels every handle."""
    queue: asyncio.Queue[tuple[int, str | Completion | BaseException]] = asyncio.Queue()

    async def pump(index: int, handle: RequestHandle) -> None:
        try:
            async for delta in handle:
                queue.put_nowait((index, delta))
            queue.put_nowait((index, await handle.result()))
        except Exception as exc:  # an engine step failed: the stream reports it
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Completion):
                left -= 1
            yield index, item
    finally:
        for handle in handles:
            handle.cancel()
        for task in tasks:
            task.cancel()


def sse(data: dict[str, Any] | str) -> str:
    """One Server-Sent Events frame."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def usage_of(completions: Sequence[Completion], n: int) -> dict[str, Any]:
    """OpenAI's usage: each prompt counted once (not once per choice), every choice's tokens."""
    prompt = sum(c.usage.prompt_tokens for c in completions[::n])
    cached = sum(c.usage.cached_tokens for c in completions[::n])
    generated = sum(c.usage.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def reported_logprobs(server: Server, completion: Completion) -> list[TokenLogprob]:
    """The logprobs of the reply's tokens (an end-of-sequence token is not part of the reply)."""
    logprobs = list(completion.logprobs or ())
    eos = set(server.llm.tokenizer.eos_token_ids)
    if logprobs and completion.finish_reason == "stop" and logprobs[-1].token_id in eos:
        logprobs.pop()
    return logprobs


def chat_logprobs(server: Server, completion: Completion) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = server.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {
                **entry(lp.token_id, lp.logprob),
                "top_logprobs": [entry(t, v) for t, v in lp.top_logprobs.items()],
            }
            for lp in reported_logprobs(server, completion)
        ],
        "refusal": None,
    }


def completion_logprobs(server: Server, completion: Completion) -> dict[str, Any]:
    """``choices[].logprobs`` of a (legacy) text completion."""
    tokens, offsets, offset = [], [], 0
    logprobs = reported_logprobs(server, completion)
    for lp in logprobs:
        tokens.append(server.token_text(lp.token_id))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [
            {server.token_text(t): v for t, v in lp.top_logprobs.items()} for lp in logprobs
        ],
        "text_offset": offsets,
    }


def chat_messages(body: ChatCompletionRequest, with_tools: bool) -> list[dict[str, Any]]:
    """The messages as the chat template takes them: text content, ``developer`` as ``system``,
    earlier tool calls written out, and the tools described in the system message."""
    messages = [template_message(m) for m in body.messages]
    if with_tools and body.tools:
        section = tools_prompt(body.tools)
        if messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{section}"
        else:
            messages.insert(0, {"role": "system", "content": section})
    return messages


def template_message(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    content = content or ""
    if message.tool_calls:
        content = "\n".join(filter(None, (content, render_tool_calls(message))))
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": content}


def split_reply(text: str, parallel: bool) -> tuple[str | None, list[ParsedToolCall]]:
    parser = ToolCallParser()
    content, calls = parser.push(text)
    content += parser.finish()
    if not calls:
        return content, []
    return (content.strip() or None), (calls if parallel else calls[:1])


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def chat_events(
    server: Server,
    body: ChatCompletionRequest,
    handles: list[RequestHandle],
    base: dict[str, Any],
    with_tools: bool,
    prefix: str,
) -> AsyncIterator[str]:
    """SSE frames of a streamed chat completion, ending with ``data: [DONE]``."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {**base, "object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
            **extra,
        }
        return sse({**head, "choices": [choice]})

    parsers = [ToolCallParser() for _ in handles]
    calls_made = [0] * len(handles)
    for i, parser in enumerate(parsers):
        parser.push(prefix)
        yield chunk(i, {"role": "assistant", "content": ""})
    done: list[Completion | None] = [None] * len(handles)
    try:
        async for i, item in merged(handles):
            if isinstance(item, str):
                for frame in _chat_deltas(parsers[i], item, i, calls_made, with_tools, body, chunk):
                    yield frame
                continue
            done[i] = item
            if with_tools:
                rest = parsers[i].finish()
                if rest:
                    yield chunk(i, {"content": rest})
            finish = "tool_calls" if calls_made[i] else item.finish_reason
            logprobs = chat_logprobs(server, item) if body.logprobs else None
            yield chunk(i, {}, finish, logprobs=logprobs)
    except Exception as exc:  # an engine step failed mid-stream: report it, then end the stream
        yield sse(error_body(500, f"generation failed: {type(exc).__name__}: {exc}"))
    else:
        if include_usage:
            finished = [c for c in done if c is not None]
            yield sse({**head, "choices": [], "usage": usage_of(finished, body.n)})
    yield sse("[DONE]")


def _chat_deltas(
    parser: ToolCallParser,
    text: str,
    index: int,
    calls_made: list[int],
    with_tools: bool,
    body: ChatCompletionRequest,
    chunk: Callable[..., str],
) -> Iterator[str]:
    content, calls = parser.push(text) if with_tools else (text, [])
    if content:
        yield chunk(index, {"content": content})
    for call in calls:
        if calls_made[index] and not body.parallel_tool_calls:
            continue
        yield chunk(index, {"tool_calls": [call.openai(calls_made[index])]})
        calls_made[index] += 1


async def completion_events(
    server: Server,
    body: CompletionRequest,
    handles: list[RequestHandle],
    base: dict[str, Any],
) -> AsyncIterator[str]:
    """SSE frames of a streamed text completion, ending with ``data: [DONE]``."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {**base, **({"usage": None} if include_usage else {})}

    def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    done: list[Completion | None] = [None] * len(handles)
    try:
        async for i, item in merged(handles):
            if isinstance(item, str):
                yield chunk(i, item)
                continue
            done[i] = item
            logprobs = completion_logprobs(server, item) if body.logprobs is not None else None
            yield chunk(i, "", item.finish_reason, logprobs)
    except Exception as exc:  # an engine step failed mid-stream: report it, then end the stream
        yield sse(error_body(500, f"generation failed: {type(exc).__name__}: {exc}"))
    else:
        if include_usage:
            finished = [c for c in done if c is not None]
            yield sse({**head, "choices": [], "usage": usage_of(finished, body.n)})
    yield sse("[DONE]")
