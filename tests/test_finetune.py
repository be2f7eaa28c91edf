"""`fvds finetune`: real learning on a synthetic 5-class image folder, the checkpoint as a build
stage, resume after interruption, datasets as sources, and every bad input (exit 2)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import TINY_MODEL
from fvds.builder.layers import conv_layers
from fvds.builder.models import create_model, load_stage, state_dict_sha256
from fvds.builder.render import prepare_model, render_units
from fvds.cli import app
from fvds.config import StageConfig, load_config
from fvds.errors import BadInput
from fvds.finetune import (
    FinetuneConfig,
    load_labelled_images,
    read_finetune_metadata,
    run_finetune,
)
from fvds.finetune.checkpoint import work_dir

TINY = TINY_MODEL
# Each class is a colour with noise and a shape of its own: separable by a small network
# trained from random weights, but only by learning (chance is 0.2).
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220),
           "yellow": (235, 215, 40), "magenta": (200, 40, 200)}
PER_CLASS = 30
# One run's settings, shared by the CLI run and the resume test so their results compare.
RUN = {"model": TINY, "weights": "random", "image_size": 32, "epochs": 4, "batch_size": 16,
       "lr": 2e-3, "workers": 0, "seed": 0}


def make_image(colour: tuple[int, int, int], shape: int, rng: np.random.Generator,
               size: int = 40) -> Image.Image:
    pixels = np.array(colour, np.float32) + rng.normal(0, 25, (size, size, 3))
    im = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    x, y = (int(v) for v in rng.integers(4, size // 2, 2))
    r = int(rng.integers(6, size // 3))
    draw = ImageDraw.Draw(im)
    if shape == 0:
        draw.rectangle([x, y, x + r, y + r], fill=(255, 255, 255))
    elif shape == 1:
        draw.ellipse([x, y, x + r, y + r], fill=(0, 0, 0))
    else:
        draw.polygon([(x, y + r), (x + r, y + r), (x + r // 2, y)], fill=(128, 128, 128))
    return im


def make_folder(root: Path, per_class: int = PER_CLASS, classes: dict | None = None,
                seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for ci, (name, colour) in enumerate((classes or COLOURS).items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(colour, ci % 3, rng).save(root / name / f"{i:03d}.png")
    return root


def cli_args(data: Path, out: Path, **overrides) -> list[str]:
    args = ["finetune", "--data", str(data), "--out", str(out)]
    for key, value in (RUN | overrides).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On a shared 2-core machine a second intra-op thread contends with other processes and
    runs these tiny models ten times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = make_folder(tmp_path_factory.mktemp("data") / "shapes")
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "blue" / "notes.txt").write_text("not an image, not counted")
    return root


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    """One CLI run, progress bars on: (checkpoint, CLI result)."""
    out = tmp_path_factory.mktemp("run") / "ft.safetensors"
    result = invoke(cli_args(image_folder, out))
    assert result.exit_code == 0, result.output
    return out, result


# --- learning, outputs, the checkpoint as a stage

def test_learns_the_classes_and_writes_metadata(trained, image_folder):
    out, result = trained
    assert result.stdout.strip() == str(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["best_val_accuracy"] >= 0.9
    assert meta["epochs"][-1]["train_loss"] < meta["epochs"][0]["train_loss"]
    assert [m["epoch"] for m in meta["epochs"]] == [1, 2, 3, 4]
    assert meta["best_val_accuracy"] == max(m["val_accuracy"] for m in meta["epochs"])
    assert meta["classes"] == sorted(COLOURS) and meta["num_classes"] == 5
    # the broken file is skipped and counted; the text file is not an image at all
    assert meta["data"]["skipped_unreadable"] == 1
    assert meta["data"]["skipped_examples"] == ["red/broken.png"]
    assert meta["data"]["fingerprint"]["files"] == 5 * PER_CLASS
    assert sum(c["val"] for c in meta["data"]["classes"].values()) == 5 * round(PER_CLASS * 0.2)
    base = create_model(TINY, "random", seed=0)
    assert meta["base_weights"] == {"weights": "random", "source": None,
                                    "sha256": state_dict_sha256(base)}
    assert meta["config"]["lr"] == RUN["lr"] and meta["config"]["data"] == str(image_folder)
    assert read_finetune_metadata(out) == meta
    assert not work_dir(out).exists(), "the resume state goes when the run completes"
    assert "epoch 4/4" in result.stderr and "val accuracy" in result.stderr


def test_checkpoint_loads_as_a_build_stage_and_renders(trained, render_cfg):
    out, _ = trained
    meta = read_finetune_metadata(out)
    model = create_model(TINY, str(out))  # head size read from the checkpoint
    assert model.get_classifier().out_features == 5
    for num_classes in (None, 5):  # as --stage finetuned=PATH and as the paper preset
        stage = load_stage(TINY, StageConfig(name="finetuned", weights=str(out),
                                             num_classes=num_classes))
        assert stage.sha256 == meta["checkpoint"]["sha256"]
    layer = conv_layers(model)[3].name
    cfg = load_config(overrides={"render.size": 32, "render.model_input_size": 32,
                                 "render.steps": 2, "render.batch_size": 4,
                                 "render.device": "cpu"}).render
    job = render_units(prepare_model(model, torch.device("cpu")), layer, [0, 1, 2], cfg, seed=0)
    assert job.images.shape == (3, 32, 32, 3) and np.isfinite(job.activations).all()


def test_metadata_is_not_attributed_to_other_weights(trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "ft.safetensors"
    shutil.copy(out, copy)
    assert read_finetune_metadata(copy) is None  # no JSON beside it
    shutil.copy(out.with_suffix(".json"), tmp_path / "ft.json")
    assert read_finetune_metadata(copy)["best_epoch"] >= 1
    state = load_file(str(copy))
    state["fc.bias"] = state["fc.bias"] + 1
    save_file(state, str(copy))
    assert read_finetune_metadata(copy) is None


# --- resume

class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_from_its_last_epoch(trained, image_folder, tmp_path):
    out = tmp_path / "ft.safetensors"
    cfg = FinetuneConfig(data=str(image_folder), out=str(out), **RUN)
    quiet = Console(file=io.StringIO())
    seen: list[int] = []

    def stop_after_two(m):
        seen.append(m.epoch)
        if m.epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_finetune(cfg, progress=False, console=quiet, on_epoch_end=stop_after_two)
    assert not out.exists() and (work_dir(out) / "state.pt").is_file()

    with pytest.raises(BadInput, match=r"lr 0\.002 -> 0\.001.*--fresh"):
        run_finetune(FinetuneConfig(**(cfg.to_dict() | {"lr": 1e-3})), progress=False,
                     console=quiet)

    seen.clear()
    result = run_finetune(cfg, progress=False, console=quiet, on_epoch_end=lambda m: seen.append(
        m.epoch))
    assert seen == [3, 4] and result.resumed_from == 2
    assert [m["epoch"] for m in result.metadata["epochs"]] == [1, 2, 3, 4]
    # Model, optimizer, schedule and per-epoch seeding all restored: the same weights as the
    # uninterrupted CLI run, bit for bit.
    uninterrupted = read_finetune_metadata(trained[0])
    assert result.metadata["checkpoint"]["sha256"] == uninterrupted["checkpoint"]["sha256"]
    def timeless(epochs):
        return [{k: v for k, v in m.items() if k != "seconds"} for m in epochs]

    assert timeless(result.metadata["epochs"]) == timeless(uninterrupted["epochs"])


def test_resume_follows_the_data_not_its_path_and_fresh_starts_over(image_folder, tmp_path):
    shutil.copytree(image_folder, tmp_path / "a")
    out = tmp_path / "ft.safetensors"
    quiet = Console(file=io.StringIO())
    seen: list[int] = []

    def run(folder: str, **kwargs):
        cfg = FinetuneConfig(data=str(tmp_path / folder), out=str(out), **(RUN | {"epochs": 3}))
        with pytest.raises(_Interrupt):
            run_finetune(cfg, progress=False, console=quiet, on_epoch_end=stop, **kwargs)

    def stop(m):
        seen.append(m.epoch)
        raise _Interrupt

    run("a")
    (tmp_path / "a").rename(tmp_path / "b")
    run("b")  # same files elsewhere: resumes
    make_image((0, 0, 0), 0, np.random.default_rng(1)).save(tmp_path / "b" / "red" / "new.png")
    with pytest.raises(BadInput, match="changed since the interrupted run.*--fresh"):
        run("b")
    run("b", fresh=True)
    assert seen == [1, 2, 1]


def test_frozen_backbone_trains_only_the_head_and_leaves_global_rng(image_folder, tmp_path):
    out = tmp_path / "ft.safetensors"
    cfg = FinetuneConfig(data=str(image_folder), out=str(out),
                         **(RUN | {"epochs": 1, "freeze_epochs": 1}))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    result = run_finetune(cfg, progress=False, console=Console(file=io.StringIO()))
    assert torch.equal(torch.rand(3), expected), "the run must restore the global RNG"
    assert result.metadata["epochs"][0]["frozen_backbone"] is True
    base = create_model(TINY, "random", seed=0).state_dict()
    tuned = load_file(str(out))
    backbone = [k for k in tuned if not k.startswith("fc.")]
    assert all(torch.equal(tuned[k], base[k]) for k in backbone)  # weights and BN statistics
    assert tuned["fc.weight"].shape == (5, base["fc.weight"].shape[1])


# --- datasets as the source

def _dataset(n: int, seed: int, label_names: list[str] | None = None):
    import datasets

    rng = np.random.default_rng(seed)
    items = [(ci, make_image(c, ci % 3, rng, size=24)) for ci, c in enumerate(COLOURS.values())
             for _ in range(n)]
    names = label_names or list(COLOURS)
    features = datasets.Features({"picture": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"picture": [im for _, im in items],
                                       "label": [ci for ci, _ in items]}, features=features)


def test_saved_dataset_with_a_validation_split(tmp_path):
    import datasets

    path = tmp_path / "ds"
    train = _dataset(4, 0)
    unlabelled = datasets.Dataset.from_dict({"picture": [train[0]["picture"]], "label": [-1]},
                                            features=train.features)
    datasets.DatasetDict({"train": datasets.concatenate_datasets([train, unlabelled]),
                          "validation": _dataset(2, 1)}).save_to_disk(str(path))
    data = load_labelled_images(FinetuneConfig(data=str(path), out="x.safetensors"))
    assert data.classes == list(COLOURS)  # ClassLabel order, not sorted
    assert (len(data.train), len(data.val), data.unlabelled) == (20, 10, 1)
    assert data.val_from == "split 'validation'"
    assert data.fingerprint["kind"] == "save_to_disk"
    assert set(data.fingerprint["splits"]) == {"train", "validation"}
    assert data.fingerprint["image_column"] == "picture"  # the only Image column
    assert data.opener(data.val[0][0]).size == (24, 24)

    with pytest.raises(BadInput, match="no column 'lable'.*label"):
        load_labelled_images(FinetuneConfig(data=str(path), out="x.safetensors",
                                            label_column="lable"))


def test_parquet_dataset_with_string_labels_trains(tmp_path):
    """A folder `datasets.load_dataset` reads, labels as strings, one unreadable image."""
    import datasets

    ds = _dataset(6, 2)
    labels = [ds.features["label"].int2str(y) for y in ds["label"]]
    pictures = list(ds.cast_column("picture", datasets.Image(decode=False))["picture"])
    pictures[0] = {"bytes": b"garbage", "path": None}
    plain = datasets.Dataset.from_dict(
        {"picture": pictures, "colour": labels},
        features=datasets.Features({"picture": datasets.Image(), "colour": datasets.Value(
            "string")}))
    (tmp_path / "pq" / "data").mkdir(parents=True)
    plain.to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "ft.safetensors"
    cfg = FinetuneConfig(data=str(tmp_path / "pq"), out=str(out), label_column="colour",
                         **(RUN | {"epochs": 1, "batch_size": 8}))
    result = run_finetune(cfg, progress=False, console=Console(file=io.StringIO()))
    meta = result.metadata
    assert meta["classes"] == sorted(COLOURS)
    assert meta["data"]["skipped_unreadable"] == 1
    assert meta["data"]["fingerprint"]["kind"] == "local_dataset"
    assert meta["data"]["validation"].startswith("held out 0.2")
    assert create_model(TINY, str(out)).get_classifier().out_features == 5


# Runs `fvds finetune` once per argument list in a fresh interpreter (HF_ENDPOINT is read on
# import), with connections outside loopback refused; prints the exit codes as JSON.
HUB_CLIENT = """
import json, socket
real_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
        raise ConnectionRefusedError(f"tests may not connect to {{address!r}}")
    return real_connect(self, address)
socket.socket.connect = connect
from fvds.cli import app
codes = []
for args in {runs!r}:
    try:
        app(args=["finetune", *args], prog_name="fvds")
        codes.append(0)
    except SystemExit as e:
        codes.append(int(e.code or 0))
print(json.dumps(codes))
"""


def test_hub_dataset_id_at_a_revision(tmp_path):
    """A Hub dataset (served by the loopback double) with train and validation splits; an id
    the Hub does not have is bad input. The clients run in a fresh interpreter: they read
    HF_ENDPOINT when imported."""
    from huggingface_hub import HfApi

    from hub_double import HubDouble, User

    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    _dataset(4, 0).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    _dataset(2, 1).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    out = tmp_path / "ft.safetensors"
    args = ["--out", str(out), "--model", TINY, "--weights", "random", "--image-size", "32",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--quiet"]
    script = HUB_CLIENT.format(runs=[["--data", "alice/nothing", "--data-revision", "v1", *args],
                                     ["--data", "alice/colours", "--data-revision", "v1", *args]])
    with HubDouble({"tok": User("alice")}) as hub:
        api = HfApi(endpoint=hub.url, token="tok")
        api.create_repo("alice/colours", repo_type="dataset")
        commit = api.upload_folder(folder_path=str(tmp_path / "repo"), repo_id="alice/colours",
                                   repo_type="dataset").oid
        api.create_tag("alice/colours", tag="v1", repo_type="dataset")
        env = os.environ | {"HF_ENDPOINT": hub.url, "HF_TOKEN": "tok",
                            "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
                            "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [2, 0], proc.stderr
    message = " ".join(proc.stderr.split())
    assert "Bad input: Data 'alice/nothing' is neither an existing folder" in message
    assert "Traceback" not in proc.stderr
    meta = read_finetune_metadata(out)
    assert meta["data"]["fingerprint"]["kind"] == "hub"
    assert meta["data"]["fingerprint"]["revision"] == commit  # the tag, resolved to its commit
    assert meta["data"]["validation"] == "split 'validation'"
    assert meta["classes"] == list(COLOURS)


def test_split_image_folder_uses_its_validation_folder(tmp_path):
    make_folder(tmp_path / "split" / "train", per_class=3)
    make_folder(tmp_path / "split" / "val", per_class=2, seed=1)
    data = load_labelled_images(FinetuneConfig(data=str(tmp_path / "split"), out="x.safetensors"))
    assert data.classes == sorted(COLOURS)
    assert (len(data.train), len(data.val)) == (15, 10)
    assert data.val_from == "folder 'val'"


# --- bad input: exit 2, a message naming the value, no traceback

def _bad_case(case: str, tmp: Path, shapes: Path) -> tuple[list[str], str]:
    """CLI arguments for one bad input, and a pattern its message must contain."""
    out = tmp / "ft.safetensors"
    if case == "missing folder":
        return cli_args(tmp / "nowhere", out), f"'{tmp / 'nowhere'}' does not exist"
    if case == "empty folder":
        (tmp / "empty").mkdir()
        return cli_args(tmp / "empty", out), "is empty"
    if case == "class without readable images":
        make_folder(tmp / "d", per_class=2, classes={"a": (0, 0, 0), "b": (255, 0, 0)})
        (tmp / "d" / "c").mkdir()
        (tmp / "d" / "c" / "x.jpg").write_bytes(b"\xff\xd8\xff truncated")
        return cli_args(tmp / "d", out), r"'c' \(1 image file\(s\), none readable\)"
    if case == "class without image files":
        make_folder(tmp / "d", per_class=2, classes={"a": (0, 0, 0), "b": (255, 0, 0)})
        (tmp / "d" / "c").mkdir()
        (tmp / "d" / "c" / "readme.txt").write_text("no images here")
        return cli_args(tmp / "d", out), r"'c' \(no image files\)"
    if case == "num-classes disagrees":
        return cli_args(shapes, out, num_classes=3), "--num-classes 3 disagrees.*5 classes"
    if case == "base weights mismatched":
        other = tmp / "other.safetensors"
        save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(other))
        return cli_args(shapes, out, weights=other), f"'{other}' does not match"
    if case == "base weights missing":
        return cli_args(shapes, out, weights=tmp / "none.safetensors"), "none.safetensors' does"
    if case == "output not writable":
        (tmp / "a_file").write_text("")
        return cli_args(shapes, tmp / "a_file" / "ft.safetensors"), "not writable"
    if case == "output exists":
        out.write_bytes(b"")
        return cli_args(shapes, out), "already exists.*--overwrite"
    if case == "output not safetensors":
        return cli_args(shapes, tmp / "ft.pt"), "must end in .safetensors"
    if case == "one class only":
        make_folder(tmp / "d", per_class=2, classes={"a": (0, 0, 0)})
        return cli_args(tmp / "d", out), "at least 2"
    if case == "no validation image":
        make_folder(tmp / "d", per_class=1, classes={"a": (0, 0, 0), "b": (255, 0, 0)})
        return cli_args(tmp / "d", out), "leaves no image for validation"
    if case == "unknown model":
        return cli_args(shapes, out, model="resnet_51"), "Unknown timm model 'resnet_51'"
    if case == "bad setting":
        return cli_args(shapes, out, val_fraction=1.5), r"val_fraction .*\(got 1.5\)"
    raise AssertionError(case)


BAD_CASES = ["missing folder", "empty folder", "class without readable images",
             "class without image files", "num-classes disagrees", "base weights mismatched",
             "base weights missing",
             "output not writable", "output exists", "output not safetensors", "one class only",
             "no validation image",
             "unknown model", "bad setting"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_a_clear_message(case, tmp_path, image_folder):
    args, pattern = _bad_case(case, tmp_path, image_folder)
    result = invoke(args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "Bad input" in message
    assert re.search(pattern, message), message
    assert "Traceback" not in result.output
    assert not work_dir(tmp_path / "ft.safetensors").exists()
