"""Forward-pass latency and memory: numpy_mvit2 against PyTorch eager (and ONNX Runtime when installed).

    python benchmarks/bench_forward.py            # widths 0.5, 1.0, 2.0 at 256x256, batch 1 and 8
    python benchmarks/bench_forward.py --quick    # a smoke run: one small width, small images

Method (see benchmarks/README.md):

- Same weights: for each width the driver writes one random checkpoint (``config.json`` +
  ``model.safetensors``, batch norms unfolded); numpy_mvit2 and transformers both load it, and the
  ONNX model is exported from that transformers model. The logits of all sides are compared.
- Same input: one ``.npy`` array per batch size, read by every side.
- Own processes: each side runs in its own long-lived worker process (``--worker SIDE``), driven
  over stdin/stdout, so no process ever holds two libraries' thread pools. The driver runs no
  timed work itself.
- Same threads: ``--threads`` (default 2) for OpenBLAS (``OPENBLAS_NUM_THREADS``), PyTorch
  (``torch.set_num_threads``, ``OMP_NUM_THREADS``) and ONNX Runtime (``intra_op_num_threads``).
- Alternation: in every round each configuration is timed on every side in turn, the order of
  the sides rotating from round to round; after each side the driver pauses briefly so that spinning
  worker threads go to sleep. Warm-up runs first for every side. Medians over all rounds.
- Memory: per side and width, a fresh process (glibc told to return large freed blocks at once)
  loads the model and runs two forward passes at the largest batch, each after ``malloc_trim``
  and a reset of the kernel's peak-RSS counter (``/proc/self/clear_refs``): "added" = peak RSS
  during the pass - RSS before it; "process peak" = the highest ``VmHWM`` over loading and both
  passes. Measured the same way for every side; the NumPy side also reports tracemalloc's peak.
- Separable attention: the attention sub-layer alone (``numpy_mvit2.fast.layers.separable_attention`` and
  transformers' ``MobileViTV2LinearSelfAttention``) on ``[1, d, P=4, N]`` tokens for growing N,
  with a plain quadratic softmax attention in NumPy for contrast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("numpy", "torch", "onnxruntime")

# --------------------------------------------------------------------------------------------
# Worker side: one library per process
# --------------------------------------------------------------------------------------------


def _status() -> dict:
    """Current and peak resident memory of this process (bytes; zeros where /proc is missing)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _malloc_trim() -> None:
    """Hand the C heap's free memory back to the kernel (glibc), so RSS counts live memory."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Worker:
    def __init__(self, side: str, threads: int):
        self.side, self.threads = side, threads
        self.models, self.inputs = {}, {}
        if side == "torch":
            import torch

            torch.set_num_threads(threads)
            self.torch = torch
        elif side == "onnxruntime":
            import onnxruntime

            self.ort = onnxruntime

    def versions(self) -> dict:
        import numpy as np

        out = {"python": platform.python_version(), "numpy": np.__version__}
        if self.side == "numpy":
            import numpy_mvit2

            out["numpy_mvit2"] = numpy_mvit2.__version__
            blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
            out["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
            from numpy_mvit2 import fast, team

            n = fast.threads()  # the team is opt-in: started here (and by load()), unless it is switched off
            out["single_images_on"] = f"a team of {n} processes" if n > 1 and team.start() else f"{n} thread(s)"
        elif self.side == "torch":
            import transformers

            out["torch"], out["transformers"] = self.torch.__version__, transformers.__version__
            out["torch_threads"] = self.torch.get_num_threads()
        else:
            out["onnxruntime"] = self.ort.__version__
        return out

    def load(self, width, folder, onnx_path=None):
        if width in self.models:
            return
        if self.side == "numpy":
            from numpy_mvit2 import MobileViTV2ForImageClassification, team

            self.models[width] = MobileViTV2ForImageClassification.from_pretrained(folder)
            self.team = team.start()  # single images on a team of processes: start it now, not during warm-up
        elif self.side == "torch":
            import transformers

            self.models[width] = transformers.MobileViTV2ForImageClassification.from_pretrained(folder).eval()
        else:
            options = self.ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            self.models[width] = self.ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    def _input(self, path):
        import numpy as np

        if path not in self.inputs:
            x = np.load(path)
            self.inputs[path] = self.torch.from_numpy(x) if self.side == "torch" else x
        return self.inputs[path]

    def forward(self, width, path):
        model, x = self.models[width], self._input(path)
        if self.side == "numpy":
            return model(x).logits
        if self.side == "torch":
            with self.torch.inference_mode():
                return model(x).logits.numpy()
        return model.run(None, {"pixel_values": x})[0]

    def handle(self, msg: dict) -> dict:
        cmd = msg["cmd"]
        if cmd == "versions":
            return self.versions()
        if cmd == "load":
            self.load(msg["width"], msg["folder"], msg.get("onnx"))
            return {}
        if cmd == "logits":
            import numpy as np

            path = msg["out"]
            np.save(path, self.forward(msg["width"], msg["input"]))
            return {"path": path}
        if cmd == "time":
            for _ in range(msg.get("warmup", 0)):
                self.forward(msg["width"], msg["input"])
            times = []
            for _ in range(msg["reps"]):
                t0 = time.perf_counter()
                self.forward(msg["width"], msg["input"])
                times.append(time.perf_counter() - t0)
            return {"times": times}
        if cmd == "memory":  # one forward pass: how much resident memory it adds at its peak
            import gc

            gc.collect()
            _malloc_trim()
            status = _status()
            self.peak = max(getattr(self, "peak", 0), status["VmHWM"])
            exact = _reset_peak()
            traced = None
            if self.side == "numpy":
                import tracemalloc

                tracemalloc.start()
                self.forward(msg["width"], msg["input"])
                traced = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            else:
                self.forward(msg["width"], msg["input"])
            after = _status()["VmHWM"]
            self.peak = max(self.peak, after)
            # VmHWM, not ru_maxrss: on Linux ru_maxrss carries the parent's RSS over fork + exec
            return {"added": after - status["VmRSS"] if exact else None, "tracemalloc": traced, "peak": self.peak}
        if cmd == "attention":
            return {"times": self.attention(msg["dim"], msg["tokens"], msg["reps"])}
        raise ValueError(f"unknown command {cmd!r}")

    def attention(self, dim, tokens, reps):
        """Best-of-``reps`` seconds of the separable-attention sub-layer on [1, dim, 4, N] tokens for each N
        (and, on the NumPy side, of a quadratic softmax attention over the same tokens)."""
        import numpy as np

        rng = np.random.default_rng(0)
        result = {"separable": [], "quadratic": []}
        for n in tokens:
            x = rng.standard_normal((1, 4, n, dim), dtype=np.float32)
            if self.side == "numpy":
                from numpy_mvit2.fast.layers import separable_attention
                from numpy_mvit2.fast.plan import Conv, TransformerLayer

                layer = TransformerLayer(*(Conv(rng.standard_normal((dim, c), dtype=np.float32) / dim**0.5,
                                                np.zeros(c, np.float32)) for c in (2 * dim + 1, dim, 2 * dim, dim)))
                rows = 4 * n
                bufs = (np.empty((rows, 2 * dim + 1), np.float32), np.empty((rows, dim), np.float32), np.empty((rows, dim), np.float32))

                def run(x=x, layer=layer, bufs=bufs):
                    return separable_attention(x, layer, *bufs)

                q, k, v = (x[0] @ rng.standard_normal((dim, dim), dtype=np.float32) for _ in range(3))

                def quadratic(q=q, k=k, v=v):
                    s = q @ k.transpose(0, 2, 1) / dim**0.5  # [P, N, N]
                    s -= s.max(axis=-1, keepdims=True)
                    np.exp(s, out=s)
                    s /= s.sum(axis=-1, keepdims=True)
                    return s @ v

                result["quadratic"].append(_best_time(quadratic, reps) if n <= 2048 else None)
            elif self.side == "torch":
                import transformers
                from transformers.models.mobilevitv2 import modeling_mobilevitv2

                module = modeling_mobilevitv2.MobileViTV2LinearSelfAttention(transformers.MobileViTV2Config(), embed_dim=dim)
                module.eval()
                xt = self.torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

                def run(module=module, xt=xt):
                    with self.torch.inference_mode():
                        return module(xt)
            else:
                return None
            result["separable"].append(_best_time(run, reps))
        return result


def _best_time(fn, reps):
    """Best of ``reps`` calls (after one warm-up): the cost of the work itself on a busy machine."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker_main(side: str, threads: int) -> None:
    # the replies go to the original stdout; anything a library prints goes to stderr
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = Worker(side, threads)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "exit":
            break
        try:
            reply = {"ok": True, **worker.handle(msg)}
        except Exception as e:  # noqa: BLE001 - reported to the driver
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()


def export_onnx(folder: str, path: str) -> None:
    """Export transformers' model to ONNX (opset 18). ``nn.functional.fold`` has no ONNX export for
    these shapes, so for the export only, ``MobileViTV2Layer.folding`` is replaced by its
    reshape/permute twin (the same function when the patch size divides the map, as at 256x256)."""
    import torch
    import transformers
    from transformers.models.mobilevitv2 import modeling_mobilevitv2 as mm

    def folding(self, patches, output_size):
        b, c, _, _ = patches.shape
        h, w = output_size
        ph, pw = self.patch_height, self.patch_width
        x = patches.reshape(b, c, ph, pw, h // ph, w // pw).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, h, w)

    mm.MobileViTV2Layer.folding = folding
    model = transformers.MobileViTV2ForImageClassification.from_pretrained(folder).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).logits

    size = model.config.image_size
    torch.onnx.export(Logits(model), (torch.zeros(1, 3, size, size),), path, dynamo=False, opset_version=18,
                      input_names=["pixel_values"], output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}})


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


class Client:
    """A worker process for one side."""

    def __init__(self, side: str, threads: int, memory: bool = False):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if memory:  # a fixed mmap threshold: glibc then returns every large freed block at once
            env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
            # and numpy_mvit2 in this one process: a batch runs on threads, its team would sit idle
            env.update(NUMPY_MVIT2_PROCESSES="0")
        self.side = side
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", side, "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker died (exit code {self.proc.wait()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"{self.side} worker: {reply['error']}")
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def available_sides(want_onnx: bool) -> list[str]:
    import importlib.util

    sides = ["numpy"]
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        sides.append("torch")
    else:
        print("PyTorch/transformers not installed: timing numpy_mvit2 alone")
    if want_onnx and "torch" in sides:
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            sides.append("onnxruntime")
        else:
            print("onnxruntime/onnx not installed: no ONNX Runtime column")
    return sides


def make_checkpoint(width: float, folder: Path, size: int) -> None:
    """Random weights (seeded), batch norms unfolded, saved as transformers saves a checkpoint: what
    ``python -m numpy_mvit2.generate`` writes."""
    from numpy_mvit2.generate import generate_checkpoint

    generate_checkpoint(folder, "classification", width=width, seed=0, image_size=size)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: width 0.5, 128x128, batch 1 and 2, 2 rounds")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=None, help="forward passes per side per round (default 5 at batch 1, 2 above)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="keep N other processes spinning on the CPU while the latencies are timed (a busy machine)")
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "bench_forward.png"), help="PNG to write ('' for none)")
    parser.add_argument("--json", default="", help="write all measurements to this file")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.threads)
        return 0
    if args.export:
        export_onnx(*args.export)
        return 0
    if args.quick:
        args.widths, args.batches, args.size, args.rounds = [0.5], [1, 2], 128, 2
        args.reps = args.reps or 2
        if args.plot == parser.get_default("plot"):
            args.plot = ""
    tokens = [64, 256, 1024] if args.quick else [64, 256, 1024, 4096, 16384]

    sides = available_sides(not args.no_onnx)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    busy = f"; {args.busy} spinning process(es) alongside" if args.busy else ""
    print(f"bench_forward: {date}; {machine()}; threads={args.threads}; {args.size}x{args.size}; rounds={args.rounds}{busy}")
    results = {"date": date, "machine": machine(), "threads": args.threads, "size": args.size, "sides": sides,
               "busy": args.busy, "latency": {}, "memory": {}, "attention": {}, "versions": {}, "check": {}}

    with tempfile.TemporaryDirectory(prefix="bench_forward_") as tmp:
        tmp = Path(tmp)
        import numpy as np

        inputs = {}
        for b in args.batches:
            inputs[b] = str(tmp / f"pixels_{b}.npy")
            np.save(inputs[b], np.random.default_rng(b).uniform(-1, 1, (b, 3, args.size, args.size)).astype(np.float32))
        folders, onnx = {}, {}
        for w in args.widths:
            folders[w] = tmp / f"mvit2-{w}"
            make_checkpoint(w, folders[w], args.size)
            if "onnxruntime" in sides:
                onnx[w] = str(tmp / f"mvit2-{w}.onnx")
                subprocess.run([sys.executable, __file__, "--export", str(folders[w]), onnx[w]], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))

        # -- memory: a fresh process per side and width, largest batch ------------------------
        big = max(args.batches)
        for w in args.widths:
            for side in sides:
                client = Client(side, args.threads, memory=True)
                try:
                    client.ask(cmd="load", width=w, folder=str(folders[w]), onnx=onnx.get(w))
                    first = client.ask(cmd="memory", width=w, input=inputs[big])
                    second = client.ask(cmd="memory", width=w, input=inputs[big])
                    results["memory"][f"{side} {w} {big}"] = {**second, "added_first": first["added"]}
                finally:
                    client.close()

        # -- latency: long-lived workers, alternated ------------------------------------------
        clients = {side: Client(side, args.threads) for side in sides}
        try:
            for side, client in clients.items():
                results["versions"][side] = client.ask(cmd="versions")
            for w in args.widths:
                for side, client in clients.items():
                    client.ask(cmd="load", width=w, folder=str(folders[w]), onnx=onnx.get(w))
                # same weights, same input: compare the logits
                logits = {}
                for side, client in clients.items():
                    logits[side] = np.load(client.ask(cmd="logits", width=w, input=inputs[args.batches[0]],
                                                      out=str(tmp / f"logits_{side}.npy"))["path"])
                for side in sides[1:]:
                    err = float(np.abs(logits["numpy"] - logits[side]).max() / (1 + np.abs(logits[side]).max()))
                    results["check"][f"{side} {w}"] = err
                for b in args.batches:
                    for client in clients.values():  # warm-up
                        client.ask(cmd="time", width=w, input=inputs[b], reps=0, warmup=2 if b == 1 else 1)
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            try:
                time_rounds(args, sides, clients, inputs, results)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            dim = 128
            for side, client in clients.items():
                if side != "onnxruntime":
                    results["attention"][side] = client.ask(cmd="attention", dim=dim, tokens=tokens,
                                                            reps=3 if args.quick else 7)["times"]
            results["attention"].update(tokens=tokens, dim=dim, reps=3 if args.quick else 7)
        finally:
            for client in clients.values():
                client.close()

    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args, args.plot)
    return 0


def time_rounds(args, sides, clients, inputs, results) -> None:
    """Every configuration on every side in turn, the sides' order rotating from round to round."""
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[: r % len(sides)]
        for w in args.widths:
            for b in args.batches:
                reps = args.reps or (5 if b == 1 else 2)
                for side in order:
                    times = clients[side].ask(cmd="time", width=w, input=inputs[b], reps=reps)["times"]
                    results["latency"].setdefault(f"{side} {w} {b}", []).extend(times)
                    time.sleep(0.2)  # let spinning worker threads park before the next side runs
        print(f"  round {r + 1}/{args.rounds} done")


def report(results: dict, args) -> None:
    sides = results["sides"]
    versions = "; ".join(f"{k} {v}" for side in sides for k, v in results["versions"].get(side, {}).items()
                         if k not in ("python",) or side == "numpy")
    print(f"\nversions: {versions}")
    for key, err in results["check"].items():
        print(f"same weights check: logits of numpy vs {key}: max|diff| / (1 + max|ref|) = {err:.1e}")
    for stat, fn in (("median", statistics.median), ("min", min)):
        val = {k: fn(v) * 1e3 for k, v in results["latency"].items()}
        head = "| width | batch | numpy_mvit2 ms | PyTorch eager ms | numpy / torch |"
        line = "|---|---|---|---|---|"
        if "onnxruntime" in sides:
            head += " ONNX Runtime ms | numpy / ORT |"
            line += "---|---|"
        print(f"\nlatency, {stat} over {args.rounds} rounds (lower is better)\n" + head + "\n" + line)
        for w in args.widths:
            for b in args.batches:
                ours = val[f"numpy {w} {b}"]
                row = f"| {w} | {b} | {ours:.1f} |"
                if "torch" in sides:
                    row += f" {val[f'torch {w} {b}']:.1f} | ratio {ours / val[f'torch {w} {b}']:.2f} |"
                else:
                    row += " - | - |"
                if "onnxruntime" in sides:
                    row += f" {val[f'onnxruntime {w} {b}']:.1f} | {ours / val[f'onnxruntime {w} {b}']:.2f} |"
                print(row)
    big = max(args.batches)
    print(f"\nmemory at batch {big}, MiB (added: peak RSS during a forward pass - RSS before it, 1st and 2nd pass of a "
          "fresh process; process peak: VmHWM over loading + both passes)")
    print("| width | side | added, 1st pass | added, 2nd pass | process peak | NumPy tracemalloc peak |\n|---|---|---|---|---|---|")
    for w in args.widths:
        for side in sides:
            m = results["memory"][f"{side} {w} {big}"]
            print(f"| {w} | {side} | {mib(m['added_first'])} | {mib(m['added'])} | {mib(m['peak'])} | {mib(m['tracemalloc'])} |")
    att = results["attention"]
    if att:
        print(f"\nseparable attention sub-layer, d={att['dim']}, P=4 (ms per call, best of {att['reps']})")
        print("| tokens N | numpy_mvit2 | PyTorch | quadratic softmax attention (NumPy) |\n|---|---|---|---|")
        for i, n in enumerate(att["tokens"]):
            cells = []
            for side, kind in (("numpy", "separable"), ("torch", "separable"), ("numpy", "quadratic")):
                v = att.get(side, {}).get(kind, [None] * len(att["tokens"]))[i]
                cells.append("-" if v is None else f"{v * 1e3:.2f}")
            print(f"| {n} | " + " | ".join(cells) + " |")


def plot(results: dict, args, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    sides = results["sides"]
    labels = {"numpy": "numpy_mvit2 (NumPy)", "torch": "PyTorch eager", "onnxruntime": "ONNX Runtime"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    configs = [(w, b) for w in args.widths for b in args.batches]
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        xs = [j + i * width for j in range(len(configs))]
        vals = [statistics.median(results["latency"][f"{side} {w} {b}"]) * 1e3 / b for w, b in configs]
        best = [min(results["latency"][f"{side} {w} {b}"]) * 1e3 / b for w, b in configs]
        ax1.bar(xs, vals, width, label=f"{labels[side]} (median)")
        ax1.plot(xs, best, "k_", markersize=12, label="min over the rounds" if i == 0 else None)
    ax1.set_yscale("log")
    ax1.set_xticks([j + width * (len(sides) - 1) / 2 for j in range(len(configs))])
    ax1.set_xticklabels([f"w{w}\nbatch {b}" for w, b in configs])
    ax1.set_ylabel("median latency per image (ms)")
    ax1.set_title(f"Forward pass, {args.size}x{args.size}, {results['threads']} threads")
    ax1.legend()
    att = results["attention"]
    n = att["tokens"]
    for side, kind, style in (("numpy", "separable", "o-"), ("torch", "separable", "s-"), ("numpy", "quadratic", "^--")):
        ys = att.get(side, {}).get(kind)
        if ys:
            pts = [(x, y * 1e3) for x, y in zip(n, ys) if y is not None]
            name = "quadratic softmax attention (NumPy)" if kind == "quadratic" else f"separable attention, {labels[side]}"
            ax2.plot(*zip(*pts), style, label=name)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("tokens N (patches per pixel position)")
    ax2.set_ylabel("time per call (ms)")
    ax2.set_title(f"Attention sub-layer cost, d={att['dim']}, P=4 (best of {att['reps']})")
    ax2.legend()
    fig.suptitle(f"{results['machine']} - {results['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    sys.exit(main())
