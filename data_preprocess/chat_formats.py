"""Records in the shapes users bring from TRL and LLaMA-Factory, turned into checked ChatML messages.

SFT records (``to_messages``; the format is detected from the record's keys, or forced with ``fmt``):
- ``messages`` (TRL conversational, OpenAI style):
  ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- ``sharegpt`` (LLaMA-Factory): ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...],
  "system": str (optional)}``; ``"user"``/``"assistant"`` are accepted as ``from`` values too.
- ``alpaca`` (LLaMA-Factory): ``{"instruction": str, "input": str (optional), "output": str, "system": str
  (optional), "history": [[user, assistant], ...] (optional)}``; the user turn is the instruction, then a
  newline and the input when the input is not empty.

Preference records (``to_preference``, TRL's standard and conversational forms):
``{"prompt": str | messages, "chosen": str | [assistant message], "rejected": str | [assistant message]}``.
A prompt string becomes one user turn; a response string becomes one assistant turn.

Rules (a record that breaks one raises ValueError/TypeError saying what is wrong; the reader adds the file
and line, see data_preprocess.readers.iter_records):
1. Every content is a string; every assistant content is non-empty (not only whitespace).
2. At most one system message, and only first.
3. After it, user and assistant alternate, starting with user.
4. An SFT conversation ends with an assistant turn (a trailing user turn would train on nothing); a
   preference prompt ends with a user turn, and each response is exactly one assistant message.
"""
from __future__ import annotations

from dataclasses import dataclass

SFT_FORMATS = ("auto", "messages", "sharegpt", "alpaca")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Preference:
    prompt: list[dict]  # messages ending with a user turn
    chosen: dict  # {"role": "assistant", "content": str}
    rejected: dict


def _keys(record: dict) -> str:
    return ", ".join(sorted(map(str, record))[:20])


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        state = "missing" if value is None else f"a {type(value).__name__}"
        raise TypeError(f"{what} is {state}, expected a string")
    return value


def check_conversation(messages: list[dict], ends_with: str = "assistant") -> list[dict]:
    """Apply rules 1-3 of the module docstring and the ending rule; return the messages unchanged."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"expected a non-empty list of messages, got {messages!r:.80}")
    expected = "user"
    for i, m in enumerate(messages):
        role = m.get("role")
        _string(m.get("content"), f"message {i}: content")
        if role == "system":
            if i != 0:
                raise ValueError(f"message {i}: a system message may only come first")
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"message {i}: unknown role {role!r}; expected system, user or assistant")
        if role != expected:
            prev = messages[i - 1]["role"] if i else "the start"
            raise ValueError(f"message {i}: role {role!r} after {prev!r}; user and assistant turns must alternate, "
                             f"starting with user")
        if role == "assistant" and not m["content"].strip():
            raise ValueError(f"message {i}: empty assistant turn")
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != ends_with:
        article = "an" if ends_with == "assistant" else "a"
        raise ValueError(f"the last message is {messages[-1]['role']!r}; it must be {article} {ends_with} turn")
    return messages


def _message_list(value, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise TypeError(f"{what} must be a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise TypeError(f"{what}[{i}] must be an object, got {type(m).__name__}")
    return value


def _from_messages(record: dict) -> list[dict]:
    msgs = _message_list(record.get("messages"), "field 'messages'")
    return [{"role": m.get("role"), "content": m.get("content")} for m in msgs]


def _from_sharegpt(record: dict) -> list[dict]:
    turns = _message_list(record.get("conversations"), "field 'conversations'")
    out = []
    if record.get("system") is not None:
        out.append({"role": "system", "content": _string(record["system"], "field 'system'")})
    for i, t in enumerate(turns):
        if t.get("from") not in _SHAREGPT_ROLES:
            raise ValueError(f"conversations[{i}]: 'from' is {t.get('from')!r}; expected human, gpt or system")
        out.append({"role": _SHAREGPT_ROLES[t["from"]], "content": t.get("value")})
    return out


def _from_alpaca(record: dict) -> list[dict]:
    out = []
    if record.get("system") is not None:
        out.append({"role": "system", "content": _string(record["system"], "field 'system'")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise TypeError(f"field 'history' must be a list of [user, assistant] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"history[{i}] must be a [user, assistant] pair, got {pair!r:.80}")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    instruction = _string(record.get("instruction"), "field 'instruction'")
    extra = record.get("input")
    if extra is not None and _string(extra, "field 'input'"):
        instruction = f"{instruction}\n{extra}"
    return out + [{"role": "user", "content": instruction}, {"role": "assistant", "content": record.get("output")}]


_CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}


def detect_format(record: dict) -> str:
    """messages | sharegpt | alpaca | preference, from the record's keys."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "chosen" in record or "rejected" in record:
        return "preference"
    raise ValueError(f"unknown record format (keys: {_keys(record)}); expected 'messages', 'conversations' "
                     f"(ShareGPT), 'instruction'/'output' (Alpaca) or 'prompt'/'chosen'/'rejected'")


def to_messages(record: dict, fmt: str = "auto") -> list[dict]:
    """An SFT record (any SFT format) as checked ChatML messages (see the module docstring)."""
    if fmt not in SFT_FORMATS:
        raise ValueError(f"--format={fmt!r} is not one of {', '.join(SFT_FORMATS)}")
    kind = detect_format(record) if fmt == "auto" else fmt
    if kind == "preference":
        raise ValueError(f"a preference pair (keys: {_keys(record)}) is not an SFT record; use --task=dpo")
    return check_conversation(_CONVERTERS[kind](record))


def _response(value, what: str) -> dict:
    if isinstance(value, str):
        value = [{"role": "assistant", "content": value}]
    msgs = _message_list(value, f"field '{what}'")
    if len(msgs) != 1 or msgs[0].get("role") != "assistant":
        raise ValueError(f"field '{what}' must be a string or a list of one assistant message, got "
                         f"{len(msgs)} message(s) with roles {[m.get('role') for m in msgs]}")
    content = _string(msgs[0].get("content"), f"field '{what}': content")
    if not content.strip():
        raise ValueError(f"field '{what}': empty assistant turn")
    return {"role": "assistant", "content": content}


def to_preference(record: dict) -> Preference:
    """A preference record as (prompt messages, chosen, rejected), checked (see the module docstring)."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            raise ValueError(f"field {key!r} is missing (keys: {_keys(record)}); a preference pair needs prompt, "
                             f"chosen and rejected")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("field 'prompt' is an empty string")
        prompt = [{"role": "user", "content": prompt}]
    else:
        prompt = [{"role": m.get("role"), "content": m.get("content")} for m in _message_list(prompt, "field 'prompt'")]
    check_conversation(prompt, ends_with="user")
    return Preference(prompt, _response(record["chosen"], "chosen"), _response(record["rejected"], "rejected"))
