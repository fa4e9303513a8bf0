#!/usr/bin/env python3
"""Adversarial counts for issue 25: bad flags, corrupted checkpoints and NaN weights fed to the
example binaries, each outcome classified as a panic, a silent acceptance (exit 0 where the input
is wrong) or a clear refusal.

    scripts/adversarial.py [--bin target/release/examples] [--work /tmp/kiln-adversarial]

Build the examples first (cargo build --release --all-features --examples). Each run that trains takes the
shared build lock (/tmp/kiln-build.lock) when flock exists, so it never competes with a build;
the checkpoint runs, which load a file and stop or take one tiny step, do not. The
checkpoint format is read from the file itself: format 2 (kiln.format) checksums every metadata
entry and tensor, format 1 (older kiln) the tensors only; NaN files are written with a checksum
that matches, so what is measured is the finite check, not the checksum. Prints one JSON line.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = "/tmp/kiln-build.lock"


def run(binary, args, timeout=600, lock=True):
    cmd = [binary] + args
    if lock and shutil.which("flock"):
        cmd = ["flock", LOCK] + cmd
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, RUST_BACKTRACE="0"))
    except subprocess.TimeoutExpired:
        return None, "", "timeout"
    return p.returncode, p.stdout, p.stderr


def outcome(code, err):
    if code == 101 or "panicked" in err:
        return "panic"
    if code == 0:
        return "accepted"
    return "refused"


# ---- safetensors files ----

def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    return header, bytearray(b[8 + n:])


def write_st(path, header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + bytes(data))


def tensors(header):
    return sorted((k, v) for k, v in header.items() if k != "__metadata__")


def checksum(header, data):
    meta = header.get("__metadata__", {})
    if "kiln.format" in meta:  # format 2: metadata and tensors, length-prefixed
        out = b""

        def put(x):
            nonlocal out
            out += struct.pack("<Q", len(x)) + x
        put(b"kiln metadata")
        for k in sorted(meta):
            if k != "kiln.crc32":
                put(k.encode())
                put(meta[k].encode())
        put(b"kiln tensors")
        for name, t in tensors(header):
            put(name.encode())
            put(t["dtype"].encode())
            put(b"".join(struct.pack("<Q", d) for d in t["shape"]))
            s, e = t["data_offsets"]
            put(bytes(data[s:e]))
        return "%08x" % zlib.crc32(out)
    out = b""  # format 1: tensors only
    for name, t in tensors(header):
        out += name.encode() + b"".join(struct.pack("<Q", d) for d in t["shape"])
        s, e = t["data_offsets"]
        out += bytes(data[s:e])
    return "%08x" % zlib.crc32(out)


def resign(header, data):
    header.setdefault("__metadata__", {})["kiln.crc32"] = checksum(header, data)


def corruptions(base, work, rng):
    """Corrupted copies of `base`: (label, path)."""
    good = open(base, "rb").read()
    n = struct.unpack("<Q", good[:8])[0]
    out = []

    def emit(label, blob):
        p = os.path.join(work, "c%03d.safetensors" % len(out))
        open(p, "wb").write(blob)
        out.append((label, p))
    for i in range(16):  # bit flips in the length and the JSON header (metadata included)
        at = 1 + (i * (n + 6)) // 16 if i else 0
        b = bytearray(good)
        b[at] ^= 1 << rng.randrange(8)
        emit("header flip at %d" % at, b)
    for i in range(16):  # bit flips in tensor data
        at = rng.randrange(8 + n, len(good))
        b = bytearray(good)
        b[at] ^= 1 << rng.randrange(8)
        emit("data flip at %d" % at, b)
    for frac in (0.0, 0.01, 0.3, 0.6, 0.9, 0.999):  # truncations
        emit("cut at %.2f" % frac, good[:int(len(good) * frac)])
    header, data = read_st(base)
    for key, value in [("kiln.epochs_done", "2"), ("kiln.optimizer_steps", "1000"),
                       ("kiln.history", ""), ("kiln.rng_offsets", "5")]:
        h = json.loads(json.dumps(header))
        h["__metadata__"][key] = value  # the old checksum kept: a hand edit
        p = os.path.join(work, "c%03d.safetensors" % len(out))
        write_st(p, h, data)
        out.append(("metadata %s=%s" % (key, value), p))
    for how in ("removed", "renamed"):  # checksum key gone, tensor bytes altered
        for name in ("conv1.weight", "fc3.bias"):
            h = json.loads(json.dumps(header))
            crc = h["__metadata__"].pop("kiln.crc32")
            if how == "renamed":
                h["__metadata__"]["kiln.crc33"] = crc
            d = bytearray(data)
            s, _ = h[name]["data_offsets"]
            d[s + 1] ^= 0x40
            p = os.path.join(work, "c%03d.safetensors" % len(out))
            write_st(p, h, d)
            out.append(("checksum %s, %s altered" % (how, name), p))
    return out


def nan_files(base, work):
    """Copies of `base` with one non-finite value and a matching checksum."""
    header, data = read_st(base)
    names = [k for k, _ in tensors(header)]
    optim = [k for k in names if k.startswith("optim.")]
    out = []
    for name, value in [("conv1.weight", float("nan")), ("conv1.bias", float("inf")),
                        ("fc3.weight", float("-inf")), (optim[0], float("nan"))]:
        h = json.loads(json.dumps(header))
        d = bytearray(data)
        s, _ = h[name]["data_offsets"]
        d[s + 8:s + 12] = struct.pack("<f", value)
        resign(h, d)
        p = os.path.join(work, "nan-%s.safetensors" % name)
        write_st(p, h, d)
        out.append(("%s = %s" % (name, value), p))
    return out


def pgm(work, name, body):
    p = os.path.join(work, name)
    open(p, "wb").write(body)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/examples"))
    ap.add_argument("--work", default="/tmp/kiln-adversarial")
    ap.add_argument("--seed", type=int, default=25)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    b = lambda name: os.path.join(a.bin, name)  # noqa: E731
    rng = random.Random(a.seed)
    tiny = ["--train-size", "64", "--batch-size", "64"]
    base = os.path.join(a.work, "base.safetensors")
    two = os.path.join(a.work, "two.safetensors")
    for path, epochs in ((base, "1"), (two, "2")):
        code, _, err = run(b("lenet_mnist"), tiny + ["--epochs", epochs, "--save", path])
        if code != 0:
            sys.exit("could not write a base checkpoint:\n" + err)
    log = []

    def case(kind, binary, args, lock=True):
        code, out, err = run(b(binary), args, lock=lock)
        o = outcome(code, err)
        log.append({"kind": kind, "binary": binary, "args": " ".join(args), "outcome": o,
                    "exit": code, "said": (err.strip().splitlines() or [""])[-1][:200]})
        return o, err

    # Flags and inputs: panics in the issue, then results that were silently wrong.
    zero_w = pgm(a.work, "w0.pgm", b"P5 0 28 255\n")
    zero_h = pgm(a.work, "h0.pgm", b"P5 28 0 255\n")
    wrap = pgm(a.work, "wrap.pgm", b"P5 4294967296 4294967296 255\n\x00")
    panics = [
        ("lenet_mnist", ["--batch-size", "0", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--train-size", "0", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--train-size", "10", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--train-size", "20000", "--epochs", "1"]),
        ("char_lstm", ["--steps", "0"]),
        ("char_transformer", ["--steps", "0"]),
        ("rnn_sequence", ["--length", "0", "--epochs", "1"]),
        ("predict", ["--model", base, "--pgm", zero_w]),
        ("predict", ["--model", base, "--pgm", zero_h]),
        ("predict", ["--model", base, "--pgm", wrap]),
    ]
    silent = [
        ("distill", ["--teacher", base, "--train-size", "10000", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--temperature", "0", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--temperature", "NaN", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--alpha", "NaN", "--epochs", "1"]),
        ("distill", ["--teacher", base, "--alpha", "2", "--epochs", "1"]),
        ("linear_regression", ["--lr", "10"]),
        ("linear_regression", ["--lr", "NaN"]),
        ("linear_regression", ["--steps", "0"]),
        ("mnist_mlp", ["--epochs", "0"]),
        ("rnn_sequence", ["--epochs", "0"]),
        ("quantize", ["--epochs", "0", "--out", os.path.join(a.work, "q")]),
        ("lenet_mnist", tiny + ["--epochs", "1", "--resume", two]),
    ]
    counts = {"panics": 0, "silently_wrong": 0}
    for binary, args in panics + silent:
        o, _ = case("flag", binary, args)
        counts["panics"] += o == "panic"
        counts["silently_wrong"] += o == "accepted"

    # Corrupted checkpoints, each to predict and to --resume.
    files = corruptions(base, a.work, rng)
    accepted = 0
    for label, path in files:
        for binary, args in (("predict", ["--model", path, "--index", "8000"]),
                             ("lenet_mnist", tiny + ["--epochs", "1", "--resume", path])):
            o, _ = case("corrupt: " + label, binary, args, lock=False)
            counts["panics"] += o == "panic"
            accepted += o == "accepted"

    # NaN weights and state with a valid checksum: caught when loaded?
    caught = total = 0
    for label, path in nan_files(base, a.work):
        for binary, args in (("predict", ["--model", path, "--index", "8000"]),
                             ("lenet_mnist", tiny + ["--epochs", "2", "--resume", path,
                                                     "--override", "epochs"])):
            if binary == "predict" and label.startswith("optim."):
                continue  # predict loads the parameters only
            o, err = case("nan: " + label, binary, args, lock=False)
            if binary == "lenet_mnist" and "unexpected argument '--override'" in err:
                # An older binary without --override: resume it as it was.
                o, err = case("nan: " + label, binary,
                              tiny + ["--epochs", "2", "--resume", path], lock=False)
            total += 1
            counts["panics"] += o == "panic"
            # At load: the file's values are refused before any step runs.
            caught += o == "refused" and "holds non-finite values" in err
    with open(os.path.join(a.work, "log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(json.dumps({
        "script": "adversarial", "bin": a.bin, "panics": counts["panics"],
        "silently_wrong": counts["silently_wrong"], "flag_cases": len(panics) + len(silent),
        "corrupted_checkpoints": len(files), "corrupted_runs": 2 * len(files),
        "corrupted_accepted": accepted, "nan_runs": total, "nan_caught_at_load": caught,
        "nan_caught_percent": round(100.0 * caught / max(total, 1), 1),
        "log": os.path.join(a.work, "log.json")}))


if __name__ == "__main__":
    main()
