"""``embed_with_ray`` and ``clipforge embed --ray`` on real Ray clusters on this machine (no mocks):
the same rows, order and vectors as the single-process path, bad images counted, an embedding
actor killed mid-job loses no finished shard and a re-run completes, and a head + worker node
started with ``ray start`` on 127.0.0.1.

Every Ray process here talks over loopback only. Ray swaps 127.0.0.1 for the machine's outward
address unless it believes it runs on one machine (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: set
before Ray is imported, and inherited by the processes started here); a worker node, which Ray
refuses to start in that mode, keeps 127.0.0.1 through a one-line wrapper instead (``NODE``).
Token authentication is off: these clusters live for one test, on loopback.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'clipforge[ray]'")

import clipforge  # noqa: E402
from clipforge.errors import ClipforgeError  # noqa: E402
from clipforge.factory import create_model, create_preprocess  # noqa: E402
from clipforge.inference import embed_collection  # noqa: E402
from clipforge.inference.ray_embed import embed_with_ray  # noqa: E402

# Two CPUs, two actors: each actor and each decode task holds half a CPU, so both fit beside a decoder.
SMALL = {"workers": 2, "cpus_per_worker": 0.5, "cpus_per_decode": 0.5}
NODE = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
        "from ray.scripts.scripts import main; sys.argv = ['ray', *sys.argv[1:]]; main()")  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return create_model("tiny-vit", seed=0)


@pytest.fixture(scope="module")
def preprocess(model):
    return create_preprocess(model)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the in-process tests (started once: it takes seconds), in a
    temporary folder of its own (short: it holds sockets)."""
    temp = start_local_ray()
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def start_local_ray(attempts: int = 3) -> str:
    """``ray.init(num_cpus=2)`` -> its temporary folder. Ray gives a new node's raylet a fixed 30 s
    to register with the GCS (not configurable); on a busy 2-core CI machine that ran out once. A
    node that times out is torn down (every process started for its folder) and started afresh."""
    for attempt in range(attempts):
        temp = tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp")
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=temp,
                     object_store_memory=256 * 2**20)  # fmt: skip
            return temp
        except Exception as e:
            if "timed out during startup" not in str(e):
                raise
            logs = sorted(Path(temp).glob("session_*/logs/raylet*.out"))
            tail = logs[0].read_text(errors="replace")[-2000:] if logs else "(no raylet log)"
            ray.shutdown()
            kill_processes_of(temp)
            shutil.rmtree(temp, ignore_errors=True)
            if attempt == attempts - 1:
                raise AssertionError(f"Ray did not start in {attempts} tries; the raylet's log ends:\n{tail}") from e
    raise AssertionError("unreachable")


def kill_processes_of(folder: str) -> None:
    """SIGKILL every process whose command line names ``folder`` (a failed Ray node's GCS, raylet
    and helpers all carry their session folder)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and folder.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:  # the process ended meanwhile (ProcessLookupError is an OSError)
            pass


def picture(i: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_folder(root: Path, n: int, bad: bool = True) -> Path:
    """``n`` PNG/JPEG images (a caption beside one), and a corrupt and an empty file if ``bad``."""
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        picture(i, (40 + i % 7, 36 + i % 5)).save(root / (f"sub/{i:03d}.jpg" if i % 4 == 0 else f"{i:03d}.png"))
    (root / "001.txt").write_text("a caption beside 001\n")
    if bad:
        (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
        (root / "empty.jpg").write_bytes(b"")
    return root


def same_output(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Shard by shard: the same metadata rows in the same order, vectors within ``atol``, the same
    skipped list and a complete manifest with the same counts."""
    names = sorted(p.name for p in (a / "img_emb").iterdir())
    assert names == sorted(p.name for p in (b / "img_emb").iterdir()) and names
    for name in names:
        va, vb = np.load(a / "img_emb" / name), np.load(b / "img_emb" / name)
        assert va.shape == vb.shape and np.abs(va - vb).max(initial=0.0) <= atol
        meta = "metadata/" + name.replace("img_emb", "metadata").replace(".npy", ".parquet")
        assert pq.read_table(a / meta).to_pylist() == pq.read_table(b / meta).to_pylist()
    assert (a / "skipped.jsonl").read_text() == (b / "skipped.jsonl").read_text()
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["complete"] and mb["complete"] and ma["shards"] == mb["shards"]


def test_ray_writes_what_one_process_writes(model, preprocess, local_ray, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "images", 10)
    one = embed_collection(model, preprocess, folder, tmp_path / "one", shard_size=3, batch_size=2, workers=0)
    summary = embed_with_ray(model, preprocess, folder, tmp_path / "ray", shard_size=3, batch_size=2, **SMALL)
    assert (summary.items, summary.rows, summary.skipped, summary.shards, summary.complete) == (12, 10, 2, 4, True)
    assert sorted(Path(s["path"]).name for s in summary.skipped_items) == ["corrupt.png", "empty.jpg"]
    assert summary.embedded == 10 and summary.engine_seconds > 0 and summary.skipped_items == one.skipped_items
    same_output(tmp_path / "one", tmp_path / "ray")
    rows = pq.read_table(tmp_path / "ray" / "metadata" / "metadata_00000.parquet").to_pylist()
    assert [r["caption"] for r in rows if r["path"].endswith("001.png")] == ["a caption beside 001"]
    # The same folder, resumed by either path: nothing left to do.
    again = embed_collection(model, preprocess, folder, tmp_path / "ray", shard_size=3, batch_size=2, workers=0)
    assert again.processed == 0 and again.shards_reused == 4


def test_ray_reads_webdataset_shards_and_lists(model, preprocess, local_ray, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "images", 6, bad=False)
    (tmp_path / "shards").mkdir()
    for n, mode in enumerate(("w", "w:gz")):  # offsets into a plain tar; bytes listed from a compressed one
        with tarfile.open(tmp_path / "shards" / f"{n:03d}.tar{'.gz' if n else ''}", mode) as tar:
            for i in range(3 * n, 3 * n + 3):
                name = f"sub/{i:03d}.jpg" if i % 4 == 0 else f"{i:03d}.png"
                tar.add(folder / name, f"s{i}.{name[-3:]}")
            tar.addfile(tarfile.TarInfo(f"s9{n}.txt"))  # a sample without an image: listed as skipped
    shards = f"{tmp_path / 'shards'}/000.tar::{tmp_path / 'shards'}/001.tar.gz"
    (folder / "list.txt").write_text("003.png\nsub/000.jpg\nmissing.png\n")
    for source, name in ((shards, "wds"), (folder / "list.txt", "list")):
        embed_collection(model, preprocess, source, tmp_path / f"{name}-one", shard_size=2, workers=0)
        embed_with_ray(model, preprocess, source, tmp_path / f"{name}-ray", shard_size=2, **SMALL)
        same_output(tmp_path / f"{name}-one", tmp_path / f"{name}-ray")
    skipped = (tmp_path / "wds-ray" / "skipped.jsonl").read_text()
    assert skipped.count("sample without an image") == 2
    assert "missing.png" in (tmp_path / "list-ray" / "skipped.jsonl").read_text()


def embedding_actors() -> list[int]:
    """Pids of the live actors of the embedding stage (Ray's actor table, read from the GCS: the
    public ``ray.util.state`` needs the dashboard, which ray[data] does not install)."""
    actors = ray._private.state.actors().values()
    return [a["Pid"] for a in actors if "_Embedder" in a["ActorClassName"] and a["State"] == "ALIVE"]


def test_an_actor_killed_mid_job_loses_no_finished_shard(model, preprocess, local_ray, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "images", 46)
    reference = tmp_path / "one"
    embed_collection(model, preprocess, folder, reference, shard_size=4, batch_size=2, workers=0)
    out = tmp_path / "ray"
    at_kill: dict = {}

    def kill_an_actor(shard: int) -> None:
        if at_kill:
            return
        files = [p for d in ("img_emb", "metadata", "done") for p in (out / d).iterdir()]
        at_kill["finished"] = {p: p.stat().st_mtime_ns for p in files}
        at_kill["pid"] = embedding_actors()[0]
        os.kill(at_kill["pid"], signal.SIGKILL)

    try:
        summary = embed_with_ray(model, preprocess, folder, out, shard_size=4, batch_size=2, on_shard=kill_an_actor,
                                 **SMALL)  # fmt: skip
        finished_by_the_first_run = summary.complete  # Ray Data restarts the actor and retries its batches
    except ClipforgeError as e:
        assert "run the same command again" in str(e)
        finished_by_the_first_run = False
    markers_at_kill = [p for p in at_kill["finished"] if p.parent.name == "done"]
    assert 1 <= len(markers_at_kill) < 12, "the actor was killed after the job's end"
    again = embed_with_ray(model, preprocess, folder, out, shard_size=4, batch_size=2, **SMALL)
    assert again.complete and again.rows == 46 and again.skipped == 2
    assert again.processed == 0 if finished_by_the_first_run else again.shards_reused >= len(markers_at_kill)
    assert all(p.stat().st_mtime_ns == t for p, t in at_kill["finished"].items())  # finished shards untouched
    same_output(reference, out)


def cli(*args: str, background: bool = False, timeout: float = 180) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clipforge", "embed", *args]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_cli_unreachable_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "images", 2, bad=False)
    done = cli("--model", "tiny-vit", "--images", str(folder), "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:1",
               timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster answers at 127.0.0.1:1 (")
    assert not (tmp_path / "out").exists()  # checked before the output folder is touched


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """``ray start ... --block`` in a process group of its own: the node's processes are its group,
    so the test stops exactly them (``ray stop`` would stop every Ray on this machine)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", NODE, "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", "--disable-usage-stats", *args], env={**os.environ, **env},
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop_node(node: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the node's process group; what is left of it after 5 s is SIGKILLed."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(node.pid, s)
            node.wait(timeout=5)
            time.sleep(0.5)  # the group's other processes end just after the leader
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def wait_for_log(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "Ray runtime started" not in log.read_text(errors="replace"):
        time.sleep(0.2)


def wait_for_nodes(address: str, n: int, timeout: float = 60) -> None:
    probe = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", probe % address], capture_output=True, text=True, timeout=60)
        if done.stdout.strip() == str(n):
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {n} nodes")


@pytest.fixture
def cluster(tmp_path: Path):
    """A head and one worker node, 1 CPU each, on 127.0.0.1 -> (address, nodes, add a worker).
    Their own temporary folder (short: it holds sockets) keeps /tmp/ray, where a later plain
    ``ray.init()`` looks for a cluster to join, free of this one's address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp")
    nodes = [start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                        tmp_path / "head.log")]  # fmt: skip

    def add_worker() -> subprocess.Popen:
        # A worker node refuses to start in single-machine mode; NODE keeps it on 127.0.0.1.
        log = tmp_path / f"worker{len(nodes)}.log"
        nodes.append(start_node(["--address", address, f"--temp-dir={temp}"], log,
                                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1"))  # fmt: skip
        wait_for_log(log)
        return nodes[-1]

    try:
        wait_for_log(tmp_path / "head.log")
        add_worker()
        wait_for_nodes(address, 2)
        yield address, nodes, add_worker
    finally:
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # two Ray nodes, one killed and replaced, two CLI runs: ~1.5 min on 2 busy CPUs
def test_cli_on_a_head_and_a_worker_node_that_dies(model, preprocess, cluster, tmp_path: Path) -> None:
    """The job runs on both nodes; the worker node dies (SIGKILL to all its processes) mid-job
    and a replacement joins; the job or its re-run finishes, with every finished shard kept and
    the single-process result."""
    address, nodes, add_worker = cluster
    checkpoint = clipforge.save(model, tmp_path / "m.safetensors")
    folder = image_folder(tmp_path / "images", 30)
    embed_collection(model, preprocess, folder, tmp_path / "one", shard_size=2, batch_size=2, workers=0)
    args = ("--model", str(checkpoint), "--images", str(folder), "--shard-size", "2", "--batch-size", "2",
            "--precision", "fp32", "--ray", address)  # fmt: skip
    out = tmp_path / "ray"
    run = cli(*args, "--out", str(out), background=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None and not list((out / "done").glob("*.json")):
        time.sleep(0.01)
    finished = {p: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    stop_node(nodes[1], signal.SIGKILL)
    assert run.poll() is None and 1 <= len(finished) < 16, "the job ended before the node was killed"
    add_worker()
    try:
        run.wait(timeout=180)
    except subprocess.TimeoutExpired:
        run.kill()  # stuck on the lost node: a re-run must finish the job all the same
        run.wait()
    again = cli(*args, "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier and kept" in again.stdout and "skipped 2 unreadable" in again.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    same_output(tmp_path / "one", out)
