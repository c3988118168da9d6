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


# DialogSum writes its speakers "#Person1#", which the tokenizer splits into "#" "person" "1" "#"
JOINED_TEXTS = ["#Person1# and #Person2# met in 2017.", "it's a state-of-the-art model, however."]


def test_decoded_words_are_the_words_of_the_training_texts() -> None:
    vocab = Vocabulary.from_texts(JOINED_TEXTS)
    for text in JOINED_TEXTS:
        assert vocab.decode(vocab.encode(text, 64)) == text.lower()
        for word in text.split():
            assert vocab.decode(vocab.encode(word, 64)) == word.lower()


def test_pieces_that_form_no_training_word_stay_apart() -> None:
    vocab = Vocabulary.from_texts(JOINED_TEXTS)
    assert vocab.decode(vocab.encode("person 2017 , and it 's", 64)) == "person 2 0 1 7 , and it's"


def test_joined_words_survive_serialisation_and_older_vocabularies_decode_as_before() -> None:
    vocab = Vocabulary.from_texts(JOINED_TEXTS)
    ids = vocab.encode("#person1# met", 16)
    assert Vocabulary.from_dict(vocab.to_dict()).decode(ids) == "#person1# met"
    older = {key: value for key, value in vocab.to_dict().items() if key != "joined_words"}
    assert Vocabulary.from_dict(older).decode(ids) == "# person 1 # met"


def test_shapes_world_texts_have_no_joined_words() -> None:
    """The quickstart's texts are written with spaces around every piece, so its decoded text is unchanged."""
    from data_pipelines.shapes_world import DIFFICULTIES, generate_sample

    texts = []
    for index in range(200):
        annotation, _ = generate_sample(index, 0, DIFFICULTIES["medium"])
        texts += [*annotation["captions"], annotation["document"], *annotation["summaries"]]
    assert Vocabulary.from_texts(texts).joined_words == frozenset()
