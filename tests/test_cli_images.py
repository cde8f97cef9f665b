"""`diffgemma-cpp run / chat --image` and `--mmproj` on the fake engine."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest

from _fake_engine import BOI, EOI, IMAGE, FakeModel
from diffgemma_cpp import cli, cli_text

PILImage = pytest.importorskip("PIL.Image")
GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()


@pytest.fixture
def fake(monkeypatch):
    model = FakeModel("Two squares.", chat_template=GEMMA4_STYLE, canvas_length=8, has_vision=True)
    monkeypatch.setattr(cli_text, "_load_model", lambda args: model)
    return model


@pytest.fixture
def pictures(tmp_path):
    paths = []
    for i, (h, w) in enumerate(((20, 30), (50, 10))):
        a = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / f"p{i}.png"
        PILImage.fromarray(a).save(path)
        paths.append((str(path), a))
    return paths


def test_run_with_images(fake, pictures, capsys):
    args = ["run", "-m", "x.gguf", "-p", "Describe both.", "-n", "16"]
    for path, _ in pictures:
        args += ["--image", path]
    assert cli.main(args) == 0
    assert capsys.readouterr().out == "Two squares.\n"
    call = fake.calls[0]
    assert [im.to_numpy().tolist() for im in call["images"]] == [a.tolist() for _, a in pictures]
    assert call["prompt_ids"].count(BOI) == 2
    # the images come before the text, in the order given
    assert call["prompt_ids"].index(IMAGE) < len(call["prompt_ids"]) - len("Describe both.")


def test_run_image_errors_come_before_the_model_loads(monkeypatch, tmp_path, capsys):
    loaded = []
    monkeypatch.setattr(cli_text, "_load_model", lambda args: loaded.append(args))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert cli.main(["run", "-m", "x.gguf", "-p", "hi", "--image", str(bad)]) == 1
    assert "not an image format" in capsys.readouterr().err and loaded == []


def test_run_raw_takes_the_markers_from_the_prompt(fake, pictures, capsys):
    prompt = "<bos>Look: <|image|> then <|image|>. Answer:"
    args = ["run", "-m", "x.gguf", "-p", prompt, "--raw", "-n", "16", "--image", pictures[0][0], "--image",
            pictures[1][0]]
    assert cli.main(args) == 0
    ids = fake.calls[0]["prompt_ids"]
    assert ids.count(BOI) == 2 and len(fake.calls[0]["images"]) == 2
    assert fake.detokenize(ids[:ids.index(BOI)]).decode() == "<bos>Look: "
    assert cli.main(args[:-2]) == 1  # two markers, one image
    assert "wrote 2 image marker(s)" in capsys.readouterr().err


def test_run_image_on_a_text_model_is_a_clear_error(monkeypatch, pictures, capsys):
    monkeypatch.setattr(cli_text, "_load_model", lambda args: FakeModel("x", chat_template=GEMMA4_STYLE))
    assert cli.main(["run", "-m", "x.gguf", "-p", "hi", "--image", pictures[0][0]]) == 1
    assert "--mmproj" in capsys.readouterr().err


def test_chat_shows_the_images_with_the_first_message(fake, pictures, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is it?\nAnd now?\n"))
    assert cli.main(["chat", "-m", "x.gguf", "--image", pictures[0][0], "-n", "16"]) == 0
    first, second = fake.calls
    assert len(first["images"]) == 1
    # the history keeps the image in the first turn (only there): the second prompt repeats the first turn
    end = first["prompt_ids"].index(EOI) + 1
    assert len(second["images"]) == 1 and second["prompt_ids"].count(BOI) == 1
    assert second["prompt_ids"][:end] == first["prompt_ids"][:end]


def test_chat_image_command(fake, pictures, capsys, monkeypatch):
    lines = f"/image {pictures[1][0]}\n/image /no/such.png\nLook.\nAgain.\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert cli.main(["chat", "-m", "x.gguf", "-n", "16"]) == 0
    err = capsys.readouterr().err
    assert "no such image file" in err and "image 1 goes with the next message" in err
    first, second = fake.calls
    assert [im.height for im in first["images"]] == [50] and len(second["images"]) == 1


def test_mmproj_reaches_the_model(monkeypatch):
    seen = {}

    class Model:
        def __init__(self, path, **kwargs):
            seen.update(path=path, **kwargs)

    monkeypatch.setattr("diffgemma_cpp.Model", Model)
    for command in (["run", "-p", "x"], ["chat"], ["serve"]):
        parser = cli.build_parser()
        args = parser.parse_args([*command, "-m", "m.gguf", "--mmproj", "mmproj.gguf"])
        seen.clear()
        cli_text._load_model(args)
        assert seen == {"path": "m.gguf", "mmproj": "mmproj.gguf"}, command
    args = cli.build_parser().parse_args(["run", "-m", "m.gguf", "-p", "x"])
    seen.clear()
    cli_text._load_model(args)
    assert "mmproj" not in seen  # text only: the Model's default
