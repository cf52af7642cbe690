"""The conversation: system prompt, messages and sampling settings, saved and loaded as JSON."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SETTINGS = (  # what /set takes: llm-infer's SamplingParams holds their types and ranges
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "min_tokens",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
)
ROLES = ("user", "assistant", "system")


class ConversationError(ValueError):
    """A setting or a conversation file is invalid; the message is one line."""


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, float | int | bool] = field(default_factory=dict)

    def as_messages(self) -> list[dict[str, str]]:
        """The messages to send: the system prompt first, when there is one."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def set(self, name: str, value: str) -> float | int | bool:
        """Parse and store one sampling setting, checked by llm-infer's ``SamplingParams``
        (its types and ranges) when llm-infer is installed; without it (a remote-only
        install) the value is parsed as a number or a boolean and the server checks it.
        Raises :class:`ConversationError` naming the setting."""
        if name not in SETTINGS:
            raise ConversationError(f"unknown setting {name!r} (one of: {', '.join(SETTINGS)})")
        try:
            from llm_infer.errors import SamplingError
            from llm_infer.params import SamplingParams
        except ImportError:
            parsed = _parse_plain(name, value)
        else:
            try:
                params = SamplingParams.from_kwargs(**{**self.settings, name: value})
            except SamplingError as exc:
                raise ConversationError(str(exc)) from None
            parsed = getattr(params, name)
        self.settings[name] = parsed
        return parsed

    def reset(self) -> None:
        """Forget the messages; the system prompt and settings stay."""
        self.messages.clear()

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON, atomically (a temporary file renamed into place)."""
        path = Path(path).expanduser()
        data = {"system": self.system, "messages": self.messages, "settings": self.settings}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        """Read a file written by :meth:`save`. Raises :class:`ConversationError`."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConversationError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversationError(f"{path}: not a conversation file ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise ConversationError(f"{path}: not a conversation file (no 'messages' list)")
        for i, m in enumerate(data["messages"]):
            if not (
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            ):
                raise ConversationError(
                    f"{path}: message {i} needs a role ({', '.join(ROLES)}) and text content"
                )
        conversation = cls(system=data.get("system") or None, messages=data["messages"])
        for name, value in (data.get("settings") or {}).items():
            try:
                conversation.set(name, str(value))
            except ConversationError as exc:
                raise ConversationError(f"{path}: {exc}") from None
        return conversation


def _parse_plain(name: str, value: str) -> float | int | bool:
    """``value`` as an integer, a number or a boolean (no llm-infer to check ranges)."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ConversationError(f"{name} takes a number or true/false, not {value!r}")
