"""The client side of the publish tests, run in a fresh interpreter.

huggingface_hub and datasets read HF_ENDPOINT, HF_HOME and HF_TOKEN when they are imported, and
the pytest process has imported them long before; so the tests run the real clients here, with
the environment the test sets, exactly as a user's shell would.

    python tests/hub_client.py push DIR --repo ORG/NAME --version X.Y.Z ...
    python tests/hub_client.py load ORG/NAME OUT_DIR CONFIG@REVISION [CONFIG@REVISION ...]

`load` writes OUT_DIR/<config>@<revision>.parquet with the rows `load_dataset` returned: id,
the image's stored bytes (not decoded) and the embedding.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def guard_network() -> None:
    """Any connection outside loopback fails, before any library can open one."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(f"the publish tests may not connect to {address!r}")
        return real_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


def load(repo_id: str, out_dir: Path, specs: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Image, concatenate_datasets, load_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        config, revision = spec.split("@")
        loaded = load_dataset(repo_id, config, revision=revision)
        ds = concatenate_datasets([loaded[s] for s in sorted(loaded)])
        ds = ds.cast_column("image", Image(decode=False))
        table = ds.with_format("arrow")[:]
        images = [img["bytes"] for img in table.column("image").to_pylist()]
        pq.write_table(pa.table({"id": table.column("id"), "image": pa.array(images),
                                 "embedding": table.column("embedding")}),
                       out_dir / f"{config}@{revision}.parquet")


def main(argv: list[str]) -> int:
    guard_network()
    if argv[0] == "push":
        # The command function `fvds.cli` registers, in an app of its own: the CLI's other
        # commands import torch, which costs more than a push (test_publish checks the
        # registration).
        import typer

        from fvds.commands.push import push

        app = typer.Typer(pretty_exceptions_enable=False)
        app.command("push")(push)
        try:
            app(args=argv[1:], prog_name="fvds push")
        except SystemExit as e:
            return int(e.code or 0)
        return 0
    if argv[0] == "load":
        load(argv[1], Path(argv[2]), argv[3:])
        return 0
    raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
