"""Shapes world: a deterministic synthetic multimodal multi-task data set.

Every sample is a small picture of flat coloured shapes plus annotations for three tasks:

* recognition: multi-label ``"<colour> <shape>"`` tags of the objects in the picture;
* captioning: one canonical caption and two paraphrases, all derived from the picture only;
* summarization: a short document about the picture; its summary names the artist, a fact
  that is written only in the document and can never be seen in the image.

A sample depends only on ``(seed, index)`` and the difficulty, so any slice of the data set
can be regenerated on its own. All text is lower case, and punctuation is written as
separate space-delimited tokens (``"there is a red circle near the top left ."``), which is
also how open_clip's BPE tokenizer decodes it, so references round-trip exactly.

Canonical templates (deterministic given the scene):

* caption: ``"<A> <relation> <B>[ and <C>][ and <D>]"`` where every object phrase is
  ``"a <size> <colour> <shape>"``; A and B are the two largest objects (ties: leftmost, then
  topmost first), the relation ("left of", "right of", "above", "below") is A relative to B
  along the axis of larger displacement, and the remaining objects follow left to right.
  A single object is just ``"a <size> <colour> <shape>"``.
* summary: ``"<artist> drew <n> object(s) : <list>"`` where the list names ``"a <colour>
  <shape>"`` phrases in :func:`class_names` order (alphabetical), joined as
  ``"x"``, ``"x and y"`` or ``"x , y and z"``.

Modules: :mod:`.world` (vocabulary, difficulty presets, scene types), :mod:`.placement` (where
objects go), :mod:`.render` (the picture), :mod:`.language` (captions, document, summaries),
:mod:`.extra_modalities` (depth map and sound), :mod:`.samples` (one sample from ``(seed, index)``)
and :mod:`.writer` (webdataset shards).
"""
from data_pipelines.shapes_world.extra_modalities import (
    AUDIO_SAMPLE_RATE, DEPTH_BY_COLOUR, encode_wav, extra_rng, render_audio, render_depth, tone_frequency,
)
from data_pipelines.shapes_world.language import annotate
from data_pipelines.shapes_world.placement import make_scene
from data_pipelines.shapes_world.render import render
from data_pipelines.shapes_world.samples import generate_sample, generate_scene_sample
from data_pipelines.shapes_world.world import (
    COLOUR_RGB, DIFFICULTIES, NAMES, SIZE_HALF_EXTENT, Difficulty, Scene, ShapeObject, class_names, resolve_difficulty,
)
from data_pipelines.shapes_world.writer import write_shards

__all__ = [
    "AUDIO_SAMPLE_RATE", "COLOUR_RGB", "DEPTH_BY_COLOUR", "DIFFICULTIES", "NAMES", "SIZE_HALF_EXTENT", "Difficulty",
    "Scene", "ShapeObject", "annotate", "class_names", "encode_wav", "extra_rng", "generate_sample",
    "generate_scene_sample", "make_scene", "render", "render_audio", "render_depth", "resolve_difficulty",
    "tone_frequency", "write_shards",
]
