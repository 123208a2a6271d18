"""The `tlscale` command. User mistakes exit with code 2 and a message, never a traceback."""
from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from tlscale.errors import TlscaleError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tlscale: transfer learning from one YAML job spec.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

SpecArg = Annotated[Path, typer.Argument(help="Job spec (YAML).", show_default=False)]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. training.epochs=2")]


def user_errors(command):
    """Turn TlscaleError into 'error: ...' lines on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TlscaleError as exc:
            for message in exc.messages:
                err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


class _ConsoleLog(logging.Handler):
    """tlscale's notes (plain) and warnings on stderr, printed as the CLI prints errors."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        text = escape(record.getMessage())
        with tqdm.external_write_mode(file=sys.stderr):  # a progress bar on stderr steps aside, then comes back
            err.print(f"[yellow]warning:[/] {text}" if record.levelno >= logging.WARNING else text, markup=True)


@app.callback()
def _setup(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also third-party notes.")] = False) -> None:
    """tlscale: transfer learning from one YAML job spec."""
    from tlscale.logs import setup_entry_point

    setup_entry_point(-1 if quiet else 1 if verbose else 0, _ConsoleLog())


def _load(spec: Path, overrides: list[str] | None):
    from tlscale.spec import load_spec

    return load_spec(spec, overrides or [])


@app.command()
@user_errors
def validate(spec: SpecArg, overrides: Overrides = None,
             check_data: Annotated[bool, typer.Option(help="Also read the data files and check columns/labels.")] = True):
    """Check a spec (and its data files) without training."""
    job = _load(spec, overrides)  # first, before torch and transformers load: a typo comes back in about a second
    from tlscale.run_folder import check_output_dir

    if job.ladder is None:
        check_output_dir(job.output_dir)  # a file, the current directory, a folder of the user's files: refused
    else:
        from tlscale.ladder import check_ladder_folder

        check_ladder_folder(job.output_dir)
    data = None
    if job.fewshot and job.ladder is None:
        from tlscale.models import resolve_model_path

        resolve_model_path(job.model.name_or_path)
        if check_data:
            from tlscale.runners.local import prepared_data

            data = prepared_data(job)
    else:
        from tlscale.runners.local import preflight

        try:
            data = preflight(job, check_data=check_data)
        except TlscaleError as exc:  # name the spec lines of what the check blames, as load_spec does
            from tlscale.spec import locate_messages

            raise type(exc)(locate_messages(spec, exc.messages, overrides or [])) from None
    what = f"fewshot {job.fewshot.method}" if job.fewshot else f"strategy {job.strategy.name}"
    if job.ladder is not None:
        from tlscale.ladder.cells import plan, read_pool

        what = f"ladder of {len(plan(job, read_pool(job), job.output_dir))} cells"
    summary = f"{spec}: valid ({job.task}, {what})"
    if data is not None:
        summary += f"; {len(data.train)} train / {len(data.eval)} eval inputs"
        if data.label_names:
            summary += f", labels {data.label_names}"
    out.print(summary)


@app.command()
@user_errors
def schema(output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None):
    """JSON Schema of the job spec, for editor completion and validation."""
    from tlscale.spec import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output:
        from tlscale.run_folder import result_file

        result_file(output, "--output").write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


@app.command()
@user_errors
def train(spec: SpecArg, overrides: Overrides = None,
          resume: Annotated[bool, typer.Option(help="Continue the run in output_dir from its latest checkpoint.")] = False,
          overwrite: Annotated[bool, typer.Option(help="Replace the run in output_dir (kept aside until the new one finishes).")] = False,
          nproc: Annotated[Optional[int], typer.Option(
              "--nproc", min=1, help="Processes on this machine (sets distributed.num_processes).")] = None,
          stop_after_steps: Annotated[Optional[int], typer.Option(
              min=1, help="Checkpoint and stop after this many steps (as a preemption would).")] = None,
          progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True):
    """Train (and evaluate) the job described by SPEC."""
    from tlscale.runners import RunOptions, WorkerFailed, run_training
    from tlscale.training.run import stop_on_signals

    extra = [f"distributed.num_processes={nproc}"] if nproc else []
    job = _load(spec, (overrides or []) + extra)
    options = RunOptions(resume=resume, overwrite=overwrite, stop_after_steps=stop_after_steps, show_progress=progress)
    try:
        with stop_on_signals(options.stop):  # SIGTERM / Ctrl-C: checkpoint and stop; twice: at once
            result = run_training(job, options)
    except WorkerFailed as exc:  # includes a failed Ray run
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
        raise typer.Exit(1) from None
    if result is not None and not result.interrupted:
        from tlscale.tasks import build_task

        out.print(f"{build_task(job).headline(result.metrics['eval'])} -> {result.output_dir / 'metrics.json'}")


@app.command()
@user_errors
def fewshot(spec: SpecArg, overrides: Overrides = None,
            overwrite: Annotated[bool, typer.Option(help="Replace the results of an earlier fewshot run.")] = False,
            label: Annotated[Optional[Path], typer.Option(
                help="Instead of evaluating: label this file's texts with the method fitted on the first seed's "
                     "examples (a distillation teacher).")] = None,
            output: Annotated[Optional[Path], typer.Option(
                help="With --label: the soft labels, one JSON object per line (distill.teacher reads it).")] = None):
    """Few-shot and zero-shot baselines (no training): prompting or encoder probes over several seeds."""
    from tlscale.fewshot.runner import label_file, results_table, run_fewshot

    job = _load(spec, overrides)
    if label is not None or output is not None:
        from tlscale.errors import ConfigError
        from tlscale.run_folder import result_file

        if label is None or output is None:
            raise ConfigError("fewshot: --label FILE and --output FILE.jsonl go together")
        if output.resolve() == label.resolve():
            raise ConfigError(f"--output: '{output}' is the input file; refusing to overwrite your data")
        result_file(output, "--output")
        count = label_file(job, label, output, log=lambda line: err.print(line, highlight=False))
        out.print(f"{count} soft labels -> {output}")
        return
    metrics = run_fewshot(job, overwrite=overwrite, log=lambda line: err.print(line, highlight=False))
    Console(width=max(out.width, 100), highlight=False).print(results_table(metrics))
    out.print(f"-> {job.output_dir / 'metrics.json'}")


@app.command()
@user_errors
def ladder(spec: SpecArg, overrides: Overrides = None):
    """Methods x label budgets x seeds on one dataset (the spec's ladder section): one table, two pictures and
    the cheapest method near the best at each budget. Rerun to resume; finished cells are kept."""
    from tlscale.ladder import run_ladder
    from tlscale.ladder.report import rich_table

    import signal

    def interrupt(signum, frame):  # the cell running now gets SIGTERM (a training cell checkpoints); rerun resumes
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # (a background job starts with SIGINT ignored)
        signal.signal(signum, interrupt)
    job = _load(spec, overrides)
    result = run_ladder(job, log=lambda line: err.print(line, highlight=False, markup=False))
    Console(width=max(out.width, 120), highlight=False).print(rich_table(result["rows"], result["metric"]))
    out.print(escape(result["eval_line"]))
    out.print(escape(result["recommendation"]))
    folder = result["folder"]
    out.print(f"-> {folder / 'ladder.md'}, {folder / 'learning-curve.png'}, {folder / 'cost-quality.png'}")
    if result["failed"]:
        err.print(f"[bold red]error:[/] {result['failed']} cell(s) failed; their logs are named in "
                  f"{folder / 'ladder.md'}. Run the command again to retry them", markup=True)
        raise typer.Exit(1)


@app.command()
@user_errors
def compare(runs: Annotated[list[Path], typer.Argument(help="Run folders (or their metrics.json).",
                                                        show_default=False)],
            allow_mixed_eval: Annotated[bool, typer.Option(
                "--allow-mixed-eval", help="Show runs scored on different evaluation sets (flagged).")] = False,
            output: Annotated[Optional[Path], typer.Option(
                "--output", "-o", help="Also write compare.csv, compare.md and compare.png (bar chart) here.")] = None):
    """Trained, prompted and probed runs of one task side by side (scored on one evaluation set)."""
    from tlscale.inference.compare import compare_runs, rich_table, write_comparison

    comparison = compare_runs(runs, allow_mixed_eval)
    Console(width=max(out.width, 160), highlight=False).print(rich_table(comparison))
    if output is not None:
        from tlscale.run_folder import result_folder

        out.print("-> " + ", ".join(str(p) for p in write_comparison(comparison, result_folder(output, "--output"))))


@app.command("eval")
@user_errors
def eval_command(spec: SpecArg, overrides: Overrides = None,
                 checkpoint: Annotated[Path, typer.Option(help="A saved model folder (output_dir/model).")] = ...,
                 output_dir: Annotated[Optional[Path], typer.Option(help="Default: OUTPUT_DIR/eval")] = None):
    """Evaluate a saved model on the spec's evaluation data."""
    from tlscale.inference.evaluate import evaluate_checkpoint

    job = _load(spec, overrides)
    from tlscale.tasks import build_task

    result = evaluate_checkpoint(job, checkpoint, output_dir)
    out.print(f"{build_task(job).headline(result)} -> {result['output_dir']}")


@app.command()
@user_errors
def predict(checkpoint: Annotated[Path, typer.Option(help="A saved model folder.")],
            input: Annotated[Path, typer.Option("--input", help="csv/tsv/jsonl/json/parquet file.")],
            output: Annotated[Path, typer.Option("--output", help="Predictions, one JSON object per line.")],
            text_column: Annotated[Optional[str], typer.Option(help="Default: the training spec's.")] = None,
            text_pair_column: Annotated[Optional[str], typer.Option()] = None,
            batch_size: Annotated[int, typer.Option(min=1)] = 64):
    """Label and class probabilities for every row of a file (extractive QA: the answer to every question)."""
    from tlscale.inference.evaluate import predict_file

    count = predict_file(checkpoint, input, output, text_column=text_column, text_pair_column=text_pair_column,
                         batch_size=batch_size)
    out.print(f"{count} predictions -> {output}")


@app.command()
@user_errors
def generate(checkpoint: Annotated[Path, typer.Option(help="A saved causal LM (RUN/model) or its run folder.")],
             prompt: Annotated[Optional[list[str]], typer.Option(help="A prompt; repeat for several.")] = None,
             input: Annotated[Optional[Path], typer.Option("--input", help="A file with a 'prompt' column.")] = None,
             output: Annotated[Optional[Path], typer.Option("--output", help="Write prompt/completion jsonl.")] = None,
             chat: Annotated[bool, typer.Option(help="Wrap each prompt as a user turn with the chat template.")] = False,
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
             temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic).")] = 0.0,
             top_p: float = 1.0,
             seed: int = 0,
             stop: Annotated[Optional[list[str]], typer.Option(help="Cut at this text; repeatable.")] = None):
    """Completions from a fine-tuned causal LM, for a quick look."""
    from tlscale.errors import ConfigError
    from tlscale.models.generate import Sampling, chat_prompt, complete, load_causal_lm, read_prompts

    prompts = list(prompt or []) + (read_prompts(input) if input else [])
    if not prompts:
        raise ConfigError("generate: give --prompt TEXT (repeatable) or --input FILE")
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"generate: expected --max-new-tokens >= 1, --temperature >= 0 and 0 < --top-p <= 1; "
                          f"found {max_new_tokens}, {temperature}, {top_p}")
    if output is not None and input is not None and output.resolve() == input.resolve():
        raise ConfigError(f"--output: '{output}' is the input file; refusing to overwrite your data")
    if output is not None:
        from tlscale.run_folder import result_file

        result_file(output, "--output")
    model, tokenizer = load_causal_lm(checkpoint)
    shown = [chat_prompt(tokenizer, p) for p in prompts] if chat else prompts
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                        stop=list(stop or []))
    completions = complete(model, tokenizer, shown, sampling)
    if output is not None:
        from tlscale.files import write_jsonl_atomic

        write_jsonl_atomic(output, [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)])
        out.print(f"{len(completions)} completions -> {output}")
    else:
        from rich.markup import escape

        for p, c in zip(prompts, completions):  # the prompt dim, the model's words bold
            out.print(f"[dim]{escape(p)}[/][bold]{escape(c)}[/]", markup=True)


@app.command()
@user_errors
def export(adapter: Annotated[Path, typer.Argument(help="A LoRA/QLoRA adapter folder, or the run folder holding it.",
                                                   show_default=False)],
           output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the merged model.")],
           merge: Annotated[bool, typer.Option("--merge", help="Fold the adapter into the base weights.")] = False,
           dtype: Annotated[Optional[str], typer.Option(
               help="float32 | bfloat16 | float16 (default: the compute dtype).")] = None,
           evaluate: Annotated[bool, typer.Option(help="Compare adapter-on-base and merged on the eval data.")] = True):
    """Merge an adapter into its base (4-bit bases are dequantized first) and report the eval difference."""
    from tlscale.errors import ConfigError
    from tlscale.models.quantization import DTYPES
    from tlscale.inference.export import export_merged

    if not merge:
        raise ConfigError("export: nothing to do; pass --merge to write a merged model")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected one of {sorted(DTYPES)}, found '{dtype}'")
    if output.exists():
        raise ConfigError(f"--output: '{output}' exists; refusing to overwrite it")
    report = export_merged(adapter, output, dtype, evaluate)
    if evaluate:
        a, m, d = report["eval_adapter"], report["eval_merged"], report["difference"]
        keys = [k for k in a if k != "num_examples"]
        changes = [f"{d[k]:+.2e} {k}" for k in keys]
        if "predictions_changed" in d:
            changes.append(f"max |dp| {d['max_abs_probability']:.1e}, {d['predictions_changed']} of "
                           f"{d['num_examples']} predictions changed")
        out.print(f"adapter on base: {' '.join(f'{k} {a[k]:.4f}' for k in keys)}; merged ({report['dtype']}): "
                  f"{' '.join(f'{k} {m[k]:.4f}' for k in keys)}; difference {', '.join(changes)}")
    out.print(f"merged model -> {output}")


AddressOption = Annotated[Optional[str], typer.Option(
    "--address", help="Ray job server, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
    "http://127.0.0.1:8265).")]
ServerOption = Annotated[Optional[str], typer.Option(
    "--server", envvar="TLSCALE_SERVER", help="A tlscale job API (`tlscale serve`), e.g. http://HOST:8000, instead "
    "of a Ray cluster; the token comes from $TLSCALE_TOKEN or ~/.config/tlscale/token.")]


@app.command()
@user_errors
def submit(spec: SpecArg, overrides: Overrides = None, address: AddressOption = None,
           working_dir: Annotated[Optional[Path], typer.Option(help="Upload this folder as the job's working "
                                                                    "directory.")] = None,
           wait: Annotated[bool, typer.Option(help="Wait for the job to end; exit 1 if it failed.")] = False,
           server: ServerOption = None,
           fewshot: Annotated[bool, typer.Option("--fewshot", help="With --server: the job runs `tlscale fewshot` "
                                                 "on the spec instead of `tlscale train`.")] = False):
    """Submit SPEC as a Ray job (runner: ray) to a cluster's job server, or with --server to a tlscale job API
    (the data files the spec names are uploaded once, by content hash)."""
    if server:
        from tlscale.cli import remote

        return remote.submit(spec, overrides, server, wait, "fewshot" if fewshot else "train")
    if fewshot:
        from tlscale.errors import ConfigError

        raise ConfigError("--fewshot: only with --server (a tlscale job API); a Ray job runs `tlscale train`")
    from tlscale.runners import ray_jobs

    job = _load(spec, overrides)
    job_id = ray_jobs.submit(job, address, working_dir)
    out.print(f"submitted {job_id}\n  tlscale jobs status {job_id}\n  tlscale jobs logs {job_id} --follow")
    if wait:
        client = ray_jobs.job_client(address)
        status = ray_jobs.wait(client, job_id)
        out.print(f"{job_id}: {status}")
        if status != "SUCCEEDED":
            err.print(ray_jobs.failure_excerpt(client.get_job_logs(job_id)))
            raise typer.Exit(1)


jobs = typer.Typer(help="List, inspect, follow and stop Ray jobs (or, with --server, a job API's).",
                   no_args_is_help=True)
app.add_typer(jobs, name="jobs")
JobArg = Annotated[str, typer.Argument(help="Submission id (from `tlscale submit` or `tlscale jobs list`).",
                                       show_default=False)]


@jobs.command("list")
@user_errors
def jobs_list(address: AddressOption = None, server: ServerOption = None):
    """Jobs on the cluster, newest first."""
    if server:
        from tlscale.cli import remote

        return remote.jobs_list(server)
    from rich.table import Table

    from tlscale.runners import ray_jobs

    table = Table("job", "status", "started", "entrypoint", title_justify="left")
    rows = sorted(ray_jobs.job_client(address).list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    for job in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else ""
        table.add_row(job.submission_id or job.job_id or "", str(job.status.value), started, job.entrypoint)
    Console(width=max(out.width, 120), highlight=False).print(table)


@jobs.command("status")
@user_errors
def jobs_status(job_id: JobArg, address: AddressOption = None, server: ServerOption = None):
    """Status of a job; for a failed one, its error and the end of its log."""
    if server:
        from tlscale.cli import remote

        return remote.jobs_status(job_id, server)
    from tlscale.runners import ray_jobs

    client = ray_jobs.job_client(address)
    info = ray_jobs.job_info(client, job_id)
    status = str(info.status.value)
    out.print(f"{job_id}: {status}" + (f" ({info.message})" if info.message else ""))
    if status == "FAILED":
        out.print(ray_jobs.failure_excerpt(client.get_job_logs(job_id)))
        raise typer.Exit(1)


@jobs.command("logs")
@user_errors
def jobs_logs(job_id: JobArg, address: AddressOption = None,
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
              server: ServerOption = None):
    """A job's driver log (what its entrypoint printed); with --server, its events."""
    if server:
        from tlscale.cli import remote

        return remote.jobs_logs(job_id, server, follow)
    from tlscale.runners import ray_jobs

    client = ray_jobs.job_client(address)
    ray_jobs.job_info(client, job_id)
    if follow:
        ray_jobs.follow_logs(client, job_id, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    else:
        sys.stdout.write(client.get_job_logs(job_id))


@jobs.command("cancel")
def jobs_cancel(job_id: JobArg, address: AddressOption = None, server: ServerOption = None):
    """Cancel a job (the same as stop)."""
    jobs_stop(job_id, address, server)


@jobs.command("stop")
@user_errors
def jobs_stop(job_id: JobArg, address: AddressOption = None, server: ServerOption = None):
    """Ask a job to stop (its workers get SIGTERM, then are killed); with --server, cancel it."""
    if server:
        from tlscale.cli import remote

        return remote.jobs_cancel(job_id, server)
    from tlscale.runners import ray_jobs

    client = ray_jobs.job_client(address)
    ray_jobs.job_info(client, job_id)
    stopped = client.stop_job(job_id)
    out.print(f"{job_id}: {'stop requested' if stopped else 'already ended'}")


def main() -> None:
    app()


@app.command()
@user_errors
def plan(spec: SpecArg, overrides: Overrides = None,
         gpu_memory: Annotated[str, typer.Option(help="Memory of one device, e.g. 80GiB.")] = "80GiB",
         gpus: Annotated[Optional[int], typer.Option(
             min=1, help="Devices (default: distributed.num_processes).")] = None):
    """Estimate per-device memory for each ZeRO stage / offload choice and recommend one."""
    from rich.table import Table

    from tlscale.distributed.planner import GIB, frozen_weight_bits, model_size, parse_bytes, recommend
    from tlscale.distributed.planner import plan as make_plan

    job = _load(spec, overrides)
    device_bytes = parse_bytes(gpu_memory)
    n = gpus or job.distributed.num_processes
    size = model_size(job)
    micro = max(1, job.training.batch_size // n)
    bits = frozen_weight_bits(job.strategy)
    estimates = make_plan(size, n, micro, job.model.max_length, job.training.mixed_precision != "no", bits)
    base = f", frozen Linear weights at {bits:.2f} bits" if bits < 16 else ""
    table = Table(title=f"{job.model.name_or_path}: {size.total / 1e6:,.1f}M parameters "
                        f"({size.trainable / 1e6:,.2f}M trainable, strategy {job.strategy.name}{base}), {n} device(s), "
                        f"micro-batch {micro} x {job.model.max_length} tokens", title_justify="left")
    for column in ("option (GiB per device)", "params", "grads", "optim", "activ", "total", "host/proc", "fits"):
        table.add_column(column, justify="left" if column.startswith("option") else "right", no_wrap=True)
    for e in estimates:
        table.add_row(e.option.name, *(f"{v / GIB:.3f}" for v in (e.params, e.grads, e.optimizer, e.activations,
                                                                   e.device_total, e.cpu)),
                      "yes" if e.device_total <= device_bytes else "no")
    Console(width=max(out.width, 110), highlight=False).print(table)
    best = recommend(estimates, device_bytes)
    if best is None:
        out.print(f"Nothing fits in {gpu_memory} per device: add devices, lower training.batch_size or model.max_length.")
    else:
        out.print(f"Recommended: {best.option.name} ({best.device_total / GIB:.2f} GiB of {gpu_memory} per device)")
