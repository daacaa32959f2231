"""The end of a run, checked against the emulator's ground truth (``GET /_emulator/state``).

``verify(snapshot, state, plan)`` is pure: the database's view (``snapshot``, plain data), the
emulator's (``state``) and what the run did (``plan``) in; a list of checks out, each with its
name, whether it held, a one-line account, and its violations (sentences naming jobs, files and
callbacks). ``bench/test_soak.py`` breaks a hand-made good run in each way it can go wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import DOCUMENTED_FAILURES

FINAL = ("succeeded", "failed", "superseded", "cancelled")
UNFINISHED = ("queued", "submitting", "waiting", "pending", "received")
#: The job's mark in its upload's name: ``<stem>__ikbg<id>-<random><ext>``.
_UPLOAD_MARK = re.compile(r"__ikbg(\d+)[-.]")

#: What each check promises (the table's first column).
CHECKS = {
    "final": "every job final",
    "results": "every object's result = what ImageKit holds",
    "paid_once": "each (image, options) paid at most once unless forced",
    "storage": "no file in storage that no job owns",
    "originals": "originals byte-identical",
    "stuck": "no job stuck, no task lost",
    "callbacks": "every callback answered 200 or deliberately refused",
    "outcomes": "every job agrees with what ImageKit did",
}


@dataclass
class Check:
    key: str
    detail: str = ""
    violations: list[str] = field(default_factory=list)
    #: outcomes that are not violations but a known, documented limitation or finding
    known: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": CHECKS.get(self.key, self.key),
            "ok": self.ok,
            "detail": self.detail,
            "violations": list(self.violations),
            "known": list(self.known),
        }


def options_key(options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(options or {}), sort_keys=True, separators=(",", ":"))


class Index:
    """The two views, cross-referenced."""

    def __init__(self, snapshot: Mapping[str, Any], state: Mapping[str, Any]):
        self.jobs = {j["id"]: j for j in snapshot["jobs"]}
        self.files = {f["fileId"]: f for f in state["files"]}
        self.versions = {v["id"]: (f, v) for f in state["files"] for v in f["versions"]}
        self.emu_jobs_by_file: dict[str, list[dict]] = defaultdict(list)
        for job in state["jobs"]:
            self.emu_jobs_by_file[job["fileId"]].append(job)
        self.emu_job_by_result_version = {
            j["resultVersionId"]: j for j in state["jobs"] if j.get("resultVersionId")
        }
        self.callbacks_by_job = {c["jobId"]: c for c in state["callbacks"]}
        #: the DB jobs that made their own upload, by ImageKit fileId
        self.owners: dict[str, list[dict]] = defaultdict(list)
        for job in snapshot["jobs"]:
            if job["file_id"] and not job["duplicate_of_id"]:
                self.owners[job["file_id"]].append(job)
        self.deleted = {str(p) for p in snapshot.get("deleted", [])}

    def owner(self, file_id: str) -> dict | None:
        found = self.owners.get(file_id) or []
        return found[0] if found else None

    def emulator_job(self, job: Mapping[str, Any]) -> dict | None:
        found = self.emu_jobs_by_file.get(job["file_id"]) or []
        return found[-1] if found else None

    def callback_reached_app(self, emulator_job: Mapping[str, Any] | None) -> bool:
        callback = self.callbacks_by_job.get(emulator_job["id"]) if emulator_job else None
        return bool(callback and callback["deliveries"])

    def source_job(self, job: Mapping[str, Any]) -> dict | None:
        return self.jobs.get(job["duplicate_of_id"]) if job["duplicate_of_id"] else job


# ------------------------------------------------------------------------------------- checks


def check_final(snapshot, index: Index) -> Check:
    c = Check("final")
    statuses = Counter(j["status"] for j in snapshot["jobs"])
    for job in snapshot["jobs"]:
        if job["status"] not in FINAL:
            c.violations.append(
                f"job #{job['id']} (product {job['object_id']}) is still {job['status']}"
            )
        elif job["status"] == "cancelled" and job["object_id"] not in index.deleted:
            c.violations.append(f"job #{job['id']} was cancelled, but its product was not deleted")
    c.detail = f"{len(snapshot['jobs'])} jobs: " + ", ".join(
        f"{s} {statuses[s]}" for s in (*FINAL, *UNFINISHED) if statuses[s]
    )
    return c


def check_stuck(snapshot) -> Check:
    c = Check("stuck")
    tasks = snapshot["tasks"]
    if snapshot.get("open_tasks"):
        c.violations.append(f"{snapshot['open_tasks']} task(s) still queued or running")
    for task in tasks.get("failed", []):
        c.violations.append(
            f"task {task['task']}{tuple(task['args'] or ())} raised {task['exception']}: "
            f"{task['traceback'][0]}"
        )
    taken_back = snapshot.get("taken_back", 0)
    longest = max((j["took"] for j in snapshot["jobs"] if j.get("took") is not None), default=0)
    c.detail = (
        f"0 unfinished at the end; {tasks.get('abandoned', 0)} task(s) died with a killed "
        f"worker, {taken_back} job(s) taken back by reconcile; longest job {longest:.0f} s"
    )
    if tasks.get("stalled"):
        c.known.append(
            f"{tasks['stalled']} deferred task(s) stalled: the worker holding RQ's scheduler lock "
            "was killed, and rq hands the lock on only at a worker's maintenance (every 10 "
            "minutes); reconcile did their work"
        )
    return c


def check_originals(snapshot) -> Check:
    c = Check("originals")
    for name, digests in sorted(snapshot["originals"].items()):
        if digests["actual"] is None:
            c.violations.append(f"original {name} is missing from storage")
        elif digests["actual"] != digests["expected"]:
            c.violations.append(f"original {name} was modified")
    c.detail = f"{len(snapshot['originals'])} originals saved, all unchanged" if c.ok else ""
    return c


def _left_by_a_cut_off_upload(name: str, uploads: list[str]) -> bool:
    """Whether ``name`` is the file of an upload whose request a killed server cut off: Django
    stores it under the uploaded name, or that name with ``_<7 characters>`` when taken."""
    stem, ext = os.path.splitext(os.path.basename(name))
    for upload in uploads:
        upload_stem, upload_ext = os.path.splitext(upload)
        if ext == upload_ext and (
            stem == upload_stem or re.fullmatch(rf"{re.escape(upload_stem)}_[A-Za-z0-9]{{7}}", stem)
        ):
            return True
    return False


def check_storage(snapshot) -> Check:
    c = Check("storage")
    cut_off = 0
    for name in snapshot["stray_files"]:
        if _left_by_a_cut_off_upload(name, snapshot.get("cut_off_uploads", [])):
            cut_off += 1
        else:
            c.violations.append(f"{name} is in storage, but no job or product owns it")
    if cut_off:
        c.known.append(
            f"{cut_off} x the upload of a request the killed server cut off before its commit: "
            "Django writes an upload to storage before the row commits (any FileField does)"
        )
    c.detail = (
        f"{snapshot.get('storage_files', 0)} files: {len(snapshot['originals'])} originals, "
        f"{sum(1 for j in snapshot['jobs'] if j['result_name'])} results, "
        f"{len(snapshot['stray_files'])} stray"
    )
    return c


def _documented_no_result(job, index: Index) -> str | None:
    """Why a job may end ``no_result`` without a bug, or None."""
    emulator_job = index.emulator_job(job) if job["file_id"] else None
    if emulator_job is None:
        return None
    reached = index.callback_reached_app(emulator_job)
    if emulator_job["status"] == "failed" and not reached:
        return "FAILURE callback never reached the app"
    if emulator_job["status"] == "success" and emulator_job.get("resultFileId"):
        # The emulator's fault, not ImageKit's documented behaviour: a result counts only for
        # the job's own file, so neither its callback nor the check takes it.
        return "result stored as a NEW file: not the job's own file (docs/ARCHITECTURE.md)"
    return None


def check_outcomes(snapshot, state, index: Index) -> Check:
    """Each job's outcome agrees with what the emulator did (the heart of the old soak)."""
    c = Check("outcomes")
    known = Counter()
    for job in snapshot["jobs"]:
        label = f"job #{job['id']} (product {job['object_id']})"
        if job["status"] == "succeeded":
            source = index.source_job(job)
            if source is None:
                c.violations.append(f"{label} shares job #{job['duplicate_of_id']}, now gone")
                continue
            found = index.versions.get(job["result_version_id"])
            expected_files = {source["file_id"], source.get("result_file_id") or source["file_id"]}
            if found is None or found[0]["fileId"] not in expected_files:
                c.violations.append(
                    f"{label} succeeded with result version {job['result_version_id']!r}, which "
                    f"the emulator does not have for file {source['file_id']}"
                )
                continue
            if found[1]["source"] != "remove-bg":
                text = f"{label}: version {found[1]['id']} is not a remove-bg result"
                if _reuploaded(found[0], state):
                    text += ": the re-upload was taken for it (finding 1)"
                c.violations.append(text)
            if job["duplicate_of_id"] and job["result_version_id"] != source["result_version_id"]:
                c.violations.append(f"{label} shares job #{source['id']} but not its result")
            if job["result_sha256"] is None:
                c.violations.append(f"{label}: its result {job['result_name']!r} is not in storage")
            elif job["result_sha256"] != found[1]["sha256"]:
                c.violations.append(f"{label}: the stored result differs from ImageKit's version")
        elif job["status"] == "failed":
            if job["duplicate_of_id"]:
                source = index.jobs.get(job["duplicate_of_id"])
                source_run = index.emulator_job(source) if source and source["file_id"] else None
                kept_failure = (
                    source is not None
                    and source["status"] in ("superseded", "cancelled")
                    and source["error_code"] == "removal_failed"
                    and source_run is not None
                    and source_run["status"] == "failed"
                )  # the run it waited for failed at ImageKit: the same image fails the same way
                if source is None or (source["status"] != "failed" and not kept_failure):
                    c.violations.append(
                        f"{label} failed as a copy of job #{job['duplicate_of_id']}, which did "
                        f"not fail (it is {source['status'] if source else 'gone'})"
                    )
                continue
            emulator_job = index.emulator_job(job) if job["file_id"] else None
            code = job["error_code"]
            if code == "removal_failed":
                if emulator_job is None or emulator_job["status"] != "failed":
                    c.violations.append(
                        f"{label} failed with removal_failed, but the emulator's remove-bg "
                        f"{'never ran' if emulator_job is None else emulator_job['status']}"
                    )
            elif code == "no_result":
                why = _documented_no_result(job, index)
                if why is None:
                    reached = index.callback_reached_app(emulator_job)
                    c.violations.append(
                        f"{label} failed with no_result, but the emulator's remove-bg "
                        f"{'never ran' if emulator_job is None else emulator_job['status']} "
                        f"and its callback {'reached' if reached else 'never reached'} the app"
                    )
                else:
                    known[why] += 1
            elif code == "extension_failed":
                if emulator_job is None or emulator_job["status"] != "failed":
                    c.violations.append(
                        f"{label} failed with extension_failed, but the emulator's remove-bg "
                        f"{'never ran' if emulator_job is None else emulator_job['status']}"
                    )
            elif code not in DOCUMENTED_FAILURES:
                c.violations.append(
                    f"{label} failed for an undocumented reason: {code}: {job['error_message']}"
                )
        elif job["status"] == "superseded":
            newer = index.jobs.get(job["superseded_by_id"])
            if newer is None or newer["id"] <= job["id"] or newer["object_id"] != job["object_id"]:
                c.violations.append(
                    f"{label} is superseded by {job['superseded_by_id']}, not a newer job"
                )
    for file_id, emulator_jobs in index.emu_jobs_by_file.items():
        owner = index.owner(file_id)
        if owner is None or owner["status"] in ("superseded", "cancelled"):
            continue
        for emulator_job in emulator_jobs:
            if emulator_job["status"] == "success" and owner["status"] != "succeeded":
                if owner["error_code"] == "no_result" and _documented_no_result(owner, index):
                    continue
                c.violations.append(
                    f"job #{owner['id']} is {owner['status']} ({owner['error_code']}), but the "
                    f"emulator removed its background (version {emulator_job['resultVersionId']})"
                )
    for name, count in sorted(state.get("uploadsByFileName", {}).items()):
        if count != 1:
            c.violations.append(f"{name!r} was uploaded {count} times")
    for file_id, record in index.files.items():
        uploads = [x for x in record["versions"] if x["source"] in ("upload", "overwrite")]
        if not uploads:
            continue  # a result stored as a new file
        owners = index.owners.get(file_id, [])
        if not owners:
            named = _job_named(record["requestedName"], index)
            text = (
                f"emulator file {file_id} ({record['requestedName']}) belongs to no job: an "
                "upload whose submission was never recorded"
            )
            if named is not None and named["status"] in ("superseded", "cancelled"):
                c.known.append(
                    f"{text}; job #{named['id']} was {named['status']} while its answer was "
                    "lost, so nobody looked it up (a wasted run, not paid twice)"
                )
            elif named is None:
                c.violations.append(f"{text}; no job of that number in the database")
            else:
                # What the job says of itself, for whoever reads the report.
                c.violations.append(
                    f"{text}; job #{named['id']} is {named['status']} (file_id "
                    f"{named['file_id'] or '-'}, duplicate_of {named['duplicate_of_id']}, "
                    f"uncertain {named.get('submission_uncertain')}, attempts "
                    f"{named['attempts']}, error {named['error_code'] or '-'})"
                )
            continue
        if len(owners) > 1:
            c.violations.append(f"jobs {[j['id'] for j in owners]} all claim file {file_id}")
        owner = owners[0]
        if _job_named(record["requestedName"], index) is not index.jobs.get(owner["id"]):
            c.violations.append(
                f"job #{owner['id']} recorded file {file_id}, uploaded as "
                f"{record['requestedName']!r} (another job's name)"
            )
        if owner["source_hash"] and uploads[0]["sha256"] != owner["source_hash"]:
            c.violations.append(f"job #{owner['id']}: ImageKit got other bytes than the original")
    for file_id, owners in index.owners.items():
        if file_id not in index.files:
            c.violations.append(f"job(s) {[j['id'] for j in owners]}: no emulator file {file_id}")
    c.known.extend(f"{n} x {why}" for why, n in known.items())
    submitted = len(index.owners)
    shared = sum(1 for j in snapshot["jobs"] if j["duplicate_of_id"])
    c.detail = (
        f"{submitted} jobs sent to ImageKit, {shared} shared an identical job's result, "
        f"{len(state['jobs'])} remove-bg jobs at the emulator"
    )
    return c


def _reuploaded(record: Mapping[str, Any], state: Mapping[str, Any]) -> bool:
    """The file was uploaded again under its job's name (finding 1's second upload)."""
    return state.get("uploadsByFileName", {}).get(record.get("requestedName"), 0) > 1


def _job_named(name: str, index: Index) -> dict | None:
    """The job whose upload name (``<stem>__ikbg<id>-<random><ext>``) is ``name``."""
    found = _UPLOAD_MARK.search(name or "")
    return index.jobs.get(int(found.group(1))) if found else None


def check_results(snapshot, state, index: Index) -> Check:
    """Each existing product: its newest job settled, and the cut-out it shows is ImageKit's
    result of its current image, byte for byte."""
    c = Check("results")
    runs_by_version: dict[str, dict] = {}
    for run in state.get("removeBgRuns", []):
        emulator_job = next(
            (j for j in index.emu_jobs_by_file.get(run["fileId"], []) if j["id"] == run["jobId"]),
            None,
        )
        if emulator_job and emulator_job.get("resultVersionId"):
            runs_by_version[emulator_job["resultVersionId"]] = run
    shown = failed = 0
    by_product: dict[str, list[dict]] = defaultdict(list)
    for job in snapshot["jobs"]:
        by_product[job["object_id"]].append(job)
    for product in snapshot["products"]:
        label = f"product {product['id']}"
        jobs = by_product.get(str(product["id"]), [])
        if not jobs:
            c.violations.append(f"{label} has no removal job")
            continue
        newest = max(jobs, key=lambda j: j["id"])
        if product["photo_removal_id"] != newest["id"]:
            c.violations.append(
                f"{label} points at job #{product['photo_removal_id']}, not its newest "
                f"#{newest['id']}"
            )
        if newest["status"] not in ("succeeded", "failed"):
            c.violations.append(f"{label}: its newest job #{newest['id']} is {newest['status']}")
            continue
        result = product.get("result")  # what product.photo.result_file shows, or None
        if newest["status"] == "succeeded" and result is None:
            c.violations.append(f"{label}: job #{newest['id']} succeeded but shows no cut-out")
            continue
        if result is None:
            failed += 1
            continue
        job = index.jobs.get(result["job"])
        found = index.versions.get(job["result_version_id"]) if job else None
        if job is None or found is None:
            c.violations.append(f"{label} shows a cut-out ImageKit does not have")
            continue
        if result["sha256"] != found[1]["sha256"]:
            c.violations.append(
                f"{label}: its cut-out {result['name']} differs from ImageKit's version "
                f"{found[1]['id']}"
            )
        run = runs_by_version.get(found[1]["id"])
        if run is None and found[1]["source"] != "remove-bg" and _reuploaded(found[0], state):
            c.violations.append(
                f"{label} shows its own original as the cut-out: version {found[1]['id']} is "
                "the job's second upload, taken for the result (finding 1)"
            )
        elif run is None:
            c.violations.append(f"{label}: no remove-bg run made version {found[1]['id']}")
        elif run["inputSha256"] != product["photo_sha256"]:
            c.violations.append(
                f"{label}: its cut-out is of another image than its current photo "
                f"(run input {run['inputSha256'][:12]}, photo {product['photo_sha256'][:12]})"
            )
        elif "requested_options" in job and options_key(run.get("requestedOptions")) != (
            options_key(job["requested_options"])
        ):
            c.violations.append(
                f"{label}: its cut-out was made with options {run.get('requestedOptions')}, "
                f"the job asked for {job['requested_options']}"
            )
        shown += 1
    c.detail = (
        f"{len(snapshot['products'])} products: {shown} show ImageKit's cut-out of their "
        f"current image byte for byte, {failed} failed (documented reasons)"
    )
    return c


def check_paid_once(snapshot, state, index: Index) -> Check:
    c = Check("paid_once")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in state.get("removeBgRuns", []):
        groups[(run["inputSha256"], options_key(run.get("options")))].append(run)
    extra_forced = after_failure = 0
    for (digest, options), runs in groups.items():
        if len(runs) < 2:
            continue
        # A run whose upload was never recorded belongs to the job its deterministic name names
        # (superseded while its answer was lost).
        owners = [
            index.owner(run["fileId"])
            or _job_named(index.files.get(run["fileId"], {}).get("requestedName", ""), index)
            for run in runs
        ]
        verdict = _paid_again(owners, index)
        extra_forced += verdict["forced"]
        after_failure += verdict["after_failure"]
        c.known.extend(verdict["known"])
        if not verdict["unexplained"] and not verdict["findings"]:
            continue
        story = ", ".join(
            f"job #{o['id']} ({o['status']}, {o['trigger']}, product {o['object_id']})"
            if o
            else f"file {run['fileId']} (no job)"
            for o, run in zip(owners, runs, strict=True)
        )
        text = (
            f"image {digest[:12]} with options {options} paid {len(runs)} times "
            f"({verdict['forced']} forced): {story}"
        )
        if verdict["findings"]:
            text += f" ({' + '.join(verdict['findings'])})"
        c.violations.append(text)
    distinct = len(groups)
    runs = len(state.get("removeBgRuns", []))
    c.detail = (
        f"{runs} paid runs for {distinct} distinct (image, options); {extra_forced} more "
        f"forced, {after_failure} again after a failed run"
    )
    return c


def _paid_again(owners: list[dict | None], index: Index) -> dict[str, Any]:
    """Account for every paid run of one (image, options) after the first.

    - a job that paid more than once: finding 1;
    - a later job with ``force``: allowed;
    - a later job after every earlier payer failed at ImageKit: a new attempt, allowed;
    - a later job after every earlier payer was superseded, cancelled or failed, where a
      superseded or cancelled payer's run never reached the app for a documented reason (its
      result stored as a new file, or its failure, and the callback lost): known;
    - otherwise after every earlier payer was superseded, cancelled or failed: finding 2;
    - anything else: unexplained (a violation)."""
    out: dict[str, Any] = {
        "forced": 0,
        "after_failure": 0,
        "unexplained": 0,
        "findings": [],
        "known": [],
    }
    if any(o is None for o in owners):
        out["unexplained"] = len(owners) - 1
        return out
    payers: list[dict] = []
    for owner in owners:
        if all(p["id"] != owner["id"] for p in payers):  # type: ignore[index]
            payers.append(owner)  # type: ignore[arg-type]
    if len(owners) > len(payers):
        out["findings"].append("finding 1")
    for number, payer in enumerate(payers[1:], start=1):
        earlier = payers[:number]
        if payer.get("force"):
            out["forced"] += 1
        elif all(p["status"] == "failed" for p in earlier):
            out["after_failure"] += 1
        elif all(p["status"] in ("superseded", "cancelled", "failed") for p in earlier):
            unknowable = [
                (p, why)
                for p in earlier
                if p["status"] in ("superseded", "cancelled")
                and p["error_code"] == "no_result"
                and (why := _documented_no_result(p, index))
            ]
            if unknowable:
                gone, why = unknowable[0]
                out["known"].append(
                    f"job #{payer['id']} paid again after {gone['status']} job #{gone['id']}'s "
                    f"run, which the app could not learn of: {why}"
                )
            elif "finding 2" not in out["findings"]:
                out["findings"].append("finding 2")
        else:
            out["unexplained"] += 1
    return out


def check_callbacks(snapshot, state, tolerance: float) -> Check:
    c = Check("callbacks")
    totals: Counter[str] = Counter()
    emulator_200 = 0
    unanswered = 0
    refused_stale = 0
    early = 0  # 409: it came before the job knew its file; the emulator sends it again
    for callback in state["callbacks"]:
        label = (
            f"callback {callback['id']} ({callback['reportedStatus']}, file {callback['fileId']})"
        )
        totals[callback["status"]] += 1
        last_kind = None
        for attempt in callback["attempts"]:
            status = attempt["status"]
            if status == 200:
                emulator_200 += 1
                last_kind = "200"
            elif status is None:
                unanswered += 1  # the web server was down, or killed mid-request
                last_kind = "none"
            elif status == 401 and _stale(attempt, tolerance):
                refused_stale += 1
                last_kind = "stale"
            elif status == 409:
                early += 1
                last_kind = "early"
            else:
                last_kind = "bad"
                c.violations.append(
                    f"{label}: attempt {attempt['attempt']} got {status} from the webhook"
                    + (" (a fresh signature refused)" if status == 401 else "")
                )
        if callback["status"] in ("delivered", "lost"):
            continue
        if last_kind != "stale":
            c.violations.append(
                f"{label} is {callback['status']} at the emulator, its last attempt "
                f"{'unanswered' if last_kind == 'none' else last_kind}"
            )
    stored_200 = sum(1 for d in snapshot["deliveries"] if d["status_code"] == 200)
    # Repeats and callbacks that changed nothing are counted, not stored.
    repeats = snapshot["counted"].get("duplicate", 0) + snapshot["counted"].get("ignored", 0)
    interrupted = 0
    for delivery in snapshot["deliveries"]:
        if delivery["status_code"] is None:
            interrupted += 1  # recorded, then the web server was killed mid-request
        elif delivery["status_code"] != 200:
            c.violations.append(
                f"webhook delivery #{delivery['id']} (job {delivery['job_id']}) was answered "
                f"{delivery['status_code']} {delivery['verdict']}: {delivery['error']}"
            )
    answered_by_app = stored_200 + repeats
    if answered_by_app < emulator_200:
        c.violations.append(
            f"the emulator got 200 {emulator_200} times, but the app stored {stored_200} and "
            f"counted {repeats} repeat(s)"
        )
    elif answered_by_app > emulator_200 + unanswered + snapshot.get("emulator_restarts", 0) * 20:
        c.violations.append(
            f"the app answered {answered_by_app} callbacks, more than the emulator sent "
            f"({emulator_200} answered, {unanswered} cut off)"
        )
    refused = {
        k: n for k, n in snapshot["counted"].items() if k not in ("duplicate", "ignored", "early")
    }
    if snapshot["counted"].get("early", 0) < early:
        c.violations.append(
            f"the emulator got 409 {early} times, the app counted "
            f"{snapshot['counted'].get('early', 0)}"
        )
    stale_counted = refused.pop("signature_stale", 0)
    if refused:
        c.violations.append(f"the webhook refused genuine callbacks: {refused}")
    if stale_counted < refused_stale:
        c.violations.append(
            f"the emulator saw {refused_stale} stale-signature refusals, the app counted "
            f"{stale_counted}"
        )
    c.detail = (
        f"{len(state['callbacks'])}: delivered {totals['delivered']}, lost {totals['lost']} "
        f"(fault), refused as stale retries {totals['gave_up'] + totals['scheduled']}; "
        f"attempts: {emulator_200} answered 200, {early} answered 409 early, "
        f"{refused_stale} refused 401 stale, "
        f"{unanswered} cut off by a kill ({interrupted} of them recorded by the app first)"
    )
    return c


def _stale(attempt: Mapping[str, Any], tolerance: float) -> bool:
    """A 401 the app gave deliberately: the retry carried a signature older than the tolerance."""
    stamp = attempt.get("signatureTimestamp")
    if not stamp:
        return False
    try:
        # Checked on arrival, which may be as late as the answer (a request queued while the
        # web server was being restarted waits for it).
        age = (attempt["sentAtMs"] + (attempt.get("durationMs") or 0)) / 1000 - int(stamp)
    except (TypeError, ValueError):
        return False
    return age >= tolerance - 1.0  # the timestamp is in whole seconds


def check_twins(snapshot, plan) -> list[str]:
    """A product saved with the image of one that had succeeded shares that result."""
    violations = []
    by_product: dict[str, list[dict]] = defaultdict(list)
    jobs = {job["id"]: job for job in snapshot["jobs"]}
    for job in snapshot["jobs"]:
        by_product[job["object_id"]].append(job)
    for twin in plan.get("identical", []):
        if twin.get("original_deleted"):
            continue
        own = by_product.get(str(twin["product"]), [])
        first = min(own, key=lambda j: j["id"]) if own else None
        original = jobs.get(twin.get("original_job"))
        if first is not None and (
            not first["file_id"]  # never sent (superseded before it was)
            # The original's result was made with other options (an API request): another
            # result, which the twin pays for.
            or (
                original is not None
                and first.get("requested_options") != original.get("requested_options")
            )
        ):
            continue
        if first is None or first["duplicate_of_id"] is None:
            violations.append(
                f"product {twin['product']} has the image of product "
                f"{twin['original_product']} (succeeded), but was sent to ImageKit again"
            )
    return violations


def verify(
    snapshot: Mapping[str, Any],
    state: Mapping[str, Any],
    plan: Mapping[str, Any],
    *,
    tolerance: float = 2.0,
) -> list[Check]:
    index = Index(snapshot, state)
    checks = [
        check_final(snapshot, index),
        check_results(snapshot, state, index),
        check_paid_once(snapshot, state, index),
        check_storage(snapshot),
        check_originals(snapshot),
        check_stuck(snapshot),
        check_callbacks(snapshot, state, tolerance),
        check_outcomes(snapshot, state, index),
    ]
    checks[1].violations.extend(check_twins(snapshot, plan))
    return checks


def violations(checks: list[Check]) -> list[str]:
    return [v for c in checks for v in c.violations]
