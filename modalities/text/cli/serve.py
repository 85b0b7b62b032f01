"""``polysteer serve``: the OpenAI-compatible server with per-request steering (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
import warnings

import click

from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.option_types import POSITIVE_FLOAT, POSITIVE_INT, CheckedFloat, CheckedInt, input_type

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond loopback without an API key."""
    if not is_loopback(host) and not api_key:
        raise PolysteerError(f"--host {host} exposes the server beyond this machine; set --api-key KEY (or "
                             "POLYSTEER_API_KEY), or bind 127.0.0.1")


@click.command()
@text_model_options
@click.option("--directions", "directions_dir", type=input_type("dir"),
              help="Folder of direction files (*.safetensors), each served under its file name.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --api-key.")
@click.option("--port", default=8000, show_default=True, type=CheckedInt(1, 65535), help="Port to listen on.")
@click.option("--api-key", envvar="POLYSTEER_API_KEY", default=None, show_envvar=True,
              help="Clients must send 'Authorization: Bearer KEY'.")
@click.option("--max-batch-size", default=8, show_default=True, type=CheckedInt(1, 256),
              help="Requests generated together in one batch.")
@click.option("--max-wait-ms", default=10.0, show_default=True, type=CheckedFloat(0, 10_000),
              help="How long a batch waits for more requests to join.")
@click.option("--max-prompt-tokens", default=2048, show_default=True, type=POSITIVE_INT,
              help="Longest prompt accepted, in tokens.")
@click.option("--max-tokens", "max_tokens", default=512, show_default=True, type=POSITIVE_INT,
              help="Most tokens one request may generate.")
@click.option("--max-queue", default=256, show_default=True, type=POSITIVE_INT,
              help="Requests that may wait; more get HTTP 429.")
@click.option("--max-upload-mb", default=16.0, show_default=True, type=POSITIVE_FLOAT,
              help="Largest direction file POST /v1/directions accepts.")
def serve(model_name, device, dtype, directions_dir, host, port, api_key, max_batch_size, max_wait_ms,
          max_prompt_tokens, max_tokens, max_queue, max_upload_mb):
    """Serve the model with OpenAI's API; requests steer themselves with an extra "steer" field."""
    check_exposure(host, api_key)
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.serve.registry import read_direction_dir

    directions = read_direction_dir(directions_dir) if directions_dir else {}
    click.echo(f"loading {model_name} ...", err=True)
    model, tokenizer = load_text_model(model_name, device, dtype)
    import uvicorn

    from polysteer.modalities.text.serve.app import ServeConfig, create_app

    config = ServeConfig(model_name=model_name, api_key=api_key, max_batch_size=max_batch_size,
                         max_wait_ms=max_wait_ms, max_queue=max_queue, max_prompt_tokens=max_prompt_tokens,
                         max_tokens=max_tokens, max_upload_bytes=int(max_upload_mb * 2**20))
    app = create_app(model, tokenizer, config, directions)
    # the engine's "vector far larger than the activations" hint is for interactive use; a server would log it
    # for every batch that carries a strong plan, so it is left to the clients, who see the text
    warnings.filterwarnings("ignore", message="steering at .* adds a vector of norm")
    click.echo(f"serving {model_name} with {len(directions)} direction(s) on http://{host}:{port} "
               "(playground at /)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
