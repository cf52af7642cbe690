"""The conversation: system prompt, messages and sampling settings, saved and loaded as JSON."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SETTINGS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "max_tokens": int,
    "seed": int,
}
ROLES = ("user", "assistant", "system")


class ConversationError(ValueError):
    """A setting or a conversation file is invalid; the message is one line."""


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, float | int] = field(default_factory=dict)

    def as_messages(self) -> list[dict[str, str]]:
        """The messages to send: the system prompt first, when there is one."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def set(self, name: str, value: str) -> float | int:
        """Parse and store one sampling setting. Raises :class:`ConversationError`."""
        if name not in SETTINGS:
            raise ConversationError(f"unknown setting {name!r} (one of: {', '.join(SETTINGS)})")
        try:
            parsed = SETTINGS[name](value)
        except ValueError:
            raise ConversationError(
                f"{name} takes {SETTINGS[name].__name__}, not {value!r}"
            ) from None
        if name == "temperature" and not 0 <= parsed <= 2:
            raise ConversationError(f"temperature must be in [0, 2], got {parsed}")
        if name == "top_p" and not 0 < parsed <= 1:
            raise ConversationError(f"top_p must be in (0, 1], got {parsed}")
        if name in ("top_k", "max_tokens") and parsed < (0 if name == "top_k" else 1):
            raise ConversationError(
                f"{name} must be {'>= 0' if name == 'top_k' else 'positive'}, got {parsed}"
            )
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
