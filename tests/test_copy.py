"""The copy mechanism: fused tokens know their text ids, and a copying decoder can reproduce them."""
from __future__ import annotations

import pytest
import torch

from mmtl.config import GenerationConfig
from mmtl.models.fusion import Fused
from mmtl.models.heads import DecoderOptions, TextDecoder
from mmtl.registry import FUSIONS
from mmtl.text import EOS, PAD
from tests.test_fusion_sharing import VOCAB, _batch, _parts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("fusion", FUSIONS.keys())
@pytest.mark.parametrize("sharing", ["hard", "soft", "hybrid"])
def test_fused_ids_point_at_the_text_tokens(fusion: str, sharing: str) -> None:
    """Every fusion's tokens carry the id of the text token they came from, at the right positions."""
    parts = _parts(f"model.fusion.name={fusion}", f"model.sharing={sharing}")
    model = parts.model.eval()
    batch = _batch(parts)
    fused = model.fuse(batch, ("image", "text"), {}, "summarization")
    text_ids = batch.text
    assert fused.ids is not None and fused.ids.shape == fused.valid.shape
    for row in range(len(batch)):
        # the non-PAD ids are exactly the document's tokens, in order (twice where the heads also read the
        # fusion's inputs, model.fusion.keep_inputs), and all of them sit on valid tokens
        copied = fused.ids[row][fused.ids[row] != PAD]
        copies = 1 if model.input_norm is None else 2
        assert copied.tolist() == text_ids[row][text_ids[row] != PAD].tolist() * copies
        assert bool(fused.valid[row][fused.ids[row] != PAD].all())
    image_only = model.fuse(batch, ("image",), {}, "captioning")
    assert image_only.ids is None


def _copy_decoder(vocab: int = 30, width: int = 16) -> TextDecoder:
    torch.manual_seed(0)
    return TextDecoder(vocab, width, depth=1, num_heads=2, max_length=8, options=DecoderOptions(copy=True)).eval()


def test_copying_output_is_a_distribution_and_falls_back_without_text() -> None:
    decoder = _copy_decoder()
    memory, valid = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    memory_ids = torch.tensor([[PAD, 7, 9, 9, PAD], [PAD, PAD, PAD, PAD, PAD]])
    ids = torch.tensor([[1, 4, 5], [1, 6, 2]])
    logp = decoder(ids, memory, valid, memory_ids=memory_ids)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 3), atol=1e-5)
    # a row with nothing to copy is the plain generator's softmax
    plain = decoder(ids, memory, valid)
    assert torch.allclose(logp[1], plain[1].log_softmax(-1), atol=1e-5)
    # with the gate forced to copy, all probability lies on the copyable ids of row 0
    with torch.no_grad():
        decoder.copy.gate.bias.fill_(-50.0)
    logp = decoder(ids, memory, valid, memory_ids=memory_ids)
    assert torch.allclose(logp[0].exp()[:, [7, 9]].sum(-1), torch.ones(3), atol=1e-4)


def test_cached_and_uncached_copying_decoding_agree() -> None:
    decoder = _copy_decoder()
    memory, valid = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    memory_ids = torch.tensor([[PAD, 7, 9, 11, 12]] * 3)
    for config in [GenerationConfig(max_length=6), GenerationConfig(max_length=6, num_beams=3)]:
        cached = decoder.generate(memory, valid, config=config, memory_ids=memory_ids)
        uncached = decoder.generate(memory, valid, config=config, memory_ids=memory_ids, use_cache=False)
        assert torch.equal(cached, uncached)


def test_copying_decoder_learns_to_copy_tokens_it_never_generated() -> None:
    """Target: the memory's copyable token, which differs in every sample. The copy path learns it in
    a few dozen steps; the same decoder without copying has to learn every id's embedding first."""
    torch.manual_seed(0)
    vocab, width = 200, 16

    def batch(n: int = 32) -> tuple[torch.Tensor, ...]:
        name = torch.randint(10, vocab, (n,))
        memory_ids = torch.full((n, 4), PAD)
        memory_ids[:, 2] = name
        memory = torch.randn(n, 4, width)
        targets = torch.stack([torch.full_like(name, 1), name, torch.full_like(name, EOS)], 1)
        return memory, memory_ids, targets

    def train(copy: bool) -> float:
        torch.manual_seed(1)
        decoder = TextDecoder(vocab, width, depth=1, num_heads=2, max_length=4, options=DecoderOptions(copy=copy))
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
        for _ in range(60):
            memory, memory_ids, targets = batch()
            out = decoder(targets[:, :-1], memory, torch.ones(32, 4, dtype=torch.bool), memory_ids=memory_ids)
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, vocab), targets[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        memory, memory_ids, targets = batch(64)
        predicted = decoder.generate(memory.float(), torch.ones(64, 4, dtype=torch.bool),
                                     config=GenerationConfig(max_length=2), memory_ids=memory_ids)
        return float((predicted[:, 0] == targets[:, 1]).float().mean())

    assert train(copy=True) > 0.9
    assert train(copy=False) < 0.2


def test_only_decoders_whose_input_holds_text_copy() -> None:
    """Captioning reads the image alone: a copy module there would hold parameters that never get a
    gradient (and under FSDP an optimiser state that starts late)."""
    heads = _parts().model.heads
    assert heads["summarization"].copy is not None and heads["captioning"].copy is None
    shared = _parts("model.decoder.shared=true").model.shared_heads["text_decoder"]
    assert shared.copy is not None
