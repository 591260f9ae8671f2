"""serve/model.py and the service load the twin through finetune/twin.py: adapter file or folder, its base."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from serve_helpers import make_adapter, make_settings

from serve.model import ModelLoadError, load_model
from serve.service import build_service

CPU = torch.device("cpu")


def test_the_adapter_folder_serves_like_the_adapter_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_checkpoint, tmp_path / "twin")
    from_file = load_model(tiny_checkpoint, adapter, CPU, torch.float32)
    from_folder = load_model(tiny_checkpoint, adapter.parent, CPU, torch.float32)
    x = torch.randint(0, from_file.config.vocab_size, (1, 10))
    with torch.no_grad():
        assert torch.equal(from_folder(x), from_file(x))
    build_service(make_settings(tiny_checkpoint, adapter.parent))  # the CLI's --lora-path out/twin


@pytest.mark.parametrize("recorded", ["base_name", "checkpoint_dir"])
def test_another_base_is_refused_naming_both(tiny_checkpoint: Path, tmp_path: Path, recorded: str) -> None:
    """Refused whether the adapter records its base by name, or (older runs) only by checkpoint_dir."""
    adapter = make_adapter(tiny_checkpoint, tmp_path / "twin")
    if recorded == "base_name":
        hparams_file = adapter.parent / "hyperparameters.yaml"
        hparams = yaml.safe_load(hparams_file.read_text())
        hparams_file.write_text(yaml.safe_dump(hparams | {"base_name": "falcon-7b"}))
        trained_on, other = "falcon-7b", tiny_checkpoint
    else:
        other = shutil.copytree(tiny_checkpoint, tmp_path / "other")
        config = yaml.safe_load((other / "model_config.yaml").read_text())
        (other / "model_config.yaml").write_text(yaml.safe_dump(config | {"name": "other-falcon"}))
        trained_on = "tiny-falcon"
    served = yaml.safe_load((other / "model_config.yaml").read_text())["name"]
    both = f"trained on '{trained_on}', but .* holds '{served}'"
    with pytest.raises(ModelLoadError, match=both):
        load_model(other, adapter, CPU, torch.float32)
    with pytest.raises(ModelLoadError, match=both):
        build_service(make_settings(other, adapter.parent))
