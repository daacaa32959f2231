"""The emulator's persistence under a kill, which the soak relies on (it SIGKILLs the emulator
once and starts it again on the same ``--data-dir``): whatever the emulator answered or acted
upon is on disk at that moment, and a paid remove-bg run is never on record without its job or
the other way round."""

from __future__ import annotations

import json

import requests

from imagekit_emulator.store import COMPACT_EVERY, JOURNAL_NAME, Store
from imagekit_emulator.testing import running_emulator, sample_image


def _upload(ik, name: str) -> dict:
    answer = requests.post(
        f"{ik.url}/api/v1/files/upload",
        auth=ik.auth,
        files={"file": (name, sample_image())},
        data={
            "fileName": name,
            "useUniqueFileName": "false",
            "extensions": json.dumps([{"name": "remove-bg", "options": {}}]),
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_what_was_answered_survives_a_kill(tmp_path):
    with running_emulator(data_dir=str(tmp_path), faults={"lost_rate": 1.0}) as ik:
        uploaded = _upload(ik, "kept.jpg")
        assert ik.wait_idle(20)
        # A kill: the next process reads the files as they are now, without a clean stop.
        killed = Store(tmp_path)
    assert uploaded["fileId"] in killed.files
    assert [r["fileId"] for r in killed.runs] == [uploaded["fileId"]]
    job = next(iter(killed.jobs.values()))
    assert job.status == "success" and job.result_version_id
    assert killed.uploads_by_name == {"kept.jpg": 1}


def test_a_job_and_its_paid_run_are_one_journal_line(tmp_path):
    with running_emulator(data_dir=str(tmp_path), faults={"lost_rate": 1.0}) as ik:
        uploaded = _upload(ik, "run.jpg")
        assert ik.wait_idle(20)
        lines = [json.loads(line) for line in (tmp_path / JOURNAL_NAME).read_text().splitlines()]
    together = [e for e in lines if "run" in e]
    assert len(together) == 1 and together[0]["job"]["file_id"] == uploaded["fileId"]


def test_a_line_cut_short_by_a_kill_is_ignored_and_replays_are_idempotent(tmp_path):
    with running_emulator(data_dir=str(tmp_path), faults={"lost_rate": 1.0}) as ik:
        _upload(ik, "a.jpg")
        assert ik.wait_idle(20)
    journal = tmp_path / JOURNAL_NAME
    store = Store(tmp_path)  # folds the journal into the index
    assert journal.read_text() == ""
    before = (len(store.files), len(store.runs), len(store.jobs))
    store.close()
    # The index has it all; the same records once more, then half a line, as a kill mid-write
    # during compaction would leave them.
    index = json.loads((tmp_path / "index.json").read_text())
    run = index["runs"][0]
    job = index["jobs"][0]
    journal.write_text(json.dumps({"job": job, "run": run}) + "\n" + '{"file": {"id"')
    again = Store(tmp_path)
    assert (len(again.files), len(again.runs), len(again.jobs)) == before
    assert COMPACT_EVERY > 1000  # a compaction is rare: each write costs what changed
