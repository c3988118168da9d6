from mmtl.text import BOS, EOS, PAD, UNK, Vocabulary, bpe_encode


def test_compact_vocabulary_round_trips_known_text() -> None:
    vocab = Vocabulary.from_texts(["a red circle left of a blue square", "anna drew 2 objects :"])
    text = "a blue circle left of a red square"
    ids = vocab.encode(text, 32, bos=True, eos=True)
    assert ids[0] == BOS and ids[-1] == EOS and PAD not in ids
    assert vocab.decode(ids) == text
    assert vocab.size == len(set(bpe_encode("a red circle left of a blue square anna drew 2 objects :"))) + 4


def test_unknown_tokens_map_to_unk_and_truncation_keeps_eos() -> None:
    vocab = Vocabulary.from_texts(["red circle"])
    assert UNK in vocab.encode("purple giraffe", 10)
    ids = vocab.encode("red circle red circle red circle", 4, bos=True, eos=True)
    assert len(ids) == 4 and ids[-1] == EOS


def test_decode_stops_at_eos_and_full_vocab_serialises() -> None:
    full = Vocabulary(None)
    ids = full.encode("hello world", 16)
    assert full.decode(ids + [EOS] + ids) == "hello world"
    assert Vocabulary.from_dict(full.to_dict()).size == full.size
    compact = Vocabulary.from_texts(["a b c"])
    assert Vocabulary.from_dict(compact.to_dict()).bpe_ids == compact.bpe_ids
