"""The main job end to end: `run` (sweep -> report), the local process pool, the demo config,
and the errors that must stop a run before it writes anything."""

import functools
import html
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from jobs.local import JobFailed, LocalPool
from jobs.run import run
from jobs.sweep import claim_root, expand, load_sweep, plan, submit
from pipeline.config import ConfigError
from tests.sweeps import tiny_sweep

ROOT = Path(__file__).resolve().parents[1]


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.mismatched, self.images = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.mismatched += 1


def _check_report(out: dict):
    page = out["html"].read_text()
    parser = _Html()
    parser.feed(page)
    assert parser.stack == [] and parser.mismatched == 0
    assert parser.images and all((out["html"].parent / src).is_file() for src in parser.images)
    found = json.loads(out["findings"].read_text())["findings"]
    md = out["markdown"].read_text()
    for f in found:  # every sentence, in both documents
        body = f["text"][len(f["group"]) + 2:]
        assert body[1:] in md and body[1:] in html.unescape(page)
    return found, md, page


def test_run_goes_from_sweep_file_to_report_and_resumes(tmp_path, capsys):
    path = tiny_sweep(tmp_path, variants={"vanilla": {}, "augment": {"recipe": "augment", "data.augment": True}},
                      n_paths=6)
    out = run(path)
    assert out["jobs"] == 2 + 2 * 2 * 2 + 1
    found, md, page = _check_report(out)
    topics = {f["topic"] for f in found}
    assert {"correlation", "augment", "training_vs_init"} <= topics
    assert "| vgg8 |" not in md or "Trained networks" in md
    assert "Trained networks" in page and "paper Table 1" in page
    again = run(path)  # finished: nothing runs again, the report is rewritten
    assert again["jobs"] == 0 and again["html"].exists()
    sweep, base = load_sweep(path)
    assert yaml.safe_load((base / sweep.root / "sweep.yaml").read_text())["name"] == "tiny"


def test_report_before_aggregation_says_what_to_do(tmp_path):
    from jobs.report import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2


def test_a_folder_holding_another_sweep_is_refused_untouched(tmp_path):
    first, base = load_sweep(tiny_sweep(tmp_path))
    claim_root(first, base, expand(first, base))
    before = (tmp_path / "out" / "sweep.yaml").read_text()
    other, _ = load_sweep(tiny_sweep(tmp_path, name="other"))
    with pytest.raises(ConfigError, match="already holds another sweep.*name: folder has 'tiny'"):
        submit(other, base)
    from dataclasses import replace

    with pytest.raises(ConfigError, match="grid"):
        submit(replace(first, grid={"seed": [0, 1]}), base)
    assert (tmp_path / "out" / "sweep.yaml").read_text() == before
    # the recipe file edited since: other runs, same sweep file
    (tmp_path / "train.yaml").write_text((tmp_path / "train.yaml").read_text().replace("lr: 0.05", "lr: 0.07"))
    with pytest.raises(ConfigError, match="recipe file changed"):
        submit(first, base)
    # where and how jobs run may change
    (tmp_path / "train.yaml").write_text((tmp_path / "train.yaml").read_text().replace("lr: 0.07", "lr: 0.05"))
    claim_root(replace(first, executor="local"), base, expand(first, base))
    # the discovery file edited since: its stores would mix two configs; how the work is done may change
    disc = tmp_path / "discover.yaml"
    disc.write_text(disc.read_text() + "eps: 1.0e-05\n")
    with pytest.raises(ConfigError, match=r"another discovery config.*eps: 1e-06 vs 1e-05"):
        submit(first, base)
    disc.write_text(disc.read_text().replace("eps: 1.0e-05\n", "").replace("batch_size: 16", "batch_size: 32"))
    claim_root(first, base, expand(first, base))
    # a folder that is not a sweep at all
    stray, _ = load_sweep(tiny_sweep(tmp_path, name="stray"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a sweep folder"):
        claim_root(replace(stray, root=str(tmp_path / "elsewhere")), base, [])
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["notes.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpus_asked_of_a_machine_without_one(tmp_path):
    sweep, base = load_sweep(tiny_sweep(tmp_path))
    from dataclasses import replace

    from jobs.sweep import Resources

    with pytest.raises(RuntimeError, match="discover_resources ask for GPUs.*gpus: 0"):
        submit(replace(sweep, discover_resources=Resources(gpus=1)), base, executor="debug")
    assert not (tmp_path / "out").exists()
    from pipeline.stages.discovery import DiscoverConfig
    from pipeline.stages.discovery import discover_run as discover

    with pytest.raises(RuntimeError, match="device: cuda asked for.*no GPU"):
        discover(tmp_path / "no-run", DiscoverConfig(device="cuda"))
    with pytest.raises(ValueError, match="device must be"):
        DiscoverConfig(device="tpu")


def test_unknown_model_is_named_with_the_closest():
    from pipeline.config import from_dict
    from pipeline.stages.train import TrainConfig

    with pytest.raises(ConfigError, match="unknown model 'vgg9'. Did you mean 'vgg8'"):
        from_dict(TrainConfig, {"model": {"name": "vgg9"}})


def test_demo_config_is_the_issue_s_experiment(capsys):
    sweep, base = load_sweep(ROOT / "configs" / "demo.yaml", ROOT)
    runs = expand(sweep, base)
    cfgs = [r.config for r in runs]
    assert {c.model.name for c in cfgs} == {"vgg8", "resnet18"}
    assert {c.recipe for c in cfgs} == {"vanilla", "augment", "noisy"}
    assert len({c.data.label_noise for c in cfgs if c.recipe == "noisy"}) >= 3
    assert {c.seed for c in cfgs} == {0, 1}
    assert set(sweep.checkpoints) == {"init", "final"} and sweep.executor == "local"
    assert all(c.data.name == "digits" for c in cfgs)
    dry = submit(sweep, base, dry_run=True)
    assert dry["submitted"] == 0 and len(dry["plan"]["runs"]) == len(runs) == 20
    # what the README says the demo analyses (the end-to-end test runs a reduced copy)
    from jobs.sweepconfig import discover_config

    dcfg = discover_config(sweep, base, "final")
    assert (dcfg.paths.kind, dcfg.paths.n_paths, dcfg.paths.anchors) == ("circle", 20, 8)
    assert (dcfg.planes.kind, dcfg.planes.n_planes) == ("images", 8)


def _boom():
    print("about to fail")
    raise ValueError("bad input 42")


def test_local_pool_keeps_each_job_s_output_and_errors(tmp_path):
    with LocalPool(tmp_path / "logs", workers=2) as pool:
        ok = pool.submit(functools.partial(print, "hello from a job"), name="ok")
        bad = pool.submit(_boom, name="bad")
        assert ok.result() is None
        with pytest.raises(JobFailed, match="ValueError: bad input 42.*traceback in"):
            bad.result()
    assert ok.paths.stdout.read_text().startswith("hello from a job\n[ok] done in ")
    assert "about to fail" in bad.paths.stdout.read_text()
    assert "Traceback" in bad.paths.stderr.read_text() and "bad input 42" in bad.paths.stderr.read_text()
    with pytest.raises(ValueError, match="workers"):
        LocalPool(tmp_path, workers=0)


def test_local_pool_counts_the_jobs_running_in_its_workers_not_the_queued(tmp_path):
    import time

    with LocalPool(tmp_path / "logs", workers=2) as pool:
        assert pool.running() == 0
        jobs = [pool.submit(functools.partial(time.sleep, 1.0), name=f"sleep {i}") for i in range(5)]
        seen, deadline = set(), time.monotonic() + 120
        while not all(j.done() for j in jobs) and time.monotonic() < deadline:
            seen.add(pool.running())
            time.sleep(0.02)
        assert all(j.done() for j in jobs)
        assert max(seen) == 2  # five submitted, two workers: never more than two running
        assert pool.running() == 0


@pytest.mark.slow
def test_local_executor_runs_on_after_a_failure_and_resumes(tmp_path):
    bad = {"data.name": "cifar10", "data.root": str(tmp_path / "no-cifar")}
    path = tiny_sweep(tmp_path, variants={"vanilla": {}, "broken": bad}, n_shards=1, executor="local")
    sweep, base = load_sweep(path)
    with pytest.raises(JobFailed, match=r"(?s)1 job\(s\) failed.*train broken-.*DatasetNotFoundError.*traceback in .*_log.err"):
        submit(sweep, base, workers=2)
    p = plan(sweep, base)
    assert len(p["train"]["done"]) == 1 and len(p["discover"]["done"]) == 2  # the good run went on
    logs = list((tmp_path / "out" / "logs").glob("*_log.err"))
    assert any("no-cifar" in f.read_text() for f in logs)
    shutil.rmtree(tmp_path / "out" / "runs" / p["train"]["todo"][0].run_id, ignore_errors=True)
    fixed = yaml.safe_load(path.read_text())
    del fixed["variants"]["broken"]
    path.write_text(yaml.safe_dump(fixed))
    with pytest.raises(ConfigError, match="variants"):  # the folder is the old sweep's: refused, not mixed
        submit(*load_sweep(path), workers=2)


def _reduced_demo(base: Path) -> int:
    """configs/ copied into ``base`` with the demo made small, as a user would shrink it: the same
    sweep file, recipes and options, with one seed, the clean, augmented and label noise 1.0
    variants of both models (6 networks), 2 epochs, 4 paths of 4 segments and 3 planes at scale
    0.05. Returns the number of planes. test_demo_config_is_the_issue_s_experiment checks the
    demo's own configs."""
    shutil.copytree(ROOT / "configs", base / "configs")

    def edit(name, change):
        path = base / "configs" / name
        cfg = yaml.safe_load(path.read_text())
        change(cfg)
        path.write_text(yaml.safe_dump(cfg))

    def sweep(cfg):
        cfg["variants"] = {k: cfg["variants"][k] for k in ("vanilla", "augment", "noise-1.0")}
        cfg["variants"]["noise-1.0"]["max_epochs"] = 2  # the noisy recipe (stop: fit) stops at its budget
        cfg["grid"]["seed"] = [0]

    edit("demo.yaml", sweep)
    edit("train/digits-demo.yaml", lambda cfg: cfg.update(max_epochs=2))  # stop: loss stops at the budget
    # 3 planes: with 2, every network's Spearman over images is NaN and the report's 2-D figure
    # says so instead of showing the correlations (tests/test_plane_analysis.py draws that case)
    edit("discover/digits-demo.yaml", lambda cfg: (cfg["paths"].update(n_paths=4, anchors=4),
                                                   cfg["planes"].update(n_planes=3, scale=0.05)))
    edit("analysis/demo.yaml", lambda cfg: cfg.update(plane_scale=0.1))
    return 3


@pytest.mark.slow
def test_the_demo_runs_end_to_end(tmp_path):
    """The README's main job, as a user runs it (a subprocess, the local executor, 2 workers), on
    a reduced copy of the demo's configs (_reduced_demo: the full demo takes 6 minutes; `make demo`
    runs it) so the checkout is left alone: both models, augmentation and label noise, init and
    final checkpoints, segment and plane stores, the Dask aggregation, the report, the resume."""
    n_planes = _reduced_demo(tmp_path)
    demo = str(tmp_path / "configs" / "demo.yaml")
    out = subprocess.run([sys.executable, "-m", "jobs", "run", demo, "--base", str(tmp_path), "--workers", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = tmp_path / "sweeps" / "demo" / "report"
    found, md, _ = _check_report({"html": report / "index.html", "markdown": report / "report.md",
                                  "findings": report / "findings.json"})
    for model in ("VGG8", "ResNet18"):
        topics = {f["topic"] for f in found if f["group"].startswith(model)}
        assert {"training", "correlation", "noise", "noise_medians", "augment", "training_vs_init",
                "test_error", "planes"} <= topics, (model, topics)
    assert "findings:" in out.stdout and "report:" in out.stdout
    compare = pd.read_csv(tmp_path / "sweeps" / "demo" / "analysis" / "tables" / "plane_vs_line.csv")
    assert len(compare) == 12 and (compare["n_images"] == n_planes).all()  # 6 networks x 2 checkpoints
    assert len(list((report / "figures").glob("density2d-*.png"))) == 2
    assert len(list((report / "figures").glob("plane-*.png"))) >= 2  # one plane figure per architecture
    again = subprocess.run([sys.executable, "-m", "jobs", "run", demo, "--base", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 job(s)" in again.stdout


@pytest.mark.slow
def test_ctrl_c_loses_nothing_and_the_same_command_resumes(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) in the middle of a
    local run, then the same command again: it finishes, and nothing finished is redone."""
    import os
    import signal
    import time

    path = tiny_sweep(tmp_path, variants={"vanilla": {}, "long": {"recipe": "augment", "data.augment": True, "max_epochs": 100, "stop": "epochs"}},
                      n_paths=6, n_shards=1, executor="local")
    cmd = [sys.executable, "-m", "jobs", "run", str(path), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    runs = tmp_path / "out" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("vanilla-*/regions/*.zarr")):
        time.sleep(0.2)  # the short run is trained and its discovery has started; the long one trains
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "run the same command again" in out, out
    sweep, base = load_sweep(path)
    p = plan(sweep, base)
    assert p["train"]["done"] and not p["aggregate"]["done"], out  # interrupted half way
    done_before = {r.run_id for r in p["train"]["done"]}
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    p = plan(sweep, base)
    assert len(p["train"]["done"]) == 2 and len(p["discover"]["done"]) == 4 and p["aggregate"]["done"]
    records = [json.loads(line) for line in (tmp_path / "out" / "submissions.jsonl").read_text().splitlines()]
    trained = [r["run"] for r in records if r["stage"] == "train"]
    assert all(trained.count(run_id) == 1 for run_id in done_before)  # finished training not redone
    assert (tmp_path / "out" / "report" / "index.html").exists()
