"""Builds the sudoku model's tokenizer: one token per character, Gemma special ids, no merges.

It is a `tokenizers` BPE model with an empty merge list, so every character is its own token, the
same file format as a Gemma-4 tokenizer.json; our converter and C tokenizer read it like any other.
"""

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from sudoku_lib import sudoku


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(sudoku.VOCAB)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
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
    print(ids, repr(t.decode(ids)))
