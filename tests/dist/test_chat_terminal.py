"""python -m tasks.chat on a pseudo-terminal: readline's line editing and history, Ctrl-C and Ctrl-D at the prompt
exit with status 0 and no traceback."""
import os
import pty
import select
import signal
import sys
import time

import pytest
import torch

from model import Z2allConfig, Z2allForCausalLM
from tests.conftest import ROOT
from tests.unit.dataset.sft_fixtures import tiny_tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tok, _ = tiny_tokenizer(d / "tokenizer")
    torch.manual_seed(0)
    Z2allForCausalLM(Z2allConfig(vocab_size=tok.model_vocab_size, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                 max_seq_len=128, multiple_of=32)).save_pretrained(d)
    return str(d)


def _wait_until_reading(pid: int, timeout: float = 30.0) -> None:
    """Wait until the chat's main thread sleeps in readline's select() for the next key.

    A key sent earlier is read all the same, but a Ctrl-C that comes before that call starts is only seen at the
    next key, by Python's readline as by any: a person never types that fast, a loaded machine makes the test do
    it. The kernel tells where the thread sleeps (wchan), else its system call; without either, a fixed pause.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read()
            with open(f"/proc/{pid}/syscall") as f:
                call = f.read().split()[0]
        except OSError:
            time.sleep(0.5)
            return
        if "poll" in wchan or "select" in wchan or call in ("7", "23", "270", "271"):  # x86-64 poll/select
            return
        time.sleep(0.05)


def _terminal_session(d: str, keys: list[bytes], timeout: float = 120) -> tuple[int, str]:
    """Run the chat on a pseudo-terminal: send each of `keys` once the prompt shows; (exit status, the screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, its stdin and stdout the terminal
        # a shell's background job (CI scripts, nohup ... &) starts with SIGINT ignored, which the chat would inherit
        # and Python then keeps: Ctrl-C would do nothing. A terminal user's chat starts with the default.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "tasks.chat", d, "--temperature=0", "--max_new_tokens=2"],
                  {**os.environ, "PYTHONPATH": ROOT, "TERM": "xterm"})
    screen, pending, deadline = b"", list(keys), time.time() + timeout
    while time.time() < deadline:
        if pending and screen.count(b"you> ") > len(keys) - len(pending):
            _wait_until_reading(pid)  # as a person types: once the prompt shows and readline waits for a key
            os.write(fd, pending.pop(0))
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal: it has exited
                break
            if not chunk:
                break
            screen += chunk
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.parametrize("keys,ends", [
    ([b"/qut\x1b[Di\r"], "arrow-key editing makes /quit"),  # left arrow, then the missing letter
    ([b"hi\r", b"\x1b[A\x1b[B\x1b[A\r", b"\x03"], "history recalls hi; Ctrl-C at the prompt exits"),
    ([b"\x04"], "Ctrl-D exits"),
])
def test_on_a_terminal(run_dir, keys, ends):
    code, screen = _terminal_session(run_dir, keys)
    assert code == 0 and "Traceback" not in screen and "^[[" not in screen, (ends, screen)
    if b"\x1b[A" in b"".join(keys):
        assert screen.count("bot> ") == 2 and screen.count("you> hi") == 2, screen  # up recalled the line
