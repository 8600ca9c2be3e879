"""Starts N local workers of a multi-worker run, each with its own TF_CONFIG.

    python -m branchzoo.launch --workers 2 -- train.py --model mpnet --strategy multiworker

For trying ``--strategy multiworker`` on one machine: the workers listen on
loopback ports (free ones, or ``--port-base P``, ``P+1``, ...), every line
they print is forwarded with a ``[worker i]`` prefix, and when one worker
fails the others are stopped (SIGTERM, then SIGKILL after ``--grace``
seconds) and the launcher exits with the failing worker's code (128 + the
signal for a killed one). SIGINT / SIGTERM to the launcher, or
``--timeout``, stops them all.
On a real cluster the scheduler (Kubernetes, Slurm) sets TF_CONFIG and runs
the same command on every host; this launcher is not needed there.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from branchzoo._validation import check_int

HOST = "127.0.0.1"


def free_ports(n, host=HOST):
    """`n` distinct ports that were free on `host` a moment ago (held together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def tf_configs(addresses):
    """One TF_CONFIG value per worker of a cluster of `addresses` (worker 0 is the chief)."""
    return [json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": i}})
            for i in range(len(addresses))]


def worker_command(command):
    """`command` as run for each worker: a ``.py`` script runs under this Python, unbuffered."""
    if command and command[0].endswith(".py"):
        return [sys.executable, "-u", *command]
    return list(command)


def _die_with_parent():
    """A `preexec_fn` (Linux) that SIGKILLs the worker when the launcher dies, even by SIGKILL.

    Resolved here, in the launcher, so that the forked child only makes the call.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _forward(stream, prefix, out, lock):
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace").rstrip("\r\n")
        with lock:
            out.write(f"{prefix}{text}\n")
            out.flush()
    stream.close()


def _exit_code(returncode):
    return 128 - returncode if returncode < 0 else returncode


def launch(command, workers, port_base=None, host=HOST, grace=10.0, timeout=None, stdout=None,
           stderr=None):
    """Runs `command` as `workers` local workers; returns the exit code.

    Args:
        command: the argument list after ``--`` (``train.py ...``, or any
            program reading TF_CONFIG).
        workers: number of worker processes (worker 0 is the chief).
        port_base: first port (worker i listens on ``port_base + i``); None
            picks free ports.
        host: the workers' address (loopback).
        grace: seconds a stopped worker gets between SIGTERM and SIGKILL.
        timeout: stop every worker after this many seconds (None: no limit).
        stdout, stderr: where the prefixed output goes (default sys's).

    Returns:
        0 when every worker succeeded, else the first failing worker's code
        (128 + N for a worker killed by signal N; 128 + N as well when the
        launcher itself was stopped by signal N; 124 after `timeout`).
    """
    workers = check_int(workers, "workers", minimum=1)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"`timeout` must be a positive number of seconds. Received: timeout={timeout!r}")
    if not command:
        raise ValueError("`command` must name what each worker runs, e.g. -- train.py --model mpnet "
                         "--strategy multiworker. Received: command=[]")
    if port_base is None:
        ports = free_ports(workers, host)
    else:
        port_base = check_int(port_base, "port_base", minimum=1, maximum=65536 - workers)
        ports = [port_base + i for i in range(workers)]
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    lock = threading.Lock()
    addresses = [f"{host}:{port}" for port in ports]
    argv = worker_command(command)

    def say(text):
        with lock:
            stderr.write(f"[launch] {text}\n")
            stderr.flush()

    stop_signal = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda s, f: stop_signal.append(s))
    procs, threads = [], []
    preexec = _die_with_parent() if sys.platform == "linux" else None
    try:
        for i, config in enumerate(tf_configs(addresses)):  # all forks before any thread starts
            env = dict(os.environ, TF_CONFIG=config, PYTHONUNBUFFERED="1")
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          preexec_fn=preexec))
        for i, proc in enumerate(procs):
            say(f"worker {i}: pid {proc.pid}, {addresses[i]}{' (chief)' if i == 0 else ''}")
            for stream, out in ((proc.stdout, stdout), (proc.stderr, stderr)):
                thread = threading.Thread(target=_forward, args=(stream, f"[worker {i}] ", out, lock),
                                          daemon=True)
                thread.start()
                threads.append(thread)
        code = None
        deadline = None if timeout is None else time.time() + timeout
        while code is None:
            if stop_signal:
                say(f"stopped by {signal.Signals(stop_signal[0]).name}; stopping every worker")
                code = 128 + stop_signal[0]
                break
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:
                i, returncode = failed[0]
                how = (f"was killed by {signal.Signals(-returncode).name}" if returncode < 0
                       else f"exited with code {returncode}")
                say(f"worker {i} {how}; stopping the others")
                code = _exit_code(returncode)
            elif all(p.returncode == 0 for p in procs):
                code = 0
            elif deadline is not None and time.time() > deadline:
                say(f"timed out after {timeout:g} s; stopping every worker")
                code = 124
            else:
                time.sleep(0.1)
    finally:
        _stop(procs, grace)
        for thread in threads:
            thread.join(timeout=5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def _stop(procs, grace):
    """SIGTERM every running worker, SIGKILL those still running after `grace` seconds."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_parser():
    p = argparse.ArgumentParser(prog="python -m branchzoo.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --workers N [--port-base P] [--grace S] [--timeout S] -- COMMAND ...")
    p.add_argument("--workers", type=int, required=True, help="number of local worker processes")
    p.add_argument("--port-base", type=int, help="worker i listens on P+i (default: free ports)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds between SIGTERM and SIGKILL when stopping workers (default 10)")
    p.add_argument("--timeout", type=float, help="stop every worker after this many seconds (exit 124)")
    return p


def _says_multiworker(command):
    pairs = zip(command, command[1:] + [None])
    return "--strategy=multiworker" in command or ("--strategy", "multiworker") in pairs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if "--" not in argv:
        parser.error("put the worker command after --, e.g. -- train.py --model mpnet --strategy multiworker")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if command and os.path.basename(command[0]) == "train.py" and not _says_multiworker(command):
        parser.error("the workers would each train alone: add --strategy multiworker to the train.py command")
    try:
        return launch(command, args.workers, port_base=args.port_base, grace=args.grace,
                      timeout=args.timeout)
    except (ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
