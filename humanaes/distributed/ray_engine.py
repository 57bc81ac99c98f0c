"""`--engine ray`: the batch stages on Ray Data.

    items (driver) -> map_batches(read_images)      CPU tasks, many in parallel
                   -> map_batches(prepare_images)   CPU tasks: decode + preprocess with the
                                                    model's Preprocessor (no model weights)
                   -> map_batches(BatchScorer)      actor pool: --concurrency actors, each with
                                                    --num-gpus-per-actor GPUs (CPU when 0) and
                                                    --cpus-per-actor CPUs; the model loads once
                                                    and runs only the batched forward
                   -> iter_batches on the driver    -> ShardCommitter (the only writer)

With `--address` the job joins an existing cluster (`auto`: the one `ray start` runs on this
node; `ray://host:10001`: Ray Client; `host:6379`: the head's GCS). Without it a local Ray
instance is started for the job and stopped after it. The address is probed with a plain TCP
connect first, so an unreachable cluster is an error within seconds, not a hang.

Lost workers: scorer actors are restartable and their tasks retried by Ray; rows of a retried
batch that did arrive are dropped by the committer (ids already seen), so nothing is duplicated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from humanaes.distributed.stages import BatchScorer, prepare_images, read_images
from humanaes.errors import HumanAesError
from humanaes.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from humanaes.distributed.runner import BatchConfig

CONNECT_TIMEOUT_S = 5.0
#: local Ray instances started by humanaes live under /tmp/hray-*; the driver's pid is in this file
LOCAL_PREFIX = "hray-"
DRIVER_PID_FILE = "driver.pid"
DEFAULT_PORTS = {"ray": 10001, "gcs": 6379}


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise HumanAesError("--engine ray needs Ray: pip install 'humanaes[ray]' (or use --engine local)") from None
    return ray


def probe_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (HumanAesError) when `address` names a host:port nobody answers on."""
    if address == "auto":
        return  # looked up on this node by ray.init, which fails at once when nothing runs
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        raise HumanAesError(f"--address {address}: use auto, ray://HOST[:PORT] (Ray Client) or HOST:PORT (the head's GCS)")
    hostport = rest if sep else address
    host, _, port_text = hostport.rpartition(":")
    if not host:
        host, port_text = hostport, ""
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS["ray" if sep else "gcs"]
    except ValueError:
        raise HumanAesError(f"--address {address}: {port_text!r} is not a port number") from None
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise HumanAesError(
            f"--address {address}: cannot reach a Ray cluster at {host}:{port} ({reason} within {timeout:.0f} s); "
            "check the address and that the head node is running (ray start --head)"
        ) from None


@contextlib.contextmanager
def ray_session(config: "BatchConfig") -> Iterator[Any]:
    """Connected to the cluster of `config.address`, or to a local instance started for the job."""
    ray = import_ray()
    if ray.is_initialized():  # e.g. a notebook that already connected: use that cluster as is
        yield ray
        return
    temp_dir = None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if config.address:
        probe_address(config.address)
        kwargs["address"] = config.address
    else:
        # Unix socket paths are limited to ~107 bytes: keep Ray's session folder short.
        reap_orphaned_instances()
        temp_dir = tempfile.mkdtemp(prefix=LOCAL_PREFIX, dir="/tmp")
        Path(temp_dir, DRIVER_PID_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
        kwargs.update(_temp_dir=temp_dir, num_cpus=config.local_cpus)
        if config.object_store_mb:
            kwargs["object_store_memory"] = config.object_store_mb * 2**20
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {config.address}" if config.address else "a local Ray instance"
        raise HumanAesError(f"cannot start or join {where}: {first}") from None
    try:
        with sigterm_as_interrupt():
            yield ray
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphaned_instances(root: Path = Path("/tmp")) -> int:
    """Stop what is left of local Ray instances whose humanaes driver was killed (SIGKILL).

    A killed driver cannot stop its local instance; Ray's raylet and GCS follow it, but some of
    its agent processes stay. They are found by the instance's own folder in their command line
    (only folders that a humanaes driver created and whose driver pid is gone), sent SIGKILL
    by pid, and the folder is removed. Returns the number of processes stopped.
    """
    stopped = 0
    for folder in root.glob(f"{LOCAL_PREFIX}*"):
        try:
            pid = int((folder / DRIVER_PID_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue
        stopped += _kill_processes_mentioning(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
    return stopped


def _kill_processes_mentioning(text: str) -> int:
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: nothing to find this way
        return 0
    needle = text.encode()
    killed = 0
    me = os.getuid()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != me or needle not in (entry / "cmdline").read_bytes():
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ValueError):
            continue
    return killed


#: CPUs per read and preprocessing task (fractional: tasks are many and short; they fuse into one)
TASK_CPUS = 0.25


def build_dataset(
    ray: Any, table: Any, scorer_kwargs: dict[str, Any], config: "BatchConfig",
    prepare_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The Ray Data pipeline over the items still to score (`prepare_kwargs` None: no
    preprocessing tasks; the actors decode and prepare)."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False  # results are keyed by id
    context.enable_progress_bars = False  # the driver shows one bar of committed rows
    with contextlib.suppress(AttributeError):
        context.print_on_execution_start = False
    # Enough blocks for every actor to get work, small enough that one block is a few batches.
    blocks = max(1, min(table.num_rows // config.batch_size, 4 * config.concurrency * 8))
    ds = ray.data.from_arrow(table).repartition(blocks)
    ds = ds.map_batches(read_images, batch_format="pyarrow", batch_size=config.batch_size, num_cpus=TASK_CPUS)
    if prepare_kwargs is not None:
        # fn_kwargs go to the object store once; each task gets the preprocessor (a detector of
        # about 2 MB at most), never the model
        ds = ds.map_batches(prepare_images, fn_kwargs=prepare_kwargs, batch_format="pyarrow",
                            batch_size=config.batch_size, num_cpus=TASK_CPUS)
    return ds.map_batches(
        BatchScorer,
        fn_constructor_kwargs=scorer_kwargs,
        batch_format="pyarrow",
        batch_size=config.batch_size,
        # Ray Data's actor pools restart a lost actor and retry its batch by default
        # (max_restarts=-1, max_task_retries=-1); the committer drops any repeated id.
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        num_gpus=config.num_gpus_per_actor or None,
        num_cpus=config.cpus_per_actor,
    )


def run_ray(
    table: Any, scorer_kwargs: dict[str, Any], prepare_kwargs: dict[str, Any] | None, *, config: "BatchConfig",
    on_result: Callable[[Any], None],
) -> None:
    """Score `table`'s items on Ray; `on_result` gets each result table on the driver."""
    with ray_session(config) as ray:
        ds = build_dataset(ray, table, scorer_kwargs, config, prepare_kwargs)
        for result in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            on_result(result)
