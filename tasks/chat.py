"""A small interactive chat in the terminal: `python -m tasks.chat RUN_OR_HF_DIR [--tokenizer_dir=DIR]
[--system=TEXT] [--max_new_tokens=256] [--temperature=0.7] [--top_k=50] [--top_p=0.95] [--seed=1337]
[--device=auto]`.

RUN_OR_HF_DIR is a run directory (its newest complete checkpoint, with the run's tokenizer/), a checkpoint
step directory, a ``save_pretrained`` directory, or a Hugging Face model directory (an export of
model.hf.export_hf, or a Llama / Qwen2 / Mistral checkpoint with its tokenizer files beside it).

Each turn renders the history plus the new user message with the tokenizer's chat format (`tok.chat`: z2all's
ChatML, or a Hugging Face tokenizer's own template: the ids the model was trained on), streams the reply token by
token and stops at the format's end-of-turn token (or after --max_new_tokens); the reply joins the history. When
the history no longer fits the model's max_seq_len, its oldest turns are dropped (the system prompt stays).

Keys: on a terminal the line is edited with the standard library's readline (arrow keys, Home/End, and up/down
recall the lines typed before). /reset clears the history; /quit, Ctrl-D or Ctrl-C at the prompt exits (status
0, no traceback); Ctrl-C while a reply streams stops that reply and keeps what was shown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import torch

from model import Z2allForCausalLM
from model.generate import generate
from tokenizer import HFTokenizer, Z2allTokenizer, is_tokenizer_dir, load_tokenizer
from utils.cli import ArgumentParser, run_main

KEYS = "/reset clears the history; /quit, Ctrl-D or Ctrl-C exits; Ctrl-C during a reply stops it"


def load_model(path: str, device: str | torch.device) -> Z2allForCausalLM:
    """A Z2all run/checkpoint/saved dir or a Hugging Face model dir (converted in memory by model.weights)."""
    return Z2allForCausalLM.from_pretrained(path, device=device)


def find_tokenizer(path: str, tokenizer_dir: str = "") -> Z2allTokenizer | HFTokenizer:
    """--tokenizer_dir, else the first of DIR, DIR/tokenizer, and the tokenizer/ of the run above a step dir."""
    p = Path(path)
    candidates = [Path(tokenizer_dir)] if tokenizer_dir else [p, p / "tokenizer", p.resolve().parent.parent / "tokenizer"]
    for cand in candidates:
        if cand.is_dir() and is_tokenizer_dir(cand):
            return load_tokenizer(cand)
    raise ValueError(f"no tokenizer (z2all_tokenizer.json or tokenizer.json) in {', '.join(map(str, candidates))}: "
                     f"pass --tokenizer_dir=DIR (a run keeps its tokenizer in <run>/tokenizer/)")


class Streamer:
    """Prints a reply as its tokens arrive. The whole reply is decoded each time and only the new text is
    printed; text ending in U+FFFD (half of a multi-byte character) waits for the next token."""

    def __init__(self, tok: Z2allTokenizer | HFTokenizer, out: TextIO):
        self.tok, self.out = tok, out
        self.stop_id = tok.chat.turn_end_id
        self.ids: list[int] = []
        self.shown = 0
        self.done = False

    def __call__(self, nxt: torch.Tensor) -> None:
        token = int(nxt[0])
        if self.done or token == self.stop_id:
            self.done = True
            return
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)

    def text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)


class LineReader:
    """The user's lines. On a terminal, input() with the standard library's readline (line editing and the
    session's history); otherwise (a pipe, a test's StringIO) plain reads, where readline would only add escape
    codes."""

    def __init__(self, stdin: TextIO, stdout: TextIO):
        self.stdin, self.stdout = stdin, stdout
        self.terminal = stdin is sys.stdin and stdout is sys.stdout and stdin.isatty() and stdout.isatty()
        if self.terminal:
            try:
                import readline  # noqa: F401 - importing it gives input() line editing and history
            except ImportError:  # not built on every platform (Windows): input() still works, unedited
                pass

    def __call__(self, prompt: str) -> str | None:
        """The next line without its newline; None at the end of input (Ctrl-D)."""
        if self.terminal:
            try:
                return input(prompt)
            except EOFError:
                return None
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        return line.rstrip("\n") if line else None


def fit_prompt(tok: Z2allTokenizer | HFTokenizer, history: list[dict], max_len: int, min_new: int) -> list[int] | None:
    """Prompt ids of the history, dropping its oldest user/assistant turns until min_new tokens fit after it."""
    system = history[:1] if history and history[0]["role"] == "system" else []
    turns = history[len(system):]
    while turns:
        ids = tok.chat.generation_prompt(system + turns)
        if len(ids) + min_new <= max_len:
            return ids
        turns = turns[2:] if len(turns) > 1 else []
    return None


def chat_loop(model: Z2allForCausalLM, tok: Z2allTokenizer | HFTokenizer, args: argparse.Namespace, stdin: TextIO,
              stdout: TextIO) -> int:
    """Read user lines until /quit, end of input or Ctrl-C at the prompt; returns the number of replies."""
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    max_len, replies, read = model.config.max_seq_len, 0, LineReader(stdin, stdout)
    while True:
        try:
            text = read("you> ")
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave
            text = None
        if text is None or text.strip() == "/quit":
            stdout.write("\n")
            return replies
        if text.strip() == "/reset":
            history = list(base)
            stdout.write("(history cleared)\n")
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        prompt = fit_prompt(tok, history, max_len, min_new=1)
        if prompt is None:
            history.pop()
            stdout.write(f"(that message does not fit the model's {max_len} tokens; send a shorter one)\n")
            continue
        streamer = Streamer(tok, stdout)
        stdout.write("bot> ")
        try:
            generate(model, prompt, min(args.max_new_tokens, max_len - len(prompt)), temperature=args.temperature,
                     top_k=args.top_k or None, top_p=args.top_p, eos_id=streamer.stop_id, generator=generator,
                     on_token=streamer)
        except KeyboardInterrupt:  # Ctrl-C during a reply: stop it; what was shown joins the history
            stdout.write(" (stopped)")
        stdout.write("\n")
        history.append({"role": "assistant", "content": streamer.text()})
        replies += 1


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="run dir, checkpoint dir, save_pretrained dir or HF export dir")
    p.add_argument("--tokenizer_dir", default="", help="default: the tokenizer beside the model")
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50, help="0 = off")
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    if not Path(args.path).is_dir():
        raise ValueError(f"no such directory: {args.path}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = stdout or sys.stdout
    try:
        tok = find_tokenizer(args.path, args.tokenizer_dir)
        tok.chat  # noqa: B018 - refuse a tokenizer without a chat format before the model loads
        model = load_model(args.path, device)
    except KeyboardInterrupt:  # Ctrl-C while loading: leave quietly
        out.write("\n")
        return 130
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size}: "
                         f"pass the run's tokenizer with --tokenizer_dir")
    out.write(f"z2all chat: {args.path} on {device}, chat template: {tok.chat.description} ({KEYS})\n")
    try:
        chat_loop(model.eval(), tok, args, stdin or sys.stdin, out)
    except KeyboardInterrupt:  # Ctrl-C between the prompt and the reply's first token: leave as at the prompt
        out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
