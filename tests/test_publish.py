"""`fvds push` end to end, offline: the real huggingface_hub and datasets clients publish to and
load from a loopback double of the Hub (tests/hub_double.py).

The clients run in fresh interpreters (tests/hub_client.py) because both libraries read
HF_ENDPOINT, HF_HOME and HF_TOKEN at import, and this process imported them long ago. Each
client call gets its own HF_HOME, so no cache or stored login leaks between calls, and every
call's output is checked for every test token.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import tiny_config, tiny_config_overrides
from fvds.builder.pipeline import build
from fvds.cli import app
from fvds.config import load_config
from hub_double import HubDouble, User

CLIENT = Path(__file__).with_name("hub_client.py")
ORG = "fvds-lab"
WRITE = "hf_write_" + secrets.token_hex(12)
READ_ONLY = "hf_read_" + secrets.token_hex(12)
OUTSIDER = "hf_outsider_" + secrets.token_hex(12)
UNKNOWN = "hf_unknown_" + secrets.token_hex(12)
TOKENS = (WRITE, READ_ONLY, OUTSIDER, UNKNOWN)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hub():
    users = {WRITE: User("alice", orgs=(ORG,)), OUTSIDER: User("eve"),
             READ_ONLY: User("bob", orgs=(ORG,), can_write=False)}
    with HubDouble(users) as double:
        yield double
    assert double.unhandled == [], "the clients used routes the double does not implement"


@pytest.fixture(scope="module")
def v1(tiny_dataset, tiny_checkpoint, tmp_path_factory) -> Path:
    """The session's tiny dataset rebuilt as version 1.0.0 (the rendered parts are reused)."""
    out = tmp_path_factory.mktemp("v1") / "dataset"
    shutil.copytree(tiny_dataset, out)
    build(tiny_config(tiny_checkpoint, **{"dataset.version": "1.0.0"}), out, quiet=True,
          log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def v11(tmp_path_factory) -> Path:
    """A different dataset for version 1.1.0: another seed, one layer, only the `random` stage,
    so the v1.0.0 files under data/finetuned/ must be gone from the v1.1.0 commit."""
    out = tmp_path_factory.mktemp("v11") / "dataset"
    overrides = tiny_config_overrides(seed=1, **{"dataset.version": "1.1.0",
                                                 "units.layers": ["conv1.0"]})
    cfg = load_config(overrides={**overrides, "stages": [{"name": "random", "weights": "random"}]})
    build(cfg, out, quiet=True, log=lambda m: None)
    return out


def client(hub: HubDouble, tmp: Path, *args: str, token: str | None = WRITE,
           popen: bool = False):
    """Run tests/hub_client.py with the environment a user of the double would have."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=tempfile.mkdtemp(dir=tmp, prefix="hf-home-"),
               HF_UPDATE_DOWNLOAD_COUNTS="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", COLUMNS="300", NO_COLOR="1")
    if token is not None:
        env["HF_TOKEN"] = token
    cmd = [sys.executable, str(CLIENT), *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert_no_token(proc.stdout + proc.stderr)
    return proc


def push(hub: HubDouble, tmp: Path, folder: Path, repo: str, version: str, *extra: str,
         token: str | None = WRITE):
    return client(hub, tmp, "push", str(folder), "--repo", repo, "--version", version, *extra,
                  token=token)


def assert_no_token(text: str) -> None:
    for token in TOKENS:
        assert token not in text


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def local_rows(folder: Path, stage: str = "*") -> pa.Table:
    shards = sorted(folder.glob(f"data/{stage}/*.parquet"))
    table = pa.concat_tables([pq.read_table(s, columns=["id", "image", "embedding"])
                              for s in shards])
    images = [img["bytes"] for img in table.column("image").to_pylist()]
    return pa.table({"id": table.column("id"), "image": pa.array(images),
                     "embedding": table.column("embedding")})


def assert_commit_holds(hub: HubDouble, repo: str, revision: str, folder: Path,
                        version: str) -> None:
    """The commit is the folder (without its work area), with a card that names the repo."""
    pushed = hub.files(repo, revision)
    local = {p: (folder / p).read_bytes() for p in snapshot(folder) if not p.startswith(".")}
    assert set(pushed) == set(local) | {".gitattributes"}
    for path in set(local) - {"README.md", "fvds.json"}:
        assert pushed[path] == local[path], path
    card = pushed["README.md"].decode()
    assert f'load_dataset("{repo}", "all", split="train", revision="v{version}")' in card
    assert card.replace(f'"{repo}"', '"ORG/fvds-tiny"') == local["README.md"].decode()
    assert f"Version **{version}**" in card
    manifest = json.loads(pushed["fvds.json"])
    assert manifest["config"]["dataset"]["version"] == version
    for path, meta in manifest["files"].items():  # the pushed commit verifies as a whole
        assert meta == {"sha256": hashlib.sha256(pushed[path]).hexdigest(),
                        "bytes": len(pushed[path])}, path
    local_manifest = json.loads(local["fvds.json"])
    local_manifest["files"]["README.md"] = manifest["files"]["README.md"]
    assert manifest == local_manifest


@pytest.fixture(scope="module")
def published(hub, v1, v11, tmp_path_factory):
    """fvds-lab/tiny with v1.0.0 (from v1) and then v1.1.0 (from v11)."""
    tmp = tmp_path_factory.mktemp("published")
    before = {v1: snapshot(v1), v11: snapshot(v11)}
    repo = f"{ORG}/tiny"
    first = push(hub, tmp, v1, repo, "1.0.0")
    commit_v1 = hub.repos[repo].tags.get("v1.0.0", ("",))[0] if repo in hub.repos else None
    second = push(hub, tmp, v11, repo, "1.1.0")
    return SimpleNamespace(repo=repo, first=first, second=second, before=before,
                           commit_v1=commit_v1)


# ------------------------------------------------------------------------------ publish
def test_each_push_is_one_commit_tagged_with_its_version(hub, published, v1, v11):
    repo = published.repo
    for proc in (published.first, published.second):
        assert proc.returncode == 0, proc.stderr
    r = hub.repos[repo]
    sha1, sha2 = r.tags["v1.0.0"][0], r.tags["v1.1.0"][0]
    assert sha1 == published.commit_v1  # the tag is the commit, not wherever main went later
    assert r.commits[r.commits[sha1].parent].title == "initial commit"  # one commit each
    assert r.commits[sha2].parent == sha1 and r.branches["main"] == sha2
    assert r.tags["v1.0.0"][1] == "fvds-tiny 1.0.0"
    assert f"Commit: {hub.url}/datasets/{repo}/commit/{sha1}" in published.first.stdout
    assert f'load_dataset("{repo}", "all", revision="v1.0.0")' in published.first.stdout
    assert_commit_holds(hub, repo, "v1.0.0", v1, "1.0.0")
    assert_commit_holds(hub, repo, "v1.1.0", v11, "1.1.0")  # data/finetuned/* deleted
    for folder, before in published.before.items():  # pushing writes nothing locally
        assert snapshot(folder) == before


def test_each_version_loads_its_own_rows(hub, published, v1, v11, tmp_path):
    proc = client(hub, tmp_path, "load", published.repo, str(tmp_path / "out"),
                  "all@v1.0.0", "finetuned@v1.0.0", "all@v1.1.0")
    assert proc.returncode == 0, proc.stderr
    got = {p.stem: pq.read_table(p) for p in (tmp_path / "out").glob("*.parquet")}
    assert got["all@v1.0.0"].equals(local_rows(v1))  # ids, image bytes, embeddings, in order
    assert got["finetuned@v1.0.0"].equals(local_rows(v1, "finetuned"))
    assert got["all@v1.1.0"].equals(local_rows(v11))
    old = got["all@v1.0.0"].to_pydict()
    old_image = dict(zip(old["id"], old["image"], strict=True))
    new = got["all@v1.1.0"].to_pydict()
    assert all(old_image[i] != img for i, img in zip(new["id"], new["image"], strict=True))


def test_a_published_version_is_never_pushed_again(hub, published, v1, tmp_path):
    state, seen = hub.state(), len(hub.log)
    proc = push(hub, tmp_path, v1, published.repo, "1.0.0")
    assert proc.returncode == 2, proc.stderr
    assert "already has tag v1.0.0" in proc.stderr and "Traceback" not in proc.stderr
    assert hub.state() == state
    assert [e for e in hub.log[seen:] if e[0] == "POST"] == []  # refused before any upload


def test_private_repo_on_a_branch(hub, v1, tmp_path):
    repo = f"{ORG}/private"
    proc = push(hub, tmp_path, v1, repo, "1.0.0", "--private", "--revision", "dev")
    assert proc.returncode == 0, proc.stderr
    r = hub.repos[repo]
    assert r.private and r.tags["v1.0.0"][0] == r.branches["dev"]
    assert set(hub.files(repo, "main")) == {".gitattributes"}
    assert_commit_holds(hub, repo, "v1.0.0", v1, "1.0.0")


def test_dry_run_lists_files_and_contacts_no_one(hub, v1, tmp_path):
    seen = len(hub.log)
    proc = push(hub, tmp_path, v1, f"{ORG}/dry", "1.0.0", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.splitlines()
    for path in snapshot(v1):
        if not path.startswith("."):
            assert any(line.endswith(f"  {path}") for line in listed), path
    assert "nothing was uploaded" in listed[-1]
    assert len(hub.log) == seen


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("token, repo, message", [
    (UNKNOWN, "existing", "refused the token (401)"),
    (None, "existing", "no Hugging Face token"),
    (READ_ONLY, "existing", "no write access"),
    (OUTSIDER, "missing", "does not exist"),  # and this token may not create it
], ids=["unknown-token", "no-token", "read-only-token", "missing-repo-no-rights"])
def test_auth_failures_are_short_messages_that_change_nothing(hub, v1, tmp_path, token, repo,
                                                              message):
    if f"{ORG}/existing" not in hub.repos:
        hub.add_repo(f"{ORG}/existing")
    state, seen = hub.state(), len(hub.log)
    proc = push(hub, tmp_path, v1, f"{ORG}/{repo}", "1.0.0", token=token)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert hub.state() == state
    assert hub.writes(since=seen) == []


def test_token_from_the_option_is_used_and_never_shown(hub, v1, tmp_path):
    repo = f"{ORG}/token-option"
    proc = push(hub, tmp_path, v1, repo, "1.0.0", "--token", WRITE, token=UNKNOWN)
    assert proc.returncode == 0, proc.stderr  # --token wins over HF_TOKEN
    assert "v1.0.0" in hub.repos[repo].tags
    for path in v1.rglob("*"):  # nor written into the folder (or its work area)
        if path.is_file():
            assert WRITE.encode() not in path.read_bytes()


# ------------------------------------------------------------------------------ interruptions
@pytest.mark.parametrize("endpoint, mode", [
    ("commit", "drop"),  # the network fails before the Hub commits
    ("commit", "drop_after"),  # the Hub commits, the answer is lost
    ("tag", "drop"),  # committed, the tag request fails
])
def test_an_interrupted_push_leaves_no_tag_and_a_rerun_completes_it(hub, v1, tmp_path, endpoint,
                                                                    mode):
    repo = f"{ORG}/interrupted-{endpoint}-{mode}"
    fault = hub.fault(endpoint, mode)
    first = push(hub, tmp_path, v1, repo, "1.0.0")
    assert fault.arrived.is_set()
    assert first.returncode == 1, first.stderr
    assert "rerun the same command" in first.stderr and "Traceback" not in first.stderr
    assert hub.repos[repo].tags == {}
    commits = set(hub.repos[repo].commits)

    rerun = push(hub, tmp_path, v1, repo, "1.0.0")
    assert rerun.returncode == 0, rerun.stderr
    r = hub.repos[repo]
    assert_commit_holds(hub, repo, "v1.0.0", v1, "1.0.0")
    if mode == "drop_after" or endpoint == "tag":  # the files were there: no second commit
        assert set(r.commits) == commits and r.tags["v1.0.0"][0] == r.branches["main"]
        assert "already held these files" in rerun.stderr


def test_ctrl_c_during_the_upload_leaves_no_tag(hub, v1, tmp_path):
    repo = f"{ORG}/ctrl-c"
    fault = hub.fault("commit", "hold")
    proc = client(hub, tmp_path, "push", str(v1), "--repo", repo, "--version", "1.0.0",
                  popen=True)
    try:
        assert fault.arrived.wait(120), "the push never reached the commit"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        fault.release.set()
        if proc.poll() is None:
            proc.kill()
    assert_no_token(out + err)
    assert proc.returncode == 130, err
    assert "v1.0.0 is not tagged" in err and "rerun the same command" in err
    assert hub.repos[repo].tags == {}
    assert set(hub.files(repo, "main")) == {".gitattributes"}


# ------------------------------------------------------------------------------ bad input, offline
runner = CliRunner()


def test_push_is_a_command_of_the_cli():
    result = runner.invoke(app, ["push", "--help"])
    assert result.exit_code == 0
    assert "--repo" in result.output and "--dry-run" in result.output


@pytest.mark.parametrize("args, message", [
    (["--version", "1.0"], "not a semantic version"),
    (["--version", "v1.0.0"], "not a semantic version"),
    (["--version", "01.0.0"], "not a semantic version"),
    (["--version", "2.0.0"], "--dataset-version 2.0.0"),  # not what the folder was built as
    (["--version", "1.0.0", "--repo", "no-namespace"], "not a Hub repo id"),
    (["--version", "1.0.0", "--revision", "v2.0.0"], "not a branch name"),
])
def test_bad_input_is_refused_before_any_network(v1, args, message):
    # No HF_ENDPOINT here: reaching the network at all would fail on the socket guard.
    result = runner.invoke(app, ["push", str(v1), "--repo", f"{ORG}/x", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_missing_folder_is_bad_input(tmp_path):
    result = runner.invoke(app, ["push", str(tmp_path / "nope"), "--repo", f"{ORG}/x",
                                 "--version", "1.0.0"])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_a_folder_that_fails_verify_is_refused(v1, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(v1, broken, ignore=shutil.ignore_patterns(".fvds"))
    shard = next(broken.glob("data/random/*.parquet"))
    shard.write_bytes(shard.read_bytes() + b"x")
    result = runner.invoke(app, ["push", str(broken), "--repo", f"{ORG}/x", "--version", "1.0.0",
                                 "--dry-run"])
    assert result.exit_code == 2
    assert "fails `fvds verify`" in result.stderr and shard.name in result.stderr
