"""Builds the sudoku model's tokenizer: one token per character, Gemma special ids, one unused merge.

It is a `tokenizers` byte-fallback BPE model, the same file format as a Gemma-4 tokenizer.json, so our
converter and C tokenizer read it like any other. Its only merge ("=" "=" -> "==") never fires on a
prompt, so every prompt character is its own token.
"""

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from sudoku_lib import sudoku


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(sudoku.VOCAB)}
    # byte_fallback as in Gemma's tokenizer (our converter checks for it); with no <0xNN> tokens in this
    # vocabulary, characters outside it still come out as <unk>.
    merges = [(sudoku.SEPARATOR, sudoku.SEPARATOR)]  # the one (unused) merge, see sudoku.UNUSED_MERGE
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    core.decoder = decoders.Fuse()  # concatenate tokens back without spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    # The ids must be exactly the Gemma ones; adding specials must not have appended new tokens.
    assert [tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id, tok.mask_token_id] == [0, 1, 2, 3, 4]
    assert len(tok) == len(sudoku.VOCAB)
    return tok


if __name__ == "__main__":
    t = build_tokenizer()
    ids = t("<bos>53..7....=", add_special_tokens=False)["input_ids"]
    print(ids, repr(t.decode(ids)), t("x1", add_special_tokens=False)["input_ids"])
