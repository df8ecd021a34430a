"""helpers.batch: prompts files, ids, the manifest, the lock, resume after SIGKILL, several machines."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import KIT_ROOT, batch, outputs, rules, validate
from helpers.errors import InvalidParameterError, PromptsFileError, UnsafeStateFileError

CALL = dict(seeds_per_prompt=1, seed=0, height=32, width=32, num_inference_steps=1, guidance_scale=1.0,
            dtype="float32")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# ---------------------------------------------------------------- prompts files

def test_reads_txt_csv_and_jsonl(tmp_path):
    txt = batch.read_prompts(write(tmp_path / "p.txt", "a cat\n\n  \na dog, wet\n"))
    assert [(r["line"], r["prompt"]) for r in txt] == [(1, "a cat"), (4, "a dog, wet")]
    rows = batch.read_prompts(write(tmp_path / "p.csv", """
        prompt,negative_prompt,seed,num_inference_steps,guidance_scale
        "a cat, sitting",blurry,7,3,2.5
        a dog,,,,
    """))
    assert rows[0] == {"line": 2, "prompt": "a cat, sitting", "negative_prompt": "blurry", "seed": 7,
                       "num_inference_steps": 3, "guidance_scale": 2.5}
    assert rows[1] == {"line": 3, "prompt": "a dog", "negative_prompt": ""}
    rows = batch.read_prompts(write(tmp_path / "p.jsonl", """
        {"prompt": "a fox", "seed": 3}

        {"prompt": "an owl", "guidance_scale": 4}
    """))
    assert [(r["line"], r["prompt"], r.get("seed")) for r in rows] == [(1, "a fox", 3), (3, "an owl", None)]
    assert rows[1]["guidance_scale"] == 4.0


@pytest.mark.parametrize("name, text, line, message", [
    ("bad.csv", "prompt,seed\na cat,1\na dog,x\n", 3, "seed='x' needs a whole number from 0 to 2**64 - 1"),
    ("big.csv", f"prompt,seed\na cat,{2**64}\n", 2, f"seed='{2**64}' needs a whole number from 0 to 2**64 - 1"),
    ("inf.csv", "prompt,guidance_scale\na cat,inf\n", 2, "guidance_scale='inf' needs a number >= 0 and <= 100"),
    ("bad.csv", "prompt,seed\na cat,1\n,2\n", 3, "needs a non-empty 'prompt'"),
    ("bad.csv", "prompt,seed\na cat,1,extra\n", 2, "more fields than the header"),
    ("bad.csv", "prompt,negativ_prompt\na cat,x\n", 2, "unknown column(s) ['negativ_prompt']"),
    ("cols.csv", "text,seed\na cat,1\n", 1, "has no 'prompt' column"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": -1}\n', 2, "seed=-1 needs a whole number from 0"),
    ("bad.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n', 3, "is not valid JSON"),
    ("bad.jsonl", '["a cat"]\n', 1, "needs a JSON object"),
    ("bad.jsonl", '{"prompt": "a", "num_inference_steps": 2.5}\n', 1, "num_inference_steps=2.5"),
    ("bad.jsonl", '{"prompt": "a", "seed": true}\n', 1, "seed=True"),
])
def test_a_malformed_row_is_named_by_its_line(tmp_path, name, text, line, message):
    with pytest.raises(PromptsFileError) as caught:
        batch.read_prompts(write(tmp_path / name, text))
    assert caught.value.line == line
    assert f"line {line}: " in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize("name, text, message", [
    ("empty.txt", "\n  \n", "has no prompts"), ("empty.csv", "prompt,seed\n", "has no prompts"),
    ("empty.jsonl", "", "has no prompts"), ("p.tsv", "a\n", "needs a .txt, .csv, .jsonl file"),
])
def test_empty_and_unknown_files_are_refused(tmp_path, name, text, message):
    with pytest.raises(PromptsFileError, match=message):
        batch.read_prompts(write(tmp_path / name, text))


def test_the_validation_cell_rules(tmp_path):
    bad = write(tmp_path / "bad.csv", "prompt,seed\na,1\nb,oops\n")
    with pytest.raises(InvalidParameterError, match=r"prompts_file=.*line 3: seed='oops'"):
        validate.check({"prompts_file": str(bad)})
    with pytest.raises(InvalidParameterError, match="prompts_file=.*no such file"):
        validate.check({"prompts_file": str(tmp_path / "missing.txt")})
    validate.check({"prompts_file": "", "seeds_per_prompt": 2, "resume": True, "quantization": "auto",
                    "offload": "none"})
    for name, value in (("seeds_per_prompt", 0), ("resume", "yes"), ("quantization", "int3"), ("offload", "gpu")):
        with pytest.raises(InvalidParameterError, match=f"{name}="):
            validate.check({name: value})


def test_an_unwritable_output_dir_fails_before_anything_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidParameterError, match="output_dir=.*cannot be written"):
        batch.check_output_dir(blocker / "images")
    assert batch.check_output_dir(tmp_path / "new" / "images").is_dir()


# ---------------------------------------------------------------- ids and shards

def test_ids_hash_what_decides_the_image():
    rows = [{"prompt": "a cat"}, {"prompt": "a dog", "seed": 100, "num_inference_steps": 5}]
    items = batch.plan_items("m", rows, **{**CALL, "seeds_per_prompt": 2, "seed": 10})
    assert [(i.prompt, i.seed, i.num_inference_steps) for i in items] == [
        ("a cat", 10, 1), ("a cat", 11, 1), ("a dog", 100, 5), ("a dog", 101, 5)]
    assert items == batch.plan_items("m", rows, **{**CALL, "seeds_per_prompt": 2, "seed": 10})
    assert len({i.id for i in items}) == 4
    for change in ({"dtype": "bfloat16"}, {"height": 64}, {"guidance_scale": 2.0}):
        other = batch.plan_items("m", rows, **{**CALL, "seeds_per_prompt": 2, "seed": 10, **change})
        assert not {i.id for i in other} & {i.id for i in items}
    assert not {i.id for i in batch.plan_items("m2", rows, **{**CALL, "seeds_per_prompt": 2, "seed": 10})} & {
        i.id for i in items}
    duplicated = batch.plan_items("m", [{"prompt": "a", "seed": 1}, {"prompt": "a", "seed": 1}], **CALL)
    assert len(duplicated) == 1


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_are_disjoint_cover_everything_and_ignore_order(world):
    items = batch.plan_items("m", batch.rows_from_list([f"p{i}" for i in range(23)]), **CALL)
    shards = [batch.shard(items, rank, world) for rank in range(world)]
    assert sorted(i.id for s in shards for i in s) == sorted(i.id for i in items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [batch.shard(list(reversed(items)), rank, world) for rank in range(world)] == shards


# ---------------------------------------------------------------- manifest, lock, repair

def cpu_plan(model, quantization="none"):
    """The load plan of one CPU process, as the notebook and the command line make it."""
    from helpers import planning

    return planning.plan_load(str(model), dtype="float32", quantization=quantization, offload="none",
                              device_map="cpu", height=32, width=32)


def png_entry(folder: Path, item_id: str, data: bytes = b"\x89PNG not really", **fields) -> dict:
    """A manifest line the kit would write for `data` saved as `<item_id>.png` in `folder`."""
    (folder / f"{item_id}.png").write_bytes(data)
    return {"id": item_id, "file": f"{item_id}.png", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "seconds": 0.5, "rank": 0, "run": "r1", "prompt": "a cat", "seed": 1, **fields}


A, B, C = "a" * 24, "b" * 24, "c" * 24


def test_repair_sets_aside_torn_and_superseded_lines_and_empties_partial(tmp_path, capsys):
    (tmp_path / batch.PARTIAL).mkdir(exist_ok=True)
    (tmp_path / batch.PARTIAL / "0-abc.png").write_bytes(b"\x89PNG half")
    lines = [png_entry(tmp_path, A), png_entry(tmp_path, B), png_entry(tmp_path, A, b"newer")]
    manifest = tmp_path / batch.MANIFEST
    manifest.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines) + b'{"id": "c", "fi')
    reports = batch.repair(tmp_path)
    assert reports == ["manifest.jsonl line 4 set aside in manifest.rejected.jsonl: is not JSON (Unterminated "
                       "string starting at): a torn or garbage line; its item is rendered again"]
    assert (tmp_path / batch.PARTIAL).is_dir() and not list((tmp_path / batch.PARTIAL).iterdir())
    assert manifest.read_bytes().endswith(b"\n")
    assert batch.read_manifest(tmp_path) == {A: lines[2], B: lines[1]}
    rejected = [json.loads(line) for line in (tmp_path / batch.REJECTED).read_text().splitlines()]
    assert rejected == [{"line": 4, "problem": reports[0].split(": ", 1)[1].split("; its item")[0],
                         "text": '{"id": "c", "fi'}]
    assert batch.repair(tmp_path) == []


def test_is_done_needs_a_regular_file_with_its_size_and_hash(tmp_path):
    entry = png_entry(tmp_path, A, b"png bytes")
    assert batch.is_done(tmp_path, entry)
    (tmp_path / entry["file"]).write_bytes(b"png byteZ")
    assert not batch.is_done(tmp_path, entry)
    (tmp_path / entry["file"]).unlink()
    assert not batch.is_done(tmp_path, entry) and not batch.is_done(tmp_path, None)
    outside = tmp_path / "outside.png"  # a link to a file with the recorded bytes is still not the kit's PNG
    outside.write_bytes(b"png bytes")
    (tmp_path / entry["file"]).symlink_to(outside)
    assert not batch.is_done(tmp_path, {**entry, "sha256": hashlib.sha256(b"png bytes").hexdigest()})


def test_a_fifo_under_an_items_name_is_not_done_and_does_not_hang(tmp_path):
    entry = png_entry(tmp_path, A)
    (tmp_path / entry["file"]).unlink()
    os.mkfifo(tmp_path / entry["file"])
    start = time.monotonic()
    assert not batch.is_done(tmp_path, entry)
    assert time.monotonic() - start < 5


OUTSIDE_SHA = hashlib.sha256(b"the user's photo").hexdigest()


@pytest.mark.parametrize("change, problem", [
    ({"file": "../somewhere/photo.png", "sha256": OUTSIDE_SHA}, "file='../somewhere/photo.png' is not exactly"),
    ({"file": "/home/user/photo.png", "sha256": OUTSIDE_SHA}, "file='/home/user/photo.png' is not exactly"),
    ({"file": "/dev/zero"}, "file='/dev/zero' is not exactly '<id>.png'"),
    ({"file": f"{B}.png"}, f"file='{B}.png' is not exactly '<id>.png' ({A}.png)"),
    ({"file": "notes.txt"}, "file='notes.txt' is not exactly"),
    ({"id": "../x"}, "id='../x' is not a kit item id"),
    ({"id": 5}, "id=5 is not a JSON str"),
    ({"seed": "7"}, "seed='7' is not a JSON int"),
    ({"bytes": "12"}, "bytes='12' is not a JSON int"),
    ({"bytes": True}, "bytes=True is not a JSON int"),
    ({"bytes": 10**12}, "bytes=1000000000000 is not between 1 and"),
    ({"seconds": None, "sha256": "x"}, "sha256 is not 64 hex digits"),
    ({"prompt": ["a"]}, "prompt=['a'] is not a JSON str"),
])
def test_a_manifest_line_is_trusted_only_in_the_kits_form(tmp_path, change, problem):
    entry = {**png_entry(tmp_path, A), **change}
    assert problem in batch.entry_problem(entry)
    assert not batch.is_done(tmp_path, entry)


@pytest.mark.parametrize("line, problem", [(b"[1, 2]", "is a JSON list, not an object"), (b"\xff\xfe", "is not JSON"),
                                           (b'{"id": "%s"}' % A.encode(), "has no 'file'")])
def test_a_line_that_is_not_an_entry_is_set_aside_with_its_number(tmp_path, line, problem):
    good = png_entry(tmp_path, B)
    (tmp_path / batch.MANIFEST).write_bytes(json.dumps(good).encode() + b"\n" + line + b"\n")
    assert batch.read_manifest(tmp_path) == {B: good}
    [report] = batch.repair(tmp_path)
    assert report.startswith("manifest.jsonl line 2 set aside") and problem in report
    assert json.loads((tmp_path / batch.REJECTED).read_text())["line"] == 2
    assert (tmp_path / batch.MANIFEST).read_text() == json.dumps(good, sort_keys=True) + "\n"


def test_a_linked_lock_or_manifest_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("the user's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / batch.LOCK).symlink_to(target)
    with pytest.raises(UnsafeStateFileError, match=r"\.manifest\.lock is a symbolic link: the kit never follows"):
        batch.ManifestLock(out).__enter__()
    (out / batch.LOCK).unlink()
    (out / batch.MANIFEST).symlink_to(target)
    with pytest.raises(UnsafeStateFileError, match="manifest.jsonl is a symbolic link"):
        batch.read_manifest(out)
    with pytest.raises(UnsafeStateFileError, match="manifest.jsonl is a symbolic link"):
        batch.launch(batch.Job("unused-model", str(out), [], None), 1)
    assert target.read_text() == "the user's file"


def test_a_linked_partial_folder_is_refused_before_anything_is_written(tmp_path):
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / batch.PARTIAL).symlink_to(elsewhere)
    with pytest.raises(UnsafeStateFileError, match=r"\.partial is a symbolic link.*Remove '\.partial'"):
        batch.launch(batch.Job("unused-model", str(out), [], None), 1)
    assert list(elsewhere.iterdir()) == [] and (out / batch.PARTIAL).is_symlink()


def test_a_torn_last_line_of_runs_jsonl_is_reported_and_skipped(tmp_path):
    (tmp_path / batch.RUNS).write_bytes(b'{"run": "r1", "images": 3}\n{"run": "r2", "ima')
    runs, notes = batch.read_runs(tmp_path)
    assert [r["run"] for r in runs] == ["r1"] and notes == ["runs.jsonl line 2 is not a run summary (torn or "
                                                            "damaged); skipped"]


def test_seeds_past_the_generator_bound_are_refused_before_loading():
    with pytest.raises(InvalidParameterError, match=r"seed=18446744073709551615 is not valid: line 3 would use seeds "
                                                    r"up to 18446744073709551616"):
        batch.plan_items("m", [{"prompt": "a", "line": 3, "seed": rules.MAX_SEED}], **{**CALL, "seeds_per_prompt": 2})
    with pytest.raises(InvalidParameterError, match=r"prompts\[1\] would use seeds up to"):
        batch.plan_items("m", batch.rows_from_list(["a", "b"]), **{**CALL, "seed": rules.MAX_SEED})
    assert len(batch.plan_items("m", batch.rows_from_list(["a"]), **{**CALL, "seed": rules.MAX_SEED})) == 1


def test_a_rows_steps_follow_the_notebooks_step_rule(tmp_path):
    with pytest.raises(InvalidParameterError) as rule:
        rules.steps("num_inference_steps", 100_000)
    with pytest.raises(PromptsFileError, match="line 2: num_inference_steps='100000' ") as caught:
        batch.read_prompts(write(tmp_path / "p.csv", "prompt,num_inference_steps\na,100000\n"))
    assert rule.value.rule in str(caught.value)


HOLD_LOCK = "import sys, time; from helpers import batch\nwith batch.ManifestLock(sys.argv[1]):\n" \
            "    print('locked', flush=True); time.sleep(60)\n"


def test_a_second_run_on_the_same_folder_refuses(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=KIT_ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        job = batch.Job("unused-model", str(tmp_path), batch.plan_items("m", [{"prompt": "a"}], **CALL), None)
        with pytest.raises(batch.OutputDirLockedError, match=f"Another batch run is writing to .*pid {holder.pid}"):
            batch.launch(job, 2)
        with pytest.raises(batch.OutputDirLockedError):
            batch.ManifestLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with batch.ManifestLock(tmp_path):  # free again once the holder is gone
        pass


def test_resume_false_never_renders_over_a_batch(tmp_path):
    (tmp_path / batch.MANIFEST).write_text(json.dumps(png_entry(tmp_path, A)) + "\n")
    job = batch.Job("unused-model", str(tmp_path), [], None)
    with pytest.raises(InvalidParameterError, match="resume=False is not valid: .*already holds a batch"):
        batch.launch(job, 1, resume=False)


# ---------------------------------------------------------------- real runs on the tiny model

KILL_PROMPTS = [f"prompt number {i}: a {animal}" for i, animal in
                enumerate(["cat", "dog", "fox", "owl", "eel"] * 8)]
RUN_BATCH = """
import json, sys
from helpers import batch, planning
model, out, processes, quantization = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[5]
prompts = [line for line in open(sys.argv[4]).read().splitlines()]
plan = planning.plan_load(model, dtype="float32", quantization=quantization, offload="none", device_map="cpu",
                          height=32, width=32)
items = batch.plan_items(model, batch.rows_from_list(prompts), seeds_per_prompt=1, seed=0, height=32, width=32,
                         num_inference_steps=1, guidance_scale=1.0, dtype=plan.dtype, quantization=plan.quantization)
summary = batch.launch(batch.Job(model, out, items, plan), processes)
print("SUMMARY " + batch.format_summary(summary), flush=True)
print("LOADED " + json.dumps(summary["loaded"]), flush=True)
"""


def manifest_lines(folder: Path) -> list[dict]:
    path = folder / batch.MANIFEST
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_batch(model: Path, out: Path, prompts_file: Path, processes: int = 2, quantization: str = "none"):
    return subprocess.Popen([sys.executable, "-c", RUN_BATCH, str(model), str(out), str(processes), str(prompts_file),
                             quantization],
                            cwd=KIT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "KIT_QUIET": "1"})


def test_sigkill_at_five_random_moments_then_resume(tiny, tmp_path):
    """40 prompts, 2 CPU processes over gloo; the whole process group is SIGKILLed 5 times (before, during and
    between images), resumed each time; the end state is exactly the 40 images, each recorded once."""
    out, prompts_file = tmp_path / "out", tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(KILL_PROMPTS) + "\n")
    rng = random.Random(int(os.environ.get("KIT_KILL_SEED", time.time_ns() % 10_000)))
    kills = []
    for _ in range(5):
        done = len(manifest_lines(out))
        target = rng.randint(done, min(done + 8, 39))  # kill once this many are recorded (== done: during startup)
        run = start_batch(tiny["sd"], out, prompts_file)
        deadline = time.monotonic() + 120
        while len(manifest_lines(out)) < target and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        finished = run.poll() is not None
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        kills.append((target, len(manifest_lines(out)), finished))
        assert not finished or run.returncode == 0, run.stdout.read()[-3000:]
    assert sum(not finished for *_, finished in kills) >= 3, kills  # most kills landed in a running batch
    final = start_batch(tiny["sd"], out, prompts_file)
    log = final.communicate(timeout=180)[0]
    assert final.returncode == 0, log[-3000:]
    assert len(manifest_lines(out)) == 40, kills
    assert "from 2 process(es)" in log, log[-2000:]

    expected = batch.plan_items(str(tiny["sd"]), batch.rows_from_list(KILL_PROMPTS), **CALL)
    lines = manifest_lines(out)
    assert len(lines) == 40 and {e["id"] for e in lines} == {i.id for i in expected}, kills
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 40 and not list((out / batch.PARTIAL).glob("*")) if (out / batch.PARTIAL).exists() else True
    assert {p.name for p in pngs} == {e["file"] for e in lines}
    by_id = {i.id: i for i in expected}
    for entry in lines:
        path = out / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        with Image.open(path) as image:
            image.verify()
        metadata = outputs.read_metadata(path)
        item = by_id[entry["id"]]
        parameters = metadata["parameters"]
        assert (parameters["prompt"], parameters["seed"], metadata["context"]["item_id"]) == (item.prompt, item.seed,
                                                                                            item.id)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machine_ranks_give_the_same_ids_as_one_machine(tiny, tmp_path):
    prompts_file = write(tmp_path / "prompts.csv", """
        prompt,seed
        a cat,1
        a dog,
        a fox,5
        an owl,
        an eel,
    """)
    common = ["--model_id", str(tiny["sd"]), "--prompts_file", str(prompts_file), "--seeds_per_prompt", "2",
              "--height", "32", "--width", "32", "--num_inference_steps", "1", "--dtype", "float32"]
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    env = {**os.environ, "KIT_QUIET": "1"}
    machines = [subprocess.Popen([*accelerate, "--machine_rank", str(rank), "-m", "helpers.batch", *common,
                                  "--output_dir", str(tmp_path / "two")], cwd=KIT_ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [machine.communicate(timeout=240)[0] for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    single = subprocess.run([sys.executable, "-m", "helpers.batch", *common, "--output_dir", str(tmp_path / "one")],
                            cwd=KIT_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]

    two, one = manifest_lines(tmp_path / "two"), manifest_lines(tmp_path / "one")
    assert len(one) == 10 and len({e["id"] for e in one}) == 10
    assert sorted(e["id"] for e in two) == sorted(e["id"] for e in one)
    assert {e["rank"] for e in two} == {0, 1} and {e["rank"] for e in one} == {0}
    for a, b in zip(sorted(two, key=lambda e: e["id"]), sorted(one, key=lambda e: e["id"]), strict=True):
        assert a["file"] == b["file"] and a["seed"] == b["seed"]
    assert "10 images" in logs[0] and "rank 0: 5, rank 1: 5" in logs[0]


def test_the_command_line_checks_everything_before_loading(tiny, tmp_path):
    bad = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "guidance_scale": "high"}\n')
    args = ["--model_id", str(tiny["sd"]), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(InvalidParameterError, match=r"prompts_file=.*line 2: guidance_scale='high'"):
        batch.main([*args, "--prompts_file", str(bad)])
    with pytest.raises(InvalidParameterError, match="model_id='stabilityai/stable-diffusion-xl-base-1.0'.*cache"):
        batch.main([*args[2:], "--model_id", "stabilityai/stable-diffusion-xl-base-1.0", "--prompt", "a cat"])
    with pytest.raises(SystemExit):
        batch.main(args)  # neither a file nor a prompt
    assert not (tmp_path / "out").exists()


def test_resume_renders_exactly_what_is_missing_damaged_or_unrecorded(tiny, tmp_path, monkeypatch):
    """Every way a folder can be left behind, at once: a deleted PNG, a damaged PNG, a PNG whose manifest line
    never got written (killed in between), a torn last manifest line and a leftover in .partial/."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # in this process: the CPU, on any host
    items = batch.plan_items(str(tiny["sd"]), batch.rows_from_list(["a cat", "a dog", "a fox", "an owl", "an eel"]),
                             **CALL)
    job = batch.Job(str(tiny["sd"]), str(tmp_path), items, cpu_plan(tiny["sd"]))
    first = batch.launch(job, 1)
    assert (first["images"], first["skipped"], first["regenerated"]) == (5, 0, 0)
    lines = manifest_lines(tmp_path)
    deleted, damaged, unrecorded = (tmp_path / e["file"] for e in lines[:3])
    deleted.unlink()
    damaged.write_bytes(damaged.read_bytes()[:-20])
    kept = [json.dumps(e) for e in lines if e["file"] != unrecorded.name]
    (tmp_path / batch.MANIFEST).write_text("\n".join(kept) + '\n{"id": "torn')
    (tmp_path / batch.PARTIAL).mkdir(exist_ok=True)
    (tmp_path / batch.PARTIAL / "0-leftover.png").write_bytes(b"\x89PNG")

    second = batch.launch(job, 1)
    assert (second["images"], second["skipped"], second["regenerated"]) == (3, 2, 3)
    assert second["run"] != first["run"]
    final = manifest_lines(tmp_path)
    assert sorted(e["id"] for e in final) == sorted(i.id for i in items)
    assert all(batch.is_done(tmp_path, e) for e in final)
    assert not list((tmp_path / batch.PARTIAL).glob("*"))
    assert len(list(tmp_path.glob("*.png"))) == 5
    assert [r["images"] for r in map(json.loads, (tmp_path / batch.RUNS).read_text().splitlines())] == [5, 3]


def test_resume_trusts_nothing_on_disk_and_never_touches_what_a_line_names(tiny, tmp_path, monkeypatch, capsys):
    """The found cases at once, on a real batch: a line naming a file outside output_dir with its matching sha256,
    a line naming another item's PNG, a FIFO under an item's own name, a line with wrong JSON types, and a torn
    last line of runs.jsonl. Each item is rendered again, each bad line set aside with its number; the outside
    file is never read as done, moved or changed."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    items = batch.plan_items(str(tiny["sd"]), batch.rows_from_list(["a cat", "a dog", "a fox", "an owl"]), **CALL)
    job = batch.Job(str(tiny["sd"]), str(out), items, cpu_plan(tiny["sd"]))
    batch.launch(job, 1)
    lines = {e["id"]: e for e in manifest_lines(out)}
    first, second, third, fourth = (lines[item.id] for item in items)
    outside = tmp_path / "somewhere" / "photo.png"  # the user's own photo, byte-identical to the first image
    outside.parent.mkdir()
    outside.write_bytes((out / first["file"]).read_bytes())
    (out / first["file"]).unlink()
    os.unlink(out / third["file"])
    os.mkfifo(out / third["file"])
    hostile = [{**first, "file": "../somewhere/photo.png"}, {**second, "file": fourth["file"], "sha256":
               fourth["sha256"], "bytes": fourth["bytes"]}, third, {**fourth, "seed": str(fourth["seed"])}]
    (out / batch.MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in hostile))
    with open(out / batch.RUNS, "a") as runs:
        runs.write('{"run": "torn", "ima')
    capsys.readouterr()

    second_run = batch.launch(job, 1)
    printed = capsys.readouterr().out
    for number, problem in ((1, "file='../somewhere/photo.png' is not exactly '<id>.png'"),
                            (2, f"file='{fourth['file']}' is not exactly '<id>.png'"),
                            (4, f"seed='{fourth['seed']}' is not a JSON int")):
        assert f"manifest.jsonl line {number} set aside in manifest.rejected.jsonl: {problem}" in printed
    assert "runs.jsonl line 2 is not a run summary (torn or damaged); skipped" in printed
    assert (second_run["images"], second_run["skipped"]) == (4, 0)
    assert outside.read_bytes() == (out / first["file"]).read_bytes()  # identical image, still the user's file
    assert not (out / third["file"]).is_fifo()
    final = manifest_lines(out)
    assert sorted(e["id"] for e in final) == sorted(i.id for i in items) and all(batch.is_done(out, e) for e in final)
    assert [json.loads(line)["line"] for line in (out / batch.REJECTED).read_text().splitlines()] == [1, 2, 4]


def test_every_worker_loads_by_the_plan_quantized_and_records_it(tiny, tmp_path):
    """quantization="int8" on CPU (torchao): both processes get the plan's quantization_config through
    `loading.plan_kwargs`, their loaded UNet is really quantized (read from the loaded modules), and the ids
    differ from the unquantized batch's."""
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a cat\na dog\na fox\n")
    run = start_batch(tiny["sd"], tmp_path / "int8", prompts_file, processes=2, quantization="int8")
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log[-3000:]
    loaded = json.loads(log.split("LOADED ", 1)[1].splitlines()[0])
    assert sorted(loaded) == ["0", "1"]
    for record in loaded.values():
        assert record["quantization_config"] == "PipelineQuantizationConfig" and record["quantized"] == ["unet"]
        assert record["dtype"] == "float32" and record["offload"].startswith("offload: none")
    lines = manifest_lines(tmp_path / "int8")
    assert {e["rank"] for e in lines} == {0, 1}
    assert all(outputs.read_metadata(tmp_path / "int8" / e["file"])["context"]["quantization"] == "int8"
               for e in lines)
    plain = batch.plan_items(str(tiny["sd"]), batch.rows_from_list(["a cat", "a dog", "a fox"]), **CALL)
    assert not {e["id"] for e in lines} & {i.id for i in plain}


@pytest.mark.parametrize("name", [batch.LOCK, batch.MANIFEST, batch.REJECTED, batch.RUNS, batch.PARTIAL])
def test_the_output_folder_check_refuses_a_link_in_place_of_the_batchs_own_files(tmp_path, name):
    """Notebook 06 runs this right after setup: a link there stops before anything loads, its target untouched."""
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).symlink_to(target)
    with pytest.raises(UnsafeStateFileError, match=f"{name} is a symbolic link.*Remove '{name}'"):
        batch.check_output_dir(tmp_path / "out")
    (tmp_path / "out" / name).unlink()
    if name == batch.PARTIAL:
        (tmp_path / "out" / name).write_text("a file where the staging folder belongs")
    else:
        (tmp_path / "out" / name).mkdir()
    with pytest.raises(UnsafeStateFileError, match=f"{name} is of the wrong kind"):
        batch.check_output_dir(tmp_path / "out")
    assert target.read_text() == "mine"
