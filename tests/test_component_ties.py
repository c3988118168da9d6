"""The component layer's ties: no package imports another that imports it back, and the model
reads the batch type and the modality units without importing the loader or the modalities."""
from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("mmtl", "data_pipelines", cache_dir=None)


def package_of(module: str) -> str:
    """``mmtl.models.model`` -> ``mmtl.models``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def test_no_two_packages_import_each_other(graph: grimp.ImportGraph) -> None:
    edges = {(package_of(m), package_of(i)) for m in graph.modules for i in graph.find_modules_directly_imported_by(m)}
    cycles = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)
    assert cycles == []


def test_the_model_imports_neither_the_loader_nor_the_modalities(graph: grimp.ImportGraph) -> None:
    models = [m for m in graph.modules if m.startswith("mmtl.models")]
    imported = {i for m in models for i in graph.find_modules_directly_imported_by(m)}
    assert not {i for i in imported if i == "data_pipelines.loader" or i.startswith("mmtl.modalities")}


def test_balancing_reads_the_shared_output_key_without_importing_the_model(graph: grimp.ImportGraph) -> None:
    assert "mmtl.models.model" not in graph.find_modules_directly_imported_by("mmtl.balancing.backward")


def test_inference_loads_fine_tuned_models_through_the_checkpoint_module(graph: grimp.ImportGraph) -> None:
    assert not graph.chain_exists("mmtl.inference", "mmtl.finetuning")
    assert not graph.chain_exists("mmtl.models.model", "mmtl.models.adaptation")  # the plain model knows no fine-tuning


def test_training_compiles_and_checkpoints_exactly_what_model_units_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmtl.builder import build_components
    from mmtl.config import resolve_config
    from mmtl.models.layers import Block, find_units
    from mmtl.text import Vocabulary
    from mmtl.training.acceleration import enable_grad_checkpointing

    config = resolve_config({}, ["model.preset=micro", "tasks=[recognition]"])
    model = build_components(config, ["a", "b"], Vocabulary.from_texts(["a b"])).model
    everything = model.units()
    assert everything == find_units(model)
    chosen = [u for u in everything if isinstance(u, Block)][:1]
    monkeypatch.setattr(model, "units", lambda: chosen)  # the model's answer is the one the trainer uses
    assert enable_grad_checkpointing(model) == 1
    assert [u for u in everything if getattr(u, "checkpointing", False)] == chosen
