"""Modalities as registered units: log-mel correctness, synthetic depth and sound, decoding, loader, routing."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from data_pipelines.convert.write import ConvertOptions, convert_source
from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.shapes_world import (
    AUDIO_SAMPLE_RATE, DEPTH_BY_COLOUR, encode_wav, extra_rng, generate_scene_sample, render_audio, render_depth,
    resolve_difficulty, tone_frequency, write_shards,
)
from mmtl.builder import build_components
from mmtl.config import ModalityConfig, resolve_config
from mmtl.errors import ConfigError
from mmtl.modalities import model_modalities
from mmtl.modalities.audio import AudioModality
from mmtl.modalities.depth import DepthModality
from mmtl.modalities.mel import LogMelSpectrogram, mel_centers, mel_filterbank
from mmtl.text import Vocabulary
from tests.conftest import micro_overrides


def _members(path: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(path.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return out


@pytest.fixture(scope="module")
def multimodal_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mm")
    write_shards(path, {"train": 24, "val": 8}, seed=1, difficulty="easy", image_size=32, shard_size=40,
                 modalities=("image", "depth", "audio"), count=True)
    return path


def test_mel_peak_of_a_pure_tone_is_at_its_mel_band() -> None:
    rate, n_mels = 8000, 48
    mel = LogMelSpectrogram(rate, n_fft=512, hop_length=128, n_mels=n_mels)
    centers = mel_centers(n_mels, rate)
    for freq in (300.0, 1000.0, 2500.0):
        t = torch.arange(rate) / rate
        spec = mel(torch.sin(2 * torch.pi * freq * t)[None])[0]
        peak = int(spec.mean(1).argmax())
        assert abs(peak - int((centers - freq).abs().argmin())) <= 1, freq
    bank = mel_filterbank(n_mels, 512, rate)
    assert bank.shape == (n_mels, 257) and bank.min() >= 0 and (bank.max(1).values > 0.5).all()


def test_synthetic_depth_and_sound_follow_the_scene_and_are_deterministic() -> None:
    level = resolve_difficulty("hard")
    _, _, scene = generate_scene_sample(7, 0, level, 64)
    depth = np.asarray(render_depth(scene, 64, extra_rng(0, 7, "depth")))
    assert np.array_equal(depth, np.asarray(render_depth(scene, 64, extra_rng(0, 7, "depth"))))
    for obj in scene.objects:  # the object's centre sits at its colour's depth
        value = int(depth[int(obj.y * 64), int(obj.x * 64)])
        assert abs(value - DEPTH_BY_COLOUR[obj.colour]) <= 6, obj
    wave = render_audio(scene, extra_rng(0, 7, "audio"))
    assert np.array_equal(wave, render_audio(scene, extra_rng(0, 7, "audio")))
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / AUDIO_SAMPLE_RATE)
    peaks = set(np.round(freqs[np.argsort(spectrum)[-40:]]))
    for obj in scene.objects:  # every object's tone is among the loudest frequencies
        assert any(abs(p - tone_frequency(obj.colour, obj.shape)) < 3 for p in peaks), obj


def test_extra_modalities_leave_image_and_annotations_unchanged(tmp_path: Path, multimodal_data: Path) -> None:
    plain = tmp_path / "plain"
    write_shards(plain, {"train": 24, "val": 8}, seed=1, difficulty="easy", image_size=32, shard_size=40)
    rich, base = _members(multimodal_data), _members(plain)
    for name, data in base.items():
        if name.endswith(".json"):
            annotation = json.loads(rich[name])
            assert annotation.pop("count") == len(annotation["labels"])
            assert annotation == json.loads(data)
        else:
            assert rich[name] == data
    assert sum(n.endswith(".depth.png") for n in rich) == 32 and sum(n.endswith(".wav") for n in rich) == 32
    assert '"modalities"' not in (plain / "dataset.json").read_text()  # quickstart-style data: as before
    assert '"modalities"' in (multimodal_data / "dataset.json").read_text()
    again = tmp_path / "again"
    write_shards(again, {"train": 24, "val": 8}, seed=1, difficulty="easy", image_size=32, shard_size=40,
                 modalities=("image", "depth", "audio"), count=True)
    assert _members(again) == rich


def test_depth_and_audio_decoding(tmp_path: Path) -> None:
    model = resolve_config({}, ["model.preset=micro"]).model
    depth = DepthModality(model)
    wide = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16))  # 16-bit map
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    tensor = depth.decode_bytes(buffer.getvalue())
    assert tensor.shape == (1, 32, 32) and tensor.dtype == torch.uint8 and int(tensor.max()) >= 250
    audio = AudioModality(model, ModalityConfig(options={"sample_rate": 8000, "seconds": 0.5}))
    t = np.arange(16000) / 16000
    flac = io.BytesIO()
    soundfile.write(flac, np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1).astype(np.float32), 16000, format="FLAC")
    wave = audio.decode_bytes(flac.getvalue())  # stereo 16 kHz flac -> mono 8 kHz, cut to 0.5 s
    assert wave.shape == (4000,) and abs(float(wave.abs().max()) - 1.0) < 0.05
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    from mmtl.errors import MMTLError

    with pytest.raises(MMTLError, match="not a readable audio"):
        audio.load(tmp_path / "bad.wav")


def test_loader_batches_carry_extra_modalities_only_when_configured(multimodal_data: Path) -> None:
    config = resolve_config({}, micro_overrides(multimodal_data, multimodal_data / "run") + [
        "model.modalities={depth: {}, audio: {seconds: 0.5}}", "tasks=[recognition,counting]"])
    parts = build_components(config, ["blue circle", "red square"], Vocabulary([320]))
    loader = make_loader(str(multimodal_data), "val", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=8, train=False))
    batch = next(iter(loader))
    assert batch.inputs["depth"].data.shape == (8, 1, 32, 32) and batch.inputs["depth"].rows == 8
    assert batch.inputs["audio"].data.shape == (8, 4000) and bool(batch.inputs["audio"].present.all())
    assert batch.targets["counting"]["count"].tolist() == [len(a["labels"]) for a in batch.annotations]
    # the model reads depth and audio where tasks read the image (both stand for it), and runs finitely
    assert parts.model.task_inputs(parts.tasks[0], batch) == ("depth", "audio")
    losses = parts.model(batch)
    assert set(losses) == {"recognition", "counting"} and all(torch.isfinite(v) for v in losses.values())
    plain = build_components(resolve_config({}, ["model.preset=micro"]), ["blue circle"], Vocabulary([320]))
    loader = make_loader(str(multimodal_data), "val", plain.tasks, plain.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=8, train=False))
    assert next(iter(loader)).inputs == {}


def test_modality_units_and_config_errors() -> None:
    model = resolve_config({}, ["model.preset=micro", "model.modalities={depth: {}}"]).model
    units = model_modalities(model)
    assert list(units) == ["image", "text", "depth"] and units["depth"].stands_for == "image"
    with pytest.raises(ConfigError, match="unknown modality 'smell'"):
        resolve_config({}, ["model.modalities={smell: {}}"])
    with pytest.raises(ConfigError, match="unknown modality encoder"):
        resolve_config({}, ["model.modalities={audio: {encoder: nope}}"])
    with pytest.raises(ConfigError, match="stands_for"):
        resolve_config({}, ["model.modalities={depth: {stands_for: sonar}}"])


def test_convert_accepts_depth_and_audio_files(tmp_path: Path) -> None:
    Image.new("L", (40, 40), 200).save(tmp_path / "a.depth.png")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "b.jpg")
    (tmp_path / "a.wav").write_bytes(encode_wav(np.zeros(800, np.float32), 8000))
    soundfile.write(tmp_path / "b.flac", np.zeros(800, np.float32), 8000, format="FLAC")
    rows = [{"key": "a", "labels": ["x"], "depth": "a.depth.png", "audio": "a.wav", "count": 2},
            {"key": "b", "labels": ["x"], "depth": "b.jpg", "audio": "b.flac"},
            {"key": "c", "labels": ["x"], "audio": "b.jpg"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = convert_source("jsonl", ConvertOptions(out=tmp_path / "out", progress=False), input=str(tmp_path / "rows.jsonl"))
    members = _members(tmp_path / "out")
    assert {"a.depth.png", "a.wav", "b.depth.png", "b.flac"} <= set(members)
    assert json.loads(members["a.json"])["count"] == 2
    assert result.skipped == {"undecodable_audio": 1}
    assert Image.open(io.BytesIO(members["b.depth.png"])).format == "PNG"
