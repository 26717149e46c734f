"""A real single-node Slurm cluster on loopback, for tests (needs root and Debian's munge, slurmctld, slurmd and
slurm-client).

    with SlurmCluster() as cluster:          # or cluster.start() ... cluster.stop()
        env = cluster.env()                  # os.environ + SLURM_CONF: pass it to sbatch/squeue/scontrol
        job = cluster.sbatch(["--wrap", "hostname"], cwd=tmp)
        cluster.wait_for_jobs([job])         # -> {job: "COMPLETED"}

Everything lives in one temporary directory (config, state, spool, logs, munge key and socket, the fake GPU
devices); the system's /etc/slurm and /etc/munge are not touched. The daemons run in the foreground as children
of this process and are stopped by their PIDs. The pitfalls of running Slurm 22.05 as root without systemd
(DESIGN.md, "Facts measured here") are handled here:

- munge: socket directory 0711, key 0600, `AuthInfo=socket=...` so that every Slurm part finds the custom socket;
- cgroup.conf with `CgroupPlugin=cgroup/v1`, ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no
  systemd, possibly no cgroup fs);
- the fake GPU gres points at real character devices (mknod c 1 3, like /dev/null), otherwise the node drains;
- a partition named gpu_a100, so the jobscripts' `#SBATCH` lines run unchanged;
- `SlurmdParameters=config_overrides` with `CPUs=`/`RealMemory=` so a 2-core machine advertises the 18+ CPUs
  the jobscripts ask for;
- Slurm's default DependencyParameters, as most clusters have them: a failed afterok parent leaves its children
  PENDING (DependencyNeverSatisfied) unless they were submitted with `--kill-on-invalid-dep=yes` (the jobscripts
  do; `kill_invalid_depend` here would hide a chain that does not);
- `EnforcePartLimits=ALL` (a job that can never fit is refused at submission),
  `SchedulerParameters=sched_interval=1,batch_sched_delay=0` (chains run without scheduler pauses);
- no accounting daemon (no `sacct`): job states come from `scontrol show job` while the job is remembered
  (MinJobAge) and from output files;
- `slurmd -N <node>` with 127.0.0.1 addresses.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
FINISHED_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def unavailable_reason() -> str | None:
    """Why a real cluster cannot be started here, or None when it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a real Slurm cluster needs root (the daemons run as root on loopback)"
    missing = [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return (
            "Slurm is not installed (missing " + ", ".join(missing) + "); install with "
            "`apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client`"
        )
    return None


def _which(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin", name)
    if candidate.exists():
        return str(candidate)
    raise FileNotFoundError(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmClusterError(RuntimeError):
    pass


class SlurmCluster:
    """One slurmctld + one slurmd (node `node_name`, partition `partition`) + munged under a temp dir."""

    def __init__(
        self,
        base: str | os.PathLike | None = None,
        *,
        cpus: int = 36,
        gpus: int = 2,
        memory_mb: int = 64000,
        partition: str = "gpu_a100",
        node_name: str = "fastscnn-node",
        kill_wait: int = 5,
    ):
        self._own_base = base is None
        # a short path: the munge socket path must fit in sun_path (108 bytes)
        self.base = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp") if base is None else base)
        self.cpus, self.gpus, self.memory_mb = cpus, gpus, memory_mb
        self.partition, self.node_name, self.kill_wait = partition, node_name, kill_wait
        self.cluster_name = "fastscnn" + str(os.getpid())[-6:]
        self.conf = self.base / "etc" / "slurm.conf"
        self.log_dir = self.base / "log"
        self.munge_socket = self.base / "munge" / "run" / "munge.socket"
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs = []

    # ------------------------------------------------------------------ setup
    def _write_files(self) -> None:
        base = self.base
        for sub in ("etc", "log", "state", "spool", "munge", "dev"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        # munge: the socket directory must be 0711 and the key 0600 (owned by the daemon's user, root here)
        munge_dir = base / "munge"
        run_dir = munge_dir / "run"
        run_dir.mkdir(exist_ok=True)
        os.chmod(munge_dir, 0o700)
        os.chmod(run_dir, 0o711)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        os.chmod(base, 0o755)  # jobs (root) and clients read the config

        # fake GPUs: real character devices (same numbers as /dev/null), or the node drains
        devices = []
        for index in range(self.gpus):
            device = base / "dev" / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            devices.append(str(device))

        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        host = socket.gethostname().split(".")[0]
        self.host = host
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        conf = f"""\
# generated by tests/slurm_cluster.py: a single-node test cluster on loopback
ClusterName={self.cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={base / "state"}
SlurmdSpoolDir={base / "spool"}/%n
SlurmctldPidFile={base / "state" / "slurmctld.pid"}
SlurmdPidFile={base / "spool" / "slurmd.pid"}
SlurmctldLogFile={self.log_dir / "slurmctld.log"}
SlurmdLogFile={self.log_dir / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1,batch_sched_delay=0
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={self.kill_wait}
MinJobAge=3600
InactiveLimit=0
SlurmdTimeout=300
SlurmctldTimeout=60
MessageTimeout=20
JobRequeue=1
NodeName={self.node_name} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} \
RealMemory={self.memory_mb}{gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        gres_conf = "AutoDetect=off\n"
        for device in devices:
            gres_conf += f"NodeName={self.node_name} Name=gpu File={device}\n"
        (base / "etc" / "gres.conf").write_text(gres_conf)
        (base / "etc" / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        (base / "spool" / self.node_name).mkdir(exist_ok=True)

    def env(self, extra: dict | None = None) -> dict:
        """The environment for client commands and submissions (points SLURM_CONF at this cluster)."""
        env = dict(os.environ)
        for name in list(env):
            if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")):
                del env[name]
        env["SLURM_CONF"] = str(self.conf)
        if extra:
            env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f"{name}.stdout", "ab")
        self._logs.append(log)
        env = self.env()
        self._procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise SlurmClusterError(f"{name} exited with code {proc.returncode}\n" + self.logs_tail())

    def start(self, timeout: float = 90.0) -> SlurmCluster:
        reason = unavailable_reason()
        if reason:
            raise SlurmClusterError(reason)
        self._write_files()
        munge = self.base / "munge"
        try:
            self._spawn(
                "munged",
                [
                    _which("munged"),
                    "-F",
                    "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={munge / 'munge.key'}",
                    f"--pid-file={munge / 'munged.pid'}",
                    f"--seed-file={munge / 'munged.seed'}",
                    f"--log-file={self.log_dir / 'munged.log'}",
                ],
            )
            self._wait(lambda: self.munge_socket.exists(), 20, "the munge socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self._client_ok(["scontrol", "ping"], "UP"), 40, "slurmctld")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node_name, "-f", str(self.conf)])
            self._wait(self._node_idle, timeout, f"node {self.node_name} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if condition():
                return
            time.sleep(0.3)
        raise SlurmClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.logs_tail())

    def _client_ok(self, argv: list[str], needle: str) -> bool:
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=30)
        return result.returncode == 0 and needle in result.stdout

    def _node_idle(self) -> bool:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-n", self.node_name, "-o", "%T"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        state = result.stdout.strip().lower()
        if state.startswith(("drain", "down")) and "*" not in state:
            reason = subprocess.run(
                ["scontrol", "show", "node", self.node_name], env=self.env(), capture_output=True, text=True, timeout=30
            ).stdout
            raise SlurmClusterError(f"node {self.node_name} is {state}:\n{reason}\n" + self.logs_tail())
        return state == "idle"

    def logs_tail(self, lines: int = 25) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*")):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    # ------------------------------------------------------------------ teardown
    def cancel_all(self, timeout: float = 60.0) -> None:
        """Cancel every job of this cluster and wait until none is running."""
        if "slurmctld" not in self._procs or self._procs["slurmctld"].poll() is not None:
            return
        subprocess.run(["scancel", "--user=root"], env=self.env(), capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["squeue", "-h", "-o", "%i"], env=self.env(), capture_output=True, text=True, timeout=30
            )
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, then stop slurmd, slurmctld and munged by their PIDs (TERM, then KILL)."""
        try:
            self.cancel_all()
        except (OSError, subprocess.SubprocessError):
            pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._own_base and os.environ.get("KEEP_SLURM_TEST_DIR") != "1":
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    def run(self, argv: list[str], cwd=None, env: dict | None = None, check: bool = False, timeout: float = 120):
        """Run a client command (or a jobscript) against this cluster; returns CompletedProcess (text)."""
        result = subprocess.run(argv, cwd=cwd, env=self.env(env), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise SlurmClusterError(f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def sbatch(self, args: list[str], cwd=None, env: dict | None = None) -> str:
        result = self.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, check=True)
        return result.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict:
        """`scontrol show job -o` as a dict ({} when the job is not known)."""
        result = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        if result.returncode != 0 or not result.stdout.strip():
            return {}
        info = {}
        line = result.stdout.strip().splitlines()[0]
        # keys are words followed by '='; values may contain spaces only in a few fields (Command, WorkDir...)
        for match in re.finditer(r"(\S+?)=(.*?)(?=\s+\S+?=|$)", line):
            info[match.group(1)] = match.group(2)
        return info

    def job_state(self, job_id: str) -> str:
        return self.job_info(job_id).get("JobState", "UNKNOWN")

    def wait_for_jobs(self, job_ids, timeout: float = 240.0, poll: float = 0.3) -> dict:
        """Wait until every job is in a final state; returns {job id: state}. Raises on timeout."""
        job_ids = [str(job) for job in job_ids]
        deadline = time.monotonic() + timeout
        states = {}
        while True:
            self._check_alive()
            states = {job: self.job_state(job) for job in job_ids}
            if all(state in FINISHED_STATES for state in states.values()):
                return states
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"jobs not finished after {timeout:.0f} s: {states}\n" + self.logs_tail())
            time.sleep(poll)
