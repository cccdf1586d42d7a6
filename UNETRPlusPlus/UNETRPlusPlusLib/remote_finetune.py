"""`python -m UNETRPlusPlusLib.remote_finetune --server URL --from MODEL --data SET --name NEW
[--iterations N]`: the module's "Fine-tune" when it processes on a server (`unetrpp serve
--allow-training`): the case set goes up as a fine-tune job (`ServerClient.finetune`, the same token,
limits, progress and cancel as segmentation jobs), the new package comes back as a zip and is
installed here beside the parent, never over it.

It speaks what `unetrpp-train finetune --progress json` speaks, so training.FineTuneTask reads it
unchanged: JSON-lines stage/progress events, then `{"event": "done", "model", "package" (installed
here), "parent", "metrics": {"before", "after"}, "evaluation"}` or `{"event": "error", "category",
"message"}` (unetrpp.errors.classify). SIGTERM (Cancel) cancels the server job and exits 130. The
token comes from UNETRPP_SERVER_TOKEN (remote.worker_environment), never the command line.
No torch, no Qt, no slicer: it runs in the engine's Python.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from unetrpp import catalogue
    from unetrpp.client import ServerClient, read_token
    from unetrpp.progress import JsonLinesSink

    stop = threading.Event()
    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_a: stop.set())
    sink = JsonLinesSink()
    with ServerClient(args.server, read_token(None)) as client:
        _emit({"event": "stage", "stage": "prepare", "message": f"sending the case set to {args.server}"})
        job = client.finetune(args.parent, args.data, args.name, options={"iterations": args.iterations})
        client.wait(job, sink=sink, cancel=stop)
        _emit({"event": "stage", "stage": "install", "message": "downloading and installing the new model"})
        with tempfile.TemporaryDirectory(prefix="unetrpp-finetune-") as tmp:
            archive = client.download(job, Path(tmp) / f"{args.name}.zip")
            installed = catalogue.install(str(archive), overwrite=False)
        report = client.report(job)
    _emit({"event": "done", "model": args.name, "package": str(installed), "parent": args.parent,
           "metrics": report.get("metrics") or {}, "evaluation": report.get("evaluation") or {},
           "server": args.server, "job": job})
    return 0


def main(argv: list[str] | None = None) -> int:
    from unetrpp.errors import classify

    p = argparse.ArgumentParser(prog="python -m UNETRPlusPlusLib.remote_finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, metavar="URL")
    p.add_argument("--from", dest="parent", required=True, metavar="MODEL", help="the model's name on the server")
    p.add_argument("--data", required=True, metavar="FOLDER", help="case set (nnU-Net raw layout)")
    p.add_argument("--name", required=True, metavar="NEW")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--progress", choices=["json"], default="json")
    args = p.parse_args(argv)
    try:
        return run(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure becomes its category
        c = classify(exc)
        _emit({"event": "error", **c.as_json()})
        print(f"error: {c.message}", file=sys.stderr)
        return c.exit_code


if __name__ == "__main__":
    sys.exit(main())
