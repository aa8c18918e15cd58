"""Registry keys for single-file checkpoints (``config``, ``vae``, ``prediction_type``) and a
``.safetensors`` SFUMATO_MODEL: parsed, paths resolved, pickle refused, never shown to clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.errors import RegistryInvalid
from core.models import served_models
from tests.support.single_file import synthetic_keys, write_header_file


def _served(tmp_path: Path, body: str) -> dict:
    (tmp_path / "models.toml").write_text(body)
    return served_models(Settings(models_file=tmp_path / "models.toml", data_dir=tmp_path))


def test_single_file_keys_resolve_against_the_registry_and_stay_private(tmp_path: Path) -> None:
    spec = _served(
        tmp_path,
        '[[models]]\nid = "dream"\nsource = "dream.safetensors"\nfamily = "sdxl"\nconfig = "./configs/x"\n'
        'vae = "./vae/ft-mse.safetensors"\nprediction_type = "epsilon"\nrefiner = "./r.safetensors"\n'
        'refiner_config = "./configs/r"\n',
    )["dream"]
    assert spec.source == str(tmp_path / "dream.safetensors")  # a bare *.safetensors is a local file
    assert (spec.config, spec.vae) == (str(tmp_path / "configs/x"), str(tmp_path / "vae/ft-mse.safetensors"))
    assert spec.prediction_type == "epsilon"
    assert (spec.refiner, spec.refiner_config) == (str(tmp_path / "r.safetensors"), str(tmp_path / "configs/r"))
    public = spec.public()
    assert not {"config", "vae", "prediction_type", "source", "refiner_config"} & set(public)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('source = "./dream.ckpt"', ["source", "pickle", ".safetensors"]),
        ('source = "./d"\nvae = "./vae.pt"', ["vae", "pickle"]),
        ('source = "./d"\nprediction_type = "sample"', ["prediction_type", "epsilon"]),
        ('source = "./d"\nconfig = "owner/repo"', ["config", "local folder"]),
        ('source = "./d"\nrefiner_config = "./c"', ["refiner_config", "single-file"]),
    ],
)
def test_bad_single_file_keys_stop_start_up_naming_the_field(tmp_path: Path, line: str, words: list[str]) -> None:
    with pytest.raises(RegistryInvalid) as info:
        _served(tmp_path, f'[[models]]\nid = "dream"\nfamily = "sd1"\n{line}\n')
    assert all(word in info.value.message for word in ["'dream'", *words]), info.value.message


def test_a_single_file_sfumato_model_gets_its_detected_familys_defaults(tmp_path: Path) -> None:
    xl = write_header_file(tmp_path / "xl.safetensors", synthetic_keys("sdxl"))
    spec = next(iter(served_models(Settings(model=str(xl), data_dir=tmp_path)).values()))
    assert (spec.family, spec.default_width) == ("sdxl", 1024)
    sd2 = write_header_file(tmp_path / "two.safetensors", synthetic_keys("sd2"))
    assert next(iter(served_models(Settings(model=str(sd2), data_dir=tmp_path)).values())).family == "sd2"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"xx")  # unreadable: sd1 defaults here; the worker refuses it at start-up
    assert next(iter(served_models(Settings(model=str(broken), data_dir=tmp_path)).values())).family == "sd1"
