"""The client commands of `auditq`, against the real API served over loopback HTTP.

The API runs under uvicorn in a thread of its own; the commands run in process
(Typer's CliRunner, in a worker thread so that the test's event loop stays free)
and reach it through their own httpx client. The `--wait` tests also run a real
arq worker, on the test's loop, whose model is the simulator.
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from arq import Worker
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from api.streams import StreamSlots, TooManyStreams
from cli import progress
from cli.api_client import problem_of
from cli.batch_file import MAX_BATCH_AUDITS
from cli.main import app
from shared.batches import results
from shared.config import Settings
from tests.api.test_result_streams import fail_after
from tests.cli.conftest import Auditq
from tests.factories import audit_request
from tests.fixtures.serving import STARTUP_TIMEOUT_S, serving
from tests.fixtures.simulator import SimulatorHandle
from worker.runner import RedisTolerantWorker
from worker.settings import worker_options

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUBRIC_FILE = EXAMPLES / "rubrics" / "green-claims.json"
POLL = "0.05"


@pytest.fixture
async def worker(settings: Settings, sim: SimulatorHandle) -> AsyncIterator[Worker]:
    """The Procfile's worker on the test's queue, polling until the test ends."""
    model = {"openai_base_url": sim.base_url, "openai_timeout_s": 5.0}
    options = worker_options(settings.model_copy(update=model))
    worker = RedisTolerantWorker(
        **{**options, "burst": False, "poll_delay": 0.05, "handle_signals": False}
    )
    task = asyncio.create_task(worker.main())
    try:
        # Its start-up configures logging: done before a command swaps sys.stdout.
        await asyncio.wait_for(_started(worker, task), STARTUP_TIMEOUT_S)
        yield worker
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        with warnings.catch_warnings():
            # arq closes its pool with redis-py's deprecated `close()`.
            warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
            await worker.close()


async def _started(worker: Worker, task: "asyncio.Task[None]") -> None:
    while "engine" not in worker.ctx:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)


async def audit_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.text("SELECT count(*) FROM audit")) or 0)


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    """One line per item: a dict as JSON, a string as it is (for malformed lines)."""
    text = [item if isinstance(item, str) else json.dumps(item) for item in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def audits_file(path: Path, count: int) -> Path:
    return write_jsonl(path, [audit_request(subject=f"Page {n}") for n in range(1, count + 1)])


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


async def submitted_batch(auditq: Auditq, tmp_path: Path, count: int) -> str:
    """The id of a batch of `count` audits (`Page 1`…) submitted with `auditq batch submit`."""
    path = audits_file(tmp_path / "audits.jsonl", count)
    batch: str = parsed(await auditq("batch", "submit", path, "--json"))["batches"][0]["id"]
    return batch


# rubric push


async def test_rubric_push_publishes_version_1_then_2(auditq: Auditq) -> None:
    first = parsed(await auditq("rubric", "push", RUBRIC_FILE, "--json"))
    second = await auditq("rubric", "push", RUBRIC_FILE)

    assert (first["name"], first["version"]) == ("green-claims", 1)
    assert len(first["criteria"]) == 5
    assert second.exit_code == 0, second.stderr
    assert "green-claims version 2" in second.stdout


async def test_rubric_push_of_an_invalid_rubric_shows_the_problem(
    auditq: Auditq, tmp_path: Path
) -> None:
    rubric = tmp_path / "rubric.json"
    rubric.write_text(json.dumps({"name": "Not A Slug", "criteria": []}))

    result = await auditq("rubric", "push", rubric)

    assert result.exit_code == 2
    assert "validation_error: body.name" in result.stderr
    assert "body.criteria:" in result.stderr


# submit and audit get


async def test_submit_with_criteria_sends_the_file_and_audit_get_reads_it_back(
    auditq: Auditq,
) -> None:
    page = EXAMPLES / "product-page.txt"
    criteria = json.loads((EXAMPLES / "criteria.json").read_text())

    submitted = parsed(
        await auditq("submit", page, "--criteria", EXAMPLES / "criteria.json", "--json")
    )
    fetched = parsed(await auditq("audit", "get", submitted["id"], "--json"))
    shown = await auditq("audit", "get", submitted["id"])

    assert submitted["status"] == "queued"
    assert submitted["subject"] == "product-page.txt"
    assert [c["id"] for c in submitted["criteria"]] == [c["id"] for c in criteria]
    assert fetched["content"] == page.read_text(encoding="utf-8")
    assert shown.exit_code == 0
    assert submitted["id"] in shown.stdout
    assert "queued" in shown.stdout


async def test_submit_with_a_rubric_uses_the_version_asked_for(
    auditq: Auditq, tmp_path: Path
) -> None:
    parsed(await auditq("rubric", "push", RUBRIC_FILE, "--json"))
    parsed(await auditq("rubric", "push", RUBRIC_FILE, "--json"))
    page = tmp_path / "claim.txt"
    page.write_text("Our sneakers are climate neutral.", encoding="utf-8")

    audit = parsed(
        await auditq(
            "submit", page, "--rubric", "green-claims", "--rubric-version", "1",
            "--subject", "Sneakers", "--json",
        )
    )  # fmt: skip

    assert (audit["rubric"], audit["rubric_version"]) == ("green-claims", 1)
    assert audit["subject"] == "Sneakers"


async def test_submit_passes_priority_and_samples_on(auditq: Auditq) -> None:
    criteria = ("--criteria", EXAMPLES / "criteria.json")
    page = EXAMPLES / "product-page.txt"

    audit = parsed(
        await auditq("submit", page, *criteria, "--priority", "bulk", "--samples", "3", "--json")
    )
    refused = await auditq("submit", page, *criteria, "--samples", "6")

    assert (audit["priority"], audit["samples"]) == ("bulk", 3)
    assert refused.exit_code == 2
    assert "samples" in refused.stdout + refused.stderr


@pytest.mark.parametrize(
    "options", [(), ("--criteria", EXAMPLES / "criteria.json", "--rubric", "green-claims")]
)
async def test_submit_needs_exactly_one_of_criteria_or_rubric(
    auditq: Auditq, engine: AsyncEngine, options: tuple[str | Path, ...]
) -> None:
    result = await auditq("submit", EXAMPLES / "product-page.txt", *options)

    assert result.exit_code == 2
    assert "--criteria" in result.stderr
    assert await audit_count(engine) == 0


async def test_submit_of_an_unknown_rubric_is_the_api_problem(auditq: Auditq) -> None:
    result = await auditq("submit", EXAMPLES / "product-page.txt", "--rubric", "no-such-rubric")

    assert result.exit_code == 2
    assert "rubric_not_found: " in result.stderr
    assert "auditq rubric push" in result.stderr


# batch submit


async def test_batch_submit_splits_a_file_over_1000_lines_and_a_rerun_replays(
    auditq: Auditq, engine: AsyncEngine, tmp_path: Path
) -> None:
    big = audits_file(tmp_path / "big.jsonl", MAX_BATCH_AUDITS + 1)

    first = await auditq("batch", "submit", big, "--json")
    again = await auditq("batch", "submit", big, "--json")

    batches = parsed(first)["batches"]
    assert [batch["counts"]["total"] for batch in batches] == [1000, 1]
    assert "batch 1/2 (lines 1-1000): 1000 audits accepted" in first.stderr
    assert "batch 2/2 (lines 1001-1001): 1 audits accepted" in first.stderr
    assert [batch["id"] for batch in parsed(again)["batches"]] == [b["id"] for b in batches]
    assert again.stderr.count("already submitted") == 2
    assert await audit_count(engine) == MAX_BATCH_AUDITS + 1


async def test_rerunning_batch_submit_creates_nothing_new(
    auditq: Auditq, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = audits_file(tmp_path / "audits.jsonl", 3)
    first = parsed(await auditq("batch", "submit", path, "--json"))
    # The same requests, spelled differently, are the same batch.
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("\n\n".join(json.dumps(line, indent=None, sort_keys=True) for line in lines))

    again = await auditq("batch", "submit", path)

    assert again.exit_code == 0, again.stderr
    assert first["batches"][0]["id"] in again.stdout
    assert "already submitted" in again.stderr
    assert await audit_count(engine) == 3


async def test_a_new_name_submits_the_same_file_again(
    auditq: Auditq, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = audits_file(tmp_path / "audits.jsonl", 2)

    monday = parsed(await auditq("batch", "submit", path, "--name", "monday", "--json"))
    tuesday = parsed(await auditq("batch", "submit", path, "--name", "tuesday", "--json"))

    assert monday["batches"][0]["id"] != tuesday["batches"][0]["id"]
    assert tuesday["batches"][0]["name"] == "tuesday"
    assert await audit_count(engine) == 4


async def test_a_malformed_line_is_named_and_nothing_is_submitted(
    auditq: Auditq, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "audits.jsonl",
        [audit_request(), "", '{"subject": "cut short', "[1, 2]", audit_request()],
    )

    result = await auditq("batch", "submit", path)

    assert result.exit_code == 2
    assert "2 malformed line(s); nothing was submitted" in result.stderr
    assert "line 3: not valid JSON" in result.stderr
    assert "line 4: expected a JSON object (one audit request), got an array" in result.stderr
    assert await audit_count(engine) == 0


async def test_a_line_the_api_refuses_is_named_by_its_line_in_the_file(
    auditq: Auditq, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "audits.jsonl", [audit_request(), "", audit_request(content="")])

    result = await auditq("batch", "submit", path)

    assert result.exit_code == 2
    assert "batch 1/1 (lines 1-3) was not submitted: validation_error: " in result.stderr
    assert "line 3: content: String should have at least 1 character" in result.stderr
    assert await audit_count(engine) == 0


async def test_rubric_fills_the_lines_that_name_no_criteria(
    auditq: Auditq, engine: AsyncEngine, tmp_path: Path
) -> None:
    parsed(await auditq("rubric", "push", RUBRIC_FILE, "--json"))
    path = write_jsonl(
        tmp_path / "audits.jsonl", [audit_request(criteria=None), audit_request(subject="Inline")]
    )

    parsed(await auditq("batch", "submit", path, "--rubric", "green-claims", "--json"))

    async with engine.connect() as connection:
        rows = await connection.execute(sa.text("SELECT subject, rubric_name FROM audit"))
        rubrics: dict[str, str | None] = dict(rows.all())
    assert rubrics == {"Product page: bamboo toothbrush": "green-claims", "Inline": None}


# batch status and results


async def test_batch_results_resumes_a_stream_the_api_cut_short(
    auditq: Auditq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await submitted_batch(auditq, tmp_path, 250)
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(results, "results_after", fail_after(calls=1))  # cut after 200

    done = await auditq("batch", "results", batch_id, "-o", out)

    assert done.exit_code == 0, done.stderr
    assert "250 audit result(s) written to" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["subject"] for line in lines] == [f"Page {n}" for n in range(1, 251)]


def refusing(times: int) -> Any:
    """`StreamSlots.take`, refusing its first `times` calls as a process serving its
    `MAX_RESULT_STREAMS` streams does (429 `too_many_streams`, Retry-After 1 s)."""
    real = StreamSlots.take
    made = 0

    def take(slots: StreamSlots) -> None:
        nonlocal made
        made += 1
        if made <= times:
            raise TooManyStreams("All result streams are taken.", headers={"Retry-After": "1"})
        real(slots)

    return take


async def test_batch_results_waits_its_turn_while_the_api_serves_its_streams(
    auditq: Auditq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await submitted_batch(auditq, tmp_path, 3)
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(StreamSlots, "take", refusing(times=2))

    done = await auditq("batch", "results", batch_id, "-o", out)

    assert done.exit_code == 0, done.stderr
    assert done.stderr.count("too_many_streams") == 1  # said once, not at every refusal
    assert "3 audit result(s) written to" in done.stderr
    assert len(out.read_text().splitlines()) == 3


async def test_batch_results_gives_up_its_turn_after_stream_turn_s(
    auditq: Auditq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await submitted_batch(auditq, tmp_path, 3)
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(StreamSlots, "take", refusing(times=100))
    monkeypatch.setattr(progress, "STREAM_TURN_S", 0.5)

    done = await auditq("batch", "results", batch_id, "-o", out)

    assert done.exit_code == 2
    assert "waiting for a turn, up to 0s" in done.stderr  # it waited, then gave up
    assert "too_many_streams" in done.stderr
    assert not out.exists()


def test_a_problem_keeps_the_retry_after_it_came_with() -> None:
    body = {"code": "too_many_streams", "detail": "All result streams are taken."}

    told = problem_of(httpx.Response(429, json=body, headers={"retry-after": "3"}))
    untold = problem_of(httpx.Response(429, json=body))

    assert (told.retry_after_s, untold.retry_after_s) == (3.0, None)


async def test_batch_status_and_results(auditq: Auditq, tmp_path: Path) -> None:
    batch_id = await submitted_batch(auditq, tmp_path, 3)
    out = tmp_path / "out.jsonl"

    status = parsed(await auditq("batch", "status", batch_id, "--json"))["batches"][0]
    table = await auditq("batch", "status", batch_id)
    to_file = await auditq("batch", "results", batch_id, "-o", out)
    to_stdout = await auditq("batch", "results", batch_id)

    assert status["status"] == "running"
    assert (status["counts"]["queued"], status["counts"]["total"]) == (3, 3)
    assert table.exit_code == 0
    assert batch_id in table.stdout
    assert to_file.exit_code == 0, to_file.stderr
    assert to_file.stdout == ""
    assert "3 audit result(s) written to" in to_file.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["subject"] for line in lines] == ["Page 1", "Page 2", "Page 3"]
    assert {line["status"] for line in lines} == {"queued"}
    assert to_stdout.stdout == out.read_text()


async def test_unknown_batch_and_audit_are_api_problems(auditq: Auditq, tmp_path: Path) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    out = tmp_path / "out.jsonl"

    status = await auditq("batch", "status", unknown)
    results = await auditq("batch", "results", unknown, "-o", out)
    audit = await auditq("audit", "get", unknown)

    assert status.exit_code == results.exit_code == audit.exit_code == 2
    assert f"batch_not_found: No batch has id {unknown}." in status.stderr
    assert "batch_not_found" in results.stderr
    assert not out.exists()
    assert "audit_not_found" in audit.stderr


async def test_an_unreachable_api_is_a_clear_error(auditq: Auditq) -> None:
    closed = _closed_port_url()

    result = await auditq(
        "batch", "status", "00000000-0000-4000-8000-000000000000", "--api-url", closed
    )

    assert result.exit_code == 2
    assert f"cannot reach the auditq API at {closed} — is `make run` running?" in result.stderr


def test_the_installed_command_reads_the_api_url_from_the_environment(tmp_path: Path) -> None:
    closed = _closed_port_url()
    command = Path(sys.executable).with_name("auditq")

    done = subprocess.run(
        [command, "rubric", "push", RUBRIC_FILE],
        env={**os.environ, "AUDITQ_API_URL": closed},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert f"cannot reach the auditq API at {closed}" in done.stderr
    assert done.stdout == ""


def test_the_api_key_comes_from_the_environment(settings: Settings) -> None:
    runner = CliRunner()
    with serving(settings.model_copy(update={"api_keys": ["k-123"]})) as url:
        args = ["rubric", "push", str(RUBRIC_FILE), "--api-url", url]
        refused = runner.invoke(app, args)
        accepted = runner.invoke(app, args, env={"AUDITQ_API_KEY": "k-123"})

    assert refused.exit_code == 2
    assert "unauthorized: " in refused.stderr
    assert "set AUDITQ_API_KEY" in refused.stderr
    assert accepted.exit_code == 0, accepted.stderr


def _closed_port_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --wait, with a worker


async def test_submit_wait_shows_the_result(auditq: Auditq, worker: Worker) -> None:
    result = await auditq(
        "submit", EXAMPLES / "product-page.txt", "--criteria", EXAMPLES / "criteria.json",
        "--wait", "--poll-interval", POLL,
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert "succeeded" in result.stdout
    assert "Findings" in result.stdout
    assert "material_composition" in result.stdout


async def test_a_waited_batch_ends_with_a_summary_and_exit_0(
    auditq: Auditq, worker: Worker, tmp_path: Path
) -> None:
    path = audits_file(tmp_path / "audits.jsonl", 3)
    out = tmp_path / "out.jsonl"

    result = await auditq("batch", "submit", path, "--wait", "--poll-interval", POLL)

    assert result.exit_code == 0, result.stderr
    assert "Finished" in result.stdout
    assert "completed" in result.stdout
    accepted = re.search(r"accepted as (\S+)", result.stderr)
    assert accepted, result.stderr
    batch_id = accepted.group(1)
    assert (await auditq("batch", "results", batch_id, "-o", out)).exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["succeeded"] * 3
    assert all(line["result"]["findings"] for line in lines)


async def test_a_batch_with_a_failed_audit_exits_1(
    auditq: Auditq, worker: Worker, sim: SimulatorHandle, tmp_path: Path
) -> None:
    sim.script(["refusal"])
    path = audits_file(tmp_path / "audits.jsonl", 3)

    result = await auditq("batch", "submit", path, "--wait", "--poll-interval", POLL, "--json")

    assert result.exit_code == 1, result.stderr
    [batch] = json.loads(result.stdout)["batches"]
    assert batch["status"] == "completed"
    assert (batch["counts"]["succeeded"], batch["counts"]["failed"]) == (2, 1)
    status = await auditq("batch", "status", batch["id"])
    assert status.exit_code == 1
    assert "model_refused" in status.stdout


async def test_submit_wait_of_a_failed_audit_exits_1(
    auditq: Auditq, worker: Worker, sim: SimulatorHandle
) -> None:
    sim.script(["refusal"])

    result = await auditq(
        "submit", EXAMPLES / "product-page.txt", "--criteria", EXAMPLES / "criteria.json",
        "--wait", "--poll-interval", POLL, "--json",
    )  # fmt: skip

    assert result.exit_code == 1
    audit = json.loads(result.stdout)
    assert audit["status"] == "failed"
    assert audit["error"]["code"]


async def test_fail_on_verdict_gates_on_the_verdict(auditq: Auditq, worker: Worker) -> None:
    result = await auditq(
        "submit", EXAMPLES / "product-page.txt", "--criteria", EXAMPLES / "criteria.json",
        "--wait", "--fail-on-verdict", "--poll-interval", POLL, "--json",
    )  # fmt: skip

    audit = json.loads(result.stdout)
    assert audit["status"] == "succeeded"
    assert result.exit_code == (3 if audit["result"]["verdict"] == "fail" else 0)


async def test_fail_on_verdict_needs_wait(auditq: Auditq) -> None:
    result = await auditq(
        "submit", EXAMPLES / "product-page.txt", "--criteria", EXAMPLES / "criteria.json",
        "--fail-on-verdict",
    )  # fmt: skip

    assert result.exit_code == 2
    assert "needs --wait" in result.stderr


# recovering: batch retry and cancel, audit list, cancel and retry


async def test_a_batchs_failures_are_retried_in_one_command(
    auditq: Auditq, worker: Worker, sim: SimulatorHandle, tmp_path: Path
) -> None:
    sim.script(["refusal", "refusal"])
    path = audits_file(tmp_path / "audits.jsonl", 3)
    [batch] = json.loads(
        (await auditq("batch", "submit", path, "--wait", "--poll-interval", POLL, "--json")).stdout
    )["batches"]
    failed = parsed(await auditq("audit", "list", "--status", "failed", "--json"))["items"]
    assert {audit["batch_id"] for audit in failed} == {batch["id"]}
    assert len(failed) == 2

    retried = parsed(await auditq("batch", "retry", batch["id"], "--json"))
    waited = await auditq("batch", "submit", path, "--wait", "--poll-interval", POLL)

    assert retried["requeued"] == {"failed": 2, "cancelled": 0}
    assert waited.exit_code == 0, waited.stderr  # the same batch, replayed, now all succeeded
    assert "already submitted" in waited.stderr


async def test_audit_cancel_then_retry(auditq: Auditq, tmp_path: Path) -> None:
    submitted = await auditq(
        "submit", EXAMPLES / "product-page.txt", "--criteria", EXAMPLES / "criteria.json", "--json"
    )
    audit_id = parsed(submitted)["id"]

    cancelled = parsed(await auditq("audit", "cancel", audit_id, "--json"))
    retried = parsed(await auditq("audit", "retry", audit_id, "--json"))
    again = await auditq("audit", "retry", audit_id)
    listed = await auditq("audit", "list", "--limit", "5")

    assert (cancelled["status"], retried["status"]) == ("cancelled", "queued")
    assert again.exit_code == 2
    assert "audit_not_retryable" in again.stderr
    assert audit_id in listed.stdout


async def test_audit_rerun_queues_a_new_audit_of_the_same_inputs(auditq: Auditq) -> None:
    submitted = await auditq(
        "submit", EXAMPLES / "product-page.txt", "--criteria", EXAMPLES / "criteria.json", "--json"
    )
    original = parsed(submitted)

    rerun = parsed(await auditq("audit", "rerun", original["id"], "--json"))

    assert (rerun["status"], rerun["rerun_of"]) == ("queued", original["id"])
    assert rerun["criteria"] == original["criteria"]


async def test_batch_rerun_queues_a_new_batch_of_the_same_audits(
    auditq: Auditq, tmp_path: Path
) -> None:
    path = audits_file(tmp_path / "audits.jsonl", 2)
    [batch] = parsed(await auditq("batch", "submit", path, "--json"))["batches"]

    [rerun] = parsed(await auditq("batch", "rerun", batch["id"], "--json"))["batches"]
    shown = await auditq("batch", "rerun", batch["id"])

    assert (rerun["rerun_of"], rerun["counts"]["queued"]) == (batch["id"], 2)
    assert rerun["id"] != batch["id"]
    assert shown.exit_code == 0
    assert "Rerun" in shown.stdout


async def test_batch_cancel_cancels_what_has_not_ended(auditq: Auditq, tmp_path: Path) -> None:
    path = audits_file(tmp_path / "audits.jsonl", 2)
    [batch] = parsed(await auditq("batch", "submit", path, "--json"))["batches"]

    cancelled = parsed(await auditq("batch", "cancel", batch["id"], "--json"))["batches"][0]
    retried = parsed(await auditq("batch", "retry", batch["id"], "--include-cancelled", "--json"))

    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"]["cancelled"] == 2
    assert retried["requeued"] == {"failed": 0, "cancelled": 2}
    assert retried["batch"]["status"] == "running"
