"""The bundle against the MONAI model zoo's checks: metadata, network I/O, workflow properties, export, docs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import monai
import numpy as np
import pytest
import torch
from conftest import BUNDLE, TESTING_DATA, run_bundle
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties

from pipeline.inferers.ensemble import load_model_weights
from pipeline.networks.nets import split_output

CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
SCHEMAS = TESTING_DATA / "schemas"
SCHEMA_NAME = "meta_schema_20240725.json"
#: The model zoo refuses files over 25 MB in a bundle.
MAX_FILE_BYTES = 25 * 1024 * 1024


def schema_sha256() -> str:
    """The schema's sha256 as recorded in ``tests/testing_data/schemas/SHA256SUMS``."""
    sums = dict(reversed(line.split()) for line in (SCHEMAS / "SHA256SUMS").read_text().splitlines() if line)
    return sums[SCHEMA_NAME]


def test_schema_copy_is_the_published_one() -> None:
    digest = hashlib.sha256((SCHEMAS / SCHEMA_NAME).read_bytes()).hexdigest()
    assert digest == schema_sha256()
    assert json.loads(META.read_text())["schema"].endswith("/" + SCHEMA_NAME)


def test_verify_metadata_cli(tmp_path) -> None:
    schema = shutil.copy(SCHEMAS / SCHEMA_NAME, tmp_path / SCHEMA_NAME)
    proc = run_bundle(
        "verify_metadata", "--meta_file", str(META), "--filepath", str(schema),
        "--hash_val", schema_sha256(), "--hash_type", "sha256",
    )  # fmt: skip
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_verify_metadata_refuses_metadata_without_required_packages(tmp_path) -> None:
    schema = shutil.copy(SCHEMAS / SCHEMA_NAME, tmp_path / SCHEMA_NAME)
    meta = json.loads(META.read_text())
    del meta["required_packages_version"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=schema)


def test_metadata_versions_are_the_installed_ones() -> None:
    meta = json.loads(META.read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    installed = {name: importlib.metadata.version(name) for name in meta["required_packages_version"]}
    assert meta["required_packages_version"] == installed


def test_metadata_classes_match_the_configs() -> None:
    meta = json.loads(META.read_text())["network_data_format"]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    class_names = parser.get_parsed_content("class_names")
    for section in ("outputs", "post_processed_outputs"):
        pred = meta[section]["pred"]
        assert pred["num_channels"] == len(class_names)
        assert [pred["channel_def"][str(i)] for i in range(len(class_names))] == class_names
    assert meta["post_processed_outputs"]["pred"]["value_range"] == [0, 1]


def test_verify_net_in_out_cli() -> None:
    """MONAI's check reads one tensor output ("pred"): the class head, seen through ``classifier_def``."""
    proc = run_bundle(
        "verify_net_in_out", "classifier_def", "--meta_file", str(META),
        "--config_file", str(CONFIGS / "inference.json"),
    )  # fmt: skip
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_network_outputs_match_the_metadata() -> None:
    """Every output the metadata declares, with its channels and the input's spatial shape (the lesion map)."""
    meta = json.loads(META.read_text())["network_data_format"]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    network = parser.get_parsed_content("network_def").eval()
    image = meta["inputs"]["image"]
    with torch.no_grad():
        out = network(torch.rand(1, image["num_channels"], *image["spatial_shape"]))
    assert set(out) == set(meta["outputs"]) == set(meta["post_processed_outputs"])
    for key, declared in meta["outputs"].items():
        assert out[key].shape[1] == declared["num_channels"], key
    assert list(out["lesion"].shape[2:]) == meta["outputs"]["lesion"]["spatial_shape"] == image["spatial_shape"]


@pytest.fixture(scope="module")
def bare_bundle(tmp_path_factory) -> Path:
    """The bundle folder alone, as the model zoo's CI and MONAI Label see it: no cohort, no repository around it."""
    bare = tmp_path_factory.mktemp("bare") / BUNDLE.name
    shutil.copytree(BUNDLE, bare, ignore=shutil.ignore_patterns("eval", "logs", "cache"))
    return bare


@pytest.mark.parametrize(
    ("workflow_type", "config_file"),
    [
        ("train", ["train.json"]),
        ("infer", ["inference.json"]),
        ("infer", ["inference.json", "inference_torchscript.json"]),
        ("eval", ["train.json", "evaluate.json"]),
    ],
)
def test_bare_bundle_initialises_without_data(workflow_type: str, config_file: list[str], bare_bundle, monkeypatch):
    monkeypatch.chdir(bare_bundle)  # as the zoo runs it: from inside the bundle, bundle_root "."
    if "inference_torchscript.json" in config_file:
        run_bundle(
            "ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
            "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
            cwd=bare_bundle,
        )  # fmt: skip
    workflow = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[f"configs/{name}" for name in config_file],
        meta_file="configs/metadata.json",
        logging_file="configs/logging.conf",
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert not (bare_bundle.parent.parent / "data").exists()


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    """A model zoo checkout as its CI sees it: the trained bundle (the committed weights) in ``models/``, cwd the root.

    Returns the bundle's path relative to that root (``models/chest_ct_pneumonia_classification``).
    """
    shutil.copytree(BUNDLE, tmp_path / "models" / BUNDLE.name, ignore=shutil.ignore_patterns("eval", "logs", "*.ts"))
    monkeypatch.chdir(tmp_path)
    bundle = Path("models") / BUNDLE.name
    monkeypatch.syspath_prepend(str(bundle))  # the zoo puts the bundle on sys.path for custom code
    return bundle


def test_the_model_zoo_ci_passes_with_the_shape_exclusion_only(zoo: Path) -> None:
    """``ci/verify_bundle.py -m full`` of Project-MONAI/model-zoo, its calls in its order with its arguments.

    The zoo lists the bundle in ``exclude_verify_shape_list`` (``ci/bundle_custom_data.py``; docs/bundle.md says
    why): ``network_def`` returns ``{"pred", "lesion"}``. MONAI's shape check then passes on the class output alone
    (``classifier_def``), as the zoo would check a single-output network.
    """
    meta = str(zoo / "configs" / "metadata.json")
    # verify_bundle_directory: the necessary and the preferred files
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (zoo / name).is_file(), name
    # verify_version_changes (the check against the zoo's own model_info.json concerns released versions only)
    metadata = json.loads(Path(meta).read_text())
    assert metadata["version"] in metadata["changelog"]
    # verify_metadata_format: the schema where the zoo's CI downloads it
    (zoo / "eval").mkdir()
    shutil.copy(SCHEMAS / SCHEMA_NAME, zoo / "eval" / "schema.json")
    verify_metadata(meta_file=meta, filepath=str(zoo / "eval" / "schema.json"))
    # verify_bundle_properties: the inference config against the properties of a supported app
    assert metadata["supported_apps"]
    workflow = create_workflow(
        workflow_type="inference", bundle_root=str(zoo), config_file=str(zoo / "configs" / "inference.json"),
        logging_file=str(zoo / "configs" / "logging.conf"), meta_file=meta,
    )  # fmt: skip
    workflow.properties = {**MetaProperties, **InferProperties}
    assert workflow.check_properties() == []
    # verify_data_shape: skipped (exclude_verify_shape_list); network_def's dict output is why
    config_file = str(zoo / "configs" / "inference.json")
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'shape'"):
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config_file, bundle_root=str(zoo))
    verify_net_in_out(net_id="classifier_def", meta_file=meta, config_file=config_file, bundle_root=str(zoo))
    # verify_torchscript: ckpt_export of network_def from the plain models/model.pt (no key_in_ckpt), then loaded
    ckpt_export(
        net_id="network_def", filepath=str(zoo / "models" / "verify_model.ts"),
        ckpt_file=str(zoo / "models" / "model.pt"), meta_file=meta, config_file=config_file, bundle_root=str(zoo),
    )  # fmt: skip
    scripted = torch.jit.load(str(zoo / "models" / "verify_model.ts"))
    network = load_model_weights(workflow.parser.get_parsed_content("network_def"), zoo / "models" / "model.pt")
    image = torch.rand(1, 1, *metadata["network_data_format"]["inputs"]["image"]["spatial_shape"])
    with torch.no_grad():
        torch.testing.assert_close(scripted(image)["pred"], network.eval()(image)["pred"])  # the trained weights


def test_metadata_declares_monai_label() -> None:
    assert "monai-label" in json.loads(META.read_text())["supported_apps"]


def test_license_data_licence_and_readme() -> None:
    license_text = (BUNDLE / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text, "the full licence text, not a pointer to it"
    data_license = (BUNDLE / "docs" / "data_license.txt").read_text()
    assert "MosMedData" in data_license and "CC BY-NC-ND 3.0" in data_license
    readme = (BUNDLE / "docs" / "README.md").read_text()
    headings = {line.strip("# *").lower() for line in readme.splitlines() if line.startswith("#")}
    for section in ("model overview", "data", "training configuration", "performance", "monai bundle commands"):
        assert section in headings, f"README lacks a '{section}' section"
    assert {"references", "license"} <= headings


def test_readme_commands_name_existing_configs() -> None:
    readme = (BUNDLE / "docs" / "README.md").read_text()
    named = set(re.findall(r"configs/[\w.]+\.(?:json|conf)", readme))
    assert {"configs/train.json", "configs/evaluate.json", "configs/inference.json"} <= named
    missing = sorted(name for name in named if not (BUNDLE / name).is_file())
    assert not missing, f"README names configs that do not exist: {missing}"
    for command in ("run training", "run evaluating", "ckpt_export", "onnx_export", "verify_metadata"):
        assert f"python -m monai.bundle {command}" in readme


def test_every_bundle_file_is_under_25_mb() -> None:
    files = [path for path in BUNDLE.rglob("*") if path.is_file()]
    assert files
    too_big = [f"{path}: {path.stat().st_size} bytes" for path in files if path.stat().st_size >= MAX_FILE_BYTES]
    assert not too_big


def preprocessed_real_ct(series: Path, bundle: Path) -> torch.Tensor:
    """The real DICOM chest ``series`` through ``bundle``'s inference preprocessing (its model's recorded chain)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    item = parser.get_parsed_content("preprocessing")({"image": str(series)})
    return item["image"].as_tensor()[None].float()


@pytest.mark.slow
def test_exported_models_give_the_checkpoint_probabilities(real_series, trained_bundle, tmp_path) -> None:
    import onnxruntime

    configs = trained_bundle / "configs"
    spatial_size = [32, 32, 16]  # what trained_bundle was trained at
    common = (
        "network_def", "--ckpt_file", str(trained_bundle / "models" / "model.pt"),
        "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"),
    )  # fmt: skip
    ts_path, onnx_path = tmp_path / "model.ts", tmp_path / "model.onnx"
    run_bundle("ckpt_export", *common, "--filepath", str(ts_path))
    input_shape = json.dumps([1, 1, *spatial_size])
    run_bundle("onnx_export", *common, "--filepath", str(onnx_path), "--input_shape", input_shape)
    for path in (ts_path, onnx_path):
        assert 0 < path.stat().st_size < MAX_FILE_BYTES

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["bundle_root"] = str(trained_bundle)
    network = load_model_weights(
        parser.get_parsed_content("network_def"), trained_bundle / "models" / "model.pt"
    ).eval()
    image = preprocessed_real_ct(real_series, trained_bundle)
    assert tuple(image.shape) == (1, 1, *spatial_size)
    with torch.no_grad():
        logits, lesion = split_output(network(image))
    expected = torch.softmax(logits, dim=1)

    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts_path), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(META.read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"] == parser["network_def"]
    with torch.no_grad():
        ts_logits, ts_lesion = split_output(scripted(image))

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_lesion = session.run(None, {session.get_inputs()[0].name: image.numpy()})  # class, lesion

    torch.testing.assert_close(torch.softmax(ts_logits, dim=1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.softmax(torch.from_numpy(onnx_logits), dim=1), expected, atol=1e-5, rtol=0)
    for exported in (ts_lesion, torch.from_numpy(onnx_lesion)):  # the lesion output is exported too
        torch.testing.assert_close(torch.sigmoid(exported), torch.sigmoid(lesion), atol=1e-5, rtol=0)
