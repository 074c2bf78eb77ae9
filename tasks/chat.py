"""A small interactive chat in the terminal: `python -m tasks.chat RUN_OR_HF_DIR [--tokenizer_dir=DIR]
[--system=TEXT] [--max_new_tokens=256] [--temperature=0.7] [--top_k=50] [--top_p=0.95] [--seed=1337]
[--device=auto]`.

RUN_OR_HF_DIR is a run directory (its newest complete checkpoint, with the run's tokenizer/), a checkpoint
step directory, a ``save_pretrained`` directory, or a Hugging Face export (model.hf.export_hf: a config.json
with a model_type, and the tokenizer files beside it).

Each turn renders the history plus the new user message with the ChatML template (render_generation_prompt,
the ids the model was trained on), streams the reply token by token and stops at <|im_end|> (or after
--max_new_tokens); the reply joins the history. When the history no longer fits the model's max_seq_len, its
oldest turns are dropped (the system prompt stays). Commands: /reset clears the history, /quit or Ctrl-D exits.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

import torch

from model import Z2allForCausalLM
from model.generate import generate
from tokenizer import Z2allTokenizer, render_generation_prompt
from utils.cli import ArgumentParser, run_main

_TOKENIZER_MARKER = "z2all_tokenizer.json"


def load_model(path: str, device: str | torch.device) -> Z2allForCausalLM:
    """A Z2all run/checkpoint/saved dir through from_pretrained, or an HF export through model.hf.import_hf."""
    config_path = Path(path) / "config.json"
    if config_path.is_file() and "model_type" in json.loads(config_path.read_text(encoding="utf-8")):
        from model.hf.import_hf import from_hf_state, load_hf_state, z2all_config_from_hf

        cfg = z2all_config_from_hf(json.loads(config_path.read_text(encoding="utf-8")))
        model = Z2allForCausalLM(cfg)
        model.load_state_dict(from_hf_state(cfg, load_hf_state(Path(path))), strict=True)
        return model.to(device)
    return Z2allForCausalLM.from_pretrained(path, device=device)


def find_tokenizer(path: str, tokenizer_dir: str = "") -> Z2allTokenizer:
    """--tokenizer_dir, else the first of DIR, DIR/tokenizer, and the tokenizer/ of the run above a step dir."""
    p = Path(path)
    candidates = [Path(tokenizer_dir)] if tokenizer_dir else [p, p / "tokenizer", p.parent.parent / "tokenizer"]
    for cand in candidates:
        if (cand / _TOKENIZER_MARKER).is_file():
            return Z2allTokenizer.from_pretrained(str(cand))
    raise ValueError(f"no z2all tokenizer ({_TOKENIZER_MARKER}) in {', '.join(map(str, candidates))}: pass "
                     f"--tokenizer_dir=DIR (a run keeps its tokenizer in <run>/tokenizer/)")


class Streamer:
    """Prints a reply as its tokens arrive. The whole reply is decoded each time and only the new text is
    printed; text ending in U+FFFD (half of a multi-byte character) waits for the next token."""

    def __init__(self, tok: Z2allTokenizer, out: TextIO):
        self.tok, self.out = tok, out
        self.ids: list[int] = []
        self.shown = 0
        self.done = False

    def __call__(self, nxt: torch.Tensor) -> None:
        token = int(nxt[0])
        if self.done or token == self.tok.im_end_id:
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


def fit_prompt(tok: Z2allTokenizer, history: list[dict], max_len: int, min_new: int) -> list[int] | None:
    """Prompt ids of the history, dropping its oldest user/assistant turns until min_new tokens fit after it."""
    system = history[:1] if history and history[0]["role"] == "system" else []
    turns = history[len(system):]
    while turns:
        ids = render_generation_prompt(tok, system + turns)
        if len(ids) + min_new <= max_len:
            return ids
        turns = turns[2:] if len(turns) > 1 else []
    return None


def chat_loop(model: Z2allForCausalLM, tok: Z2allTokenizer, args: argparse.Namespace, stdin: TextIO,
              stdout: TextIO) -> int:
    """Read user lines until /quit or end of input; returns the number of replies."""
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    max_len, replies = model.config.max_seq_len, 0
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/quit":  # "" is end of input (Ctrl-D)
            stdout.write("\n")
            return replies
        text = line.rstrip("\n")
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
        generate(model, prompt, min(args.max_new_tokens, max_len - len(prompt)), temperature=args.temperature,
                 top_k=args.top_k or None, top_p=args.top_p, eos_id=tok.im_end_id, generator=generator,
                 on_token=streamer)
        stdout.write("\n")
        history.append({"role": "assistant", "content": streamer.text()})
        replies += 1


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
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
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tok = find_tokenizer(args.path, args.tokenizer_dir)
    model = load_model(args.path, device)
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size}: "
                         f"pass the run's tokenizer with --tokenizer_dir")
    out = stdout or sys.stdout
    out.write(f"z2all chat: {args.path} on {device} (/reset clears the history, /quit or Ctrl-D exits)\n")
    chat_loop(model.eval(), tok, args, stdin or sys.stdin, out)


if __name__ == "__main__":
    sys.exit(run_main(main))
