"""`diffgemma-cpp run / chat / serve` on the fake engine, including the --visual redraw and Ctrl-C."""

from __future__ import annotations

import io
import os
import pathlib
import re
import signal
import threading
import unicodedata

import pytest

from _fake_engine import FakeModel
from diffgemma_cpp import cli, cli_text
from diffgemma_cpp.visual import CanvasView, advance

GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()


@pytest.fixture
def fake(monkeypatch):
    model = FakeModel("Blue light scatters more.", chat_template=GEMMA4_STYLE, canvas_length=8, steps=3)
    monkeypatch.setattr(cli_text, "_load_model", lambda args: model)
    return model


def prompt_text(model, call=0):
    return model.detokenize(model.calls[call]["prompt_ids"]).decode()


def test_run_streams_answer_and_prints_stats(fake, capsys):
    assert cli.main(["run", "-m", "x.gguf", "-p", "Why is the sky blue?", "-n", "64", "--seed", "3",
                     "--steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "Blue light scatters more.\n"
    assert "[stop]" in err and "tok/s" in err
    assert prompt_text(fake).endswith("<|turn>user\nWhy is the sky blue?<turn|>\n<|turn>model\n"
                                      "<|channel>thought\n<channel|>")
    assert (fake.calls[0]["seed"], fake.calls[0]["steps"], fake.calls[0]["max_new_tokens"]) == (3, 2, 64)


def test_run_raw_sends_the_prompt_as_is(fake, capsys):
    assert cli.main(["run", "-m", "x.gguf", "-p", "The sky is", "--raw"]) == 0
    assert prompt_text(fake) == "<bos>The sky is"


def test_run_reads_prompt_from_stdin(fake, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("piped prompt"))
    assert cli.main(["run", "-m", "x.gguf", "--raw"]) == 0
    assert prompt_text(fake) == "<bos>piped prompt"


def test_run_with_bad_template_file_fails_clearly(fake, capsys, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    assert cli.main(["run", "-m", "x.gguf", "-p", "hi", "--chat-template", str(bad)]) == 1
    assert "chat template does not parse" in capsys.readouterr().err
    assert cli.main(["run", "-m", "x.gguf", "-p", "hi", "--chat-template", str(tmp_path / "missing")]) == 1


def test_run_ctrl_c_cancels_within_a_step(monkeypatch, capsys):
    model = FakeModel("z" * 400, eos=False, canvas_length=8, steps=10, step_delay=0.01)
    monkeypatch.setattr(cli_text, "_load_model", lambda args: model)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        assert cli.main(["run", "-m", "x.gguf", "-p", "p", "--raw", "-n", "400"]) == 130
    finally:
        timer.cancel()
    out, err = capsys.readouterr()
    assert "cancelling" in err and "[cancelled]" in err
    assert 0 < len(out.strip()) < 400 and set(out.strip()) == {"z"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_chat_keeps_history_and_exits(fake, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Why is the sky blue?\n\nAnd at night?\n/exit\n"))
    assert cli.main(["chat", "-m", "x.gguf", "--system", "Be brief."]) == 0
    out = capsys.readouterr().out
    assert out.count("Blue light scatters more.") == 2 and len(fake.calls) == 2
    second = prompt_text(fake, 1)
    assert second.startswith("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nWhy is the sky blue?<turn|>\n"
                             "<|turn>model\nBlue light scatters more.<turn|>\n<|turn>user\nAnd at night?<turn|>")


def test_chat_reset_and_eof(fake, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("first\n/reset\nsecond\n"))
    assert cli.main(["chat", "-m", "x.gguf"]) == 0
    assert "first" not in prompt_text(fake, 1) and "second" in prompt_text(fake, 1)


def test_visual_writes_no_escape_codes_into_redirected_output(fake, capsys, monkeypatch):
    """--visual draws the live canvas on a terminal only; a pipe or a file gets the plain answer."""
    assert cli.main(["run", "-m", "x.gguf", "-p", "Why?", "--visual"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out == "Blue light scatters more.\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("Why?\n/exit\n"))
    assert cli.main(["chat", "-m", "x.gguf", "--visual"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "Blue light scatters more." in out


def test_visual_draws_on_a_terminal(fake, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert cli.main(["run", "-m", "x.gguf", "-p", "Why?", "--visual"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out and "step 3/3" in out


def test_serve_passes_options(fake, monkeypatch):
    seen = {}
    monkeypatch.setattr("diffgemma_cpp.server.serve", lambda model, host, port, **kw: seen.update(
        model=model, host=host, port=port, **kw))
    assert cli.main(["serve", "-m", "x.gguf", "--port", "0", "--alias", "dg", "--max-queue", "3"]) == 0
    assert seen["model"] is fake and seen["port"] == 0 and seen["model_name"] == "dg" and seen["max_queue"] == 3


def test_help_lists_the_text_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("run", "chat", "serve"))


# ---- the --visual redraw, checked on a tiny terminal emulator -------------------------------


def wcwidth(ch):
    """Cell width as terminals' wcwidth() gives it: 0 for combining marks, 2 for East Asian wide/full."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class Screen:
    """Enough of a VT100 to replay our output: wrapping with pending-wrap, CR, LF, CUU, CUF, ED, SGR."""

    def __init__(self, width):
        self.width, self.rows, self.row, self.col, self.pending = width, [[]], 0, 0, False

    def _line(self):
        while len(self.rows) <= self.row:
            self.rows.append([])
        line = self.rows[self.row]
        while len(line) < self.width:
            line.append(" ")
        return line

    def feed(self, data):
        for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|.", data, re.S):
            if token.startswith("\x1b["):
                n = int(token[2:-1] or 1) if token[2:-1].isdigit() else 1
                kind = token[-1]
                if kind == "A":
                    self.row, self.pending = max(0, self.row - n), False
                elif kind == "C":
                    self.col, self.pending = min(self.width - 1, self.col + n), False
                elif kind == "J":
                    self._line()[self.col:] = [" "] * (self.width - self.col)
                    del self.rows[self.row + 1:]
            elif token == "\r":
                self.col, self.pending = 0, False
            elif token == "\n":
                self.row, self.col, self.pending = self.row + 1, 0, False
            else:
                w = wcwidth(token)
                if w == 0:
                    continue  # a combining mark joins the previous cell
                if self.pending or self.col + w > self.width:
                    self.row, self.col, self.pending = self.row + 1, 0, False
                line = self._line()
                line[self.col] = token
                if w == 2:
                    line[self.col + 1] = ""
                self.col += w
                if self.col >= self.width:
                    self.col, self.pending = self.width - 1, True

    def text(self):
        return "\n".join("".join(line).rstrip() for line in self.rows).rstrip("\n")


@pytest.mark.parametrize("answer, width", [
    ("Blue light scatters more.", 12),
    ("line one\nline two is longer than the width\n\nend", 10),
    ("中文 and 🌍 wide cells wrap early", 9),
    ("exactly-12!!" * 3, 12),
])
def test_visual_redraw_leaves_only_committed_text(answer, width):
    model = FakeModel(answer, canvas_length=5, steps=4)
    out = io.StringIO()
    view = CanvasView(out=out, width=width)
    for chunk in model.create_completion("p", max_tokens=256, stream=True, on_step=view.step):
        view.commit(chunk["choices"][0]["text"])
    view.close()
    screen = Screen(width)
    screen.feed(out.getvalue())
    expected = Screen(width)
    expected.feed(answer + "\n")
    assert screen.text() == expected.text()
    assert out.getvalue().count("step 4/4") >= 2  # the live preview really was drawn


def test_visual_mid_stream_shows_preview_and_status():
    out = io.StringIO()
    view = CanvasView(out=out, width=40)
    view.commit("Committed. ")
    view.step(2, 4, "half-done canvas \x1b[31m")
    screen = Screen(40)
    screen.feed(out.getvalue())
    assert screen.text() == "Committed. half-done canvas ·[31m\n[canvas 2 · step 2/4]"


def test_advance_counts_wrapped_rows():
    assert advance(0, "abcd", 4) == (0, 4)
    assert advance(0, "abcde", 4) == (1, 1)
    assert advance(3, "中", 4) == (1, 2)
    assert advance(2, "x\ny", 10) == (1, 1)


def test_visual_redraw_random_texts_and_widths():
    import random

    rng = random.Random(99)
    for trial in range(60):
        answer = "".join(rng.choice("ab \n中🌍xyz") for _ in range(rng.randrange(0, 60)))
        width = rng.randrange(4, 14)
        model = FakeModel(answer, canvas_length=rng.randrange(1, 7), steps=rng.randrange(1, 4))
        out = io.StringIO()
        view = CanvasView(out=out, width=width)
        for chunk in model.create_completion("p", max_tokens=256, stream=True, on_step=view.step):
            view.commit(chunk["choices"][0]["text"])
        view.close()
        screen, expected = Screen(width), Screen(width)
        screen.feed(out.getvalue())
        expected.feed(answer + "\n")
        assert screen.text() == expected.text(), (trial, answer, width)
