"""`fedopsctl models ...`: global model versions with lineage, and their weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedops_cli.columns import ID, NUMBER, TEXT, Column, number, print_table
from fedops_cli.context import (
    Ctx,
    Output,
    call,
    emit,
    exit_code,
    fail,
    say,
)
from fedops_client import ControlError
from fedops_common.proto import control_pb2

models_app = typer.Typer(help="Global model versions.", no_args_is_help=True)


def render_models(resp: control_pb2.ListModelsResponse) -> None:
    """Newest version first; metrics as numeric columns (central first), ids in full."""
    models = sorted(resp.models, key=lambda m: m.version, reverse=True)
    rank = {"central": 0, "evaluate": 1, "train": 2}
    names = sorted({n for m in models for n in m.metrics}, key=lambda n: (rank.get(n.split(".")[0], 3), n))
    print_table("Model versions (newest first)", [
        Column("id", ID), Column("version", NUMBER), Column("tags", TEXT, 6),
        *(Column(n, NUMBER, 2 + rank.get(n.split(".")[0], 3)) for n in names), Column("round", NUMBER, 7),
        Column("run", ID, 8), Column("task", ID, 10), Column("participants", TEXT, 9), Column("parent", ID, 11),
        Column("bytes", NUMBER, 12)],
        [[m.id, f"v{m.version}", ", ".join(m.tags), *(number(m.metrics[n]) if n in m.metrics else "" for n in names),
          str(m.round), m.run_id, m.task_id, ", ".join(m.participant_client_ids), m.parent_id, str(m.size_bytes)]
         for m in models])


@models_app.command("list")
def models_list(task: Annotated[str, typer.Option()] = "", run: Annotated[str, typer.Option()] = "") -> None:
    """List global model versions with lineage (for a run without any: why the registry holds none)."""
    response = call("ListModels", control_pb2.ListModelsRequest(task_id=task, run_id=run))
    emit(response, render_models)
    if run and not response.models and Ctx.output == Output.table:
        note = call("GetRun", control_pb2.GetRunRequest(run_id=run)).model_note
        say(f"no model versions: {note or 'the run has stored none yet'}")


@models_app.command("show")
def models_show(model_id: str, task: Annotated[str, typer.Option(help="task, with 'best'/'latest'")] = "") -> None:
    """Show one version (an id, or 'best'/'latest' with --task)."""
    emit(call("GetModel", control_pb2.GetModelRequest(model_id=model_id, task_id=task)),
         lambda m: render_models(control_pb2.ListModelsResponse(models=[m])))


@models_app.command("download")
def models_download(model_id: str, out: Annotated[Path, typer.Option("--out", "-o", help="file to write")],
                    task: Annotated[str, typer.Option(help="task, with 'best'/'latest'")] = "") -> None:
    """Download a version's weights (npz of named arrays)."""
    version = None
    request = control_pb2.GetModelRequest(model_id=model_id, task_id=task)
    try:
        with out.open("wb") as fh:
            for chunk in Ctx.client().stream("DownloadModel", request, timeout=300):
                if chunk.HasField("version"):
                    version = chunk.version
                fh.write(chunk.data)
    except ControlError as err:
        out.unlink(missing_ok=True)
        fail(str(err), exit_code(err))
    result = {"path": str(out), "model_id": version.id if version else model_id,
              "sha256": version.sha256 if version else "", "bytes": out.stat().st_size}
    if Ctx.output == Output.json:
        print(json.dumps(result, indent=2))
    else:
        say(f"wrote {result['bytes']} bytes of {result['model_id']} to {out}")
