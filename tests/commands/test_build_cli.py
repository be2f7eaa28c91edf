"""fvds build / plan / verify from the command line: bad input is exit 2 with a message that
names the value, never a traceback, and nothing on disk is touched."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_MODEL
from fvds import __version__
from fvds.cli import app

runner = CliRunner()
TINY = ["--model", TINY_MODEL, "--layers", "conv1.0", "--units-per-layer", "2", "--size", "32",
        "--model-input-size", "32", "--steps", "2", "--device", "cpu"]


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_version_and_help():
    assert run("--version").output.strip() == f"fvds {__version__}"
    help_text = run("build", "--help").output
    for flag in ("--preset", "--stage", "--layers", "--units-per-layer", "--objective",
                 "--batch-size", "--device", "--quiet"):
        assert flag in help_text


def test_plan_of_the_paper_preset_counts_9408_units():
    result = run("plan", "--preset", "paper", "--no-probe")
    assert result.exit_code == 0, result.output
    assert "3 stages x 49 layers x units = 9,408 units" in result.output
    assert "fvds finetune" in result.output  # the missing fine-tuned checkpoint is explained


def test_plan_estimates_time(tmp_path):
    result = run("plan", *TINY)
    assert result.exit_code == 0, result.output
    assert "estimate" in result.output


@pytest.fixture()
def bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[render]\nsteps = 3\nsize = = 4\n")
    return p


@pytest.fixture()
def unknown_key_toml(tmp_path):
    p = tmp_path / "cfg.toml"
    p.write_text("[render]\nstepz = 3\n")
    return p


@pytest.fixture()
def wrong_type_toml(tmp_path):
    p = tmp_path / "cfg.toml"
    p.write_text('[render]\nsteps = "many"\n')
    return p


@pytest.mark.parametrize(("args", "needle"), [
    (["--preset", "quikstart"], "Unknown preset 'quikstart'"),
    (["--model", "seresnext50_32x4", "--preset", "quickstart"], "seresnext50_32x4d"),
    (["--preset", "quickstart", "--layers", "layer9.*"], "'layer9.*' matches no conv layer"),
    (["--preset", "quickstart", "--units-per-layer", "0"], "units.per_layer"),
    (["--preset", "quickstart", "--size", "8"], "render.size"),
    (["--preset", "quickstart", "--steps", "0"], "render.steps"),
    (["--preset", "quickstart", "--device", "cuda:7"], "cuda:7"),
    (["--preset", "quickstart", "--device", "tpu"], "tpu"),
    (["--preset", "quickstart", "--unit-select", "best"], "units.select"),
    (["--preset", "quickstart", "--objective", "logit"], "render.objective"),
    (["--preset", "quickstart", "--stage", "finetuned"], "NAME=WEIGHTS"),
    (["--preset", "quickstart", "--stage", "ft=/nonexistent/ckpt.safetensors"],
     "/nonexistent/ckpt.safetensors"),
    (["--preset", "quickstart", "--set", "render.lr=-1"], "render.lr"),
    (["--preset", "quickstart", "--dataset-version", "1.0"], "1.0"),
])
def test_bad_input_exits_2_naming_the_value(tmp_path, args, needle):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    out = tmp_path / "out"
    result = run("build", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not out.exists()


@pytest.mark.parametrize(("fixture", "needle"), [
    ("bad_toml", "line 3"), ("unknown_key_toml", "unknown key 'render.stepz'"),
    ("wrong_type_toml", "'render.steps'"),
])
def test_bad_config_files(request, tmp_path, fixture, needle):
    result = run("build", request.getfixturevalue(fixture), "--out", tmp_path / "o")
    assert result.exit_code == 2 and needle in result.output, result.output


def test_missing_config_file(tmp_path):
    result = run("build", tmp_path / "nope.toml")
    assert result.exit_code == 2 and "nope.toml" in result.output


def test_out_is_a_file_or_not_writable(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    result = run("build", *TINY, "--out", f)
    assert result.exit_code == 2 and "is a file" in result.output
    result = run("build", *TINY, "--out", f / "sub")
    assert result.exit_code == 2 and "not writable" in result.output
    assert f.read_text() == "keep me"


def test_out_is_someone_elses_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run("build", *TINY, "--out", tmp_path)
    assert result.exit_code == 2 and "did not make" in result.output


@pytest.mark.parametrize("kind", ["not_a_state_dict", "mismatched"])
def test_bad_checkpoints(tmp_path, kind, tiny_checkpoint):
    if kind == "not_a_state_dict":
        ckpt = tmp_path / "junk.pth"
        ckpt.write_bytes(b"junk")
        model = TINY_MODEL
    else:
        ckpt, model = tiny_checkpoint, "resnet10t"  # a checkpoint of another architecture
    args = [a if a != TINY_MODEL else model for a in TINY]
    result = run("build", *args, "--stage", f"ft={ckpt}", "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert ckpt.name in result.output
    assert not (tmp_path / "o").exists()


def test_existing_out_with_a_different_config(tmp_path, tiny_dataset):
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())
    result = run("build", *TINY, "--out", out)
    assert result.exit_code == 2
    assert "different configuration" in result.output
    assert "units.per_layer: 3 -> 2" in result.output
    assert before == sorted(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())


def test_build_and_verify_from_the_cli(tmp_path):
    out = tmp_path / "ds"
    result = run("build", *TINY, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert run("verify", out).exit_code == 0
    shard = next((out / "data").rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-10])
    result = run("verify", out)
    assert result.exit_code == 1 and shard.name in result.output
    assert run("verify", tmp_path / "nothing").exit_code == 2


def test_paper_build_without_the_finetuned_checkpoint_explains_finetune(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset's checkpoint path is relative to the cwd
    result = run("build", "--preset", "paper", "--out", tmp_path / "paper")
    assert result.exit_code == 2
    assert "seresnext50_32x4d-finetuned.safetensors" in result.output
    assert "fvds finetune" in result.output
    assert not (tmp_path / "paper").exists()


def test_per_stage_projection_columns(tmp_path):
    from datasets import load_dataset

    out = tmp_path / "ds"
    result = run("build", *TINY, "--stage", "a=random", "--stage", "b=random",
                 "--set", "umap.per_stage=true", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    ds = load_dataset(str(out), "all", split="train")
    assert {"umap_stage_x", "umap_stage_y"} <= set(ds.column_names)
    assert run("verify", out).exit_code == 0
